"""SAE quality on the real offline DINOv2-S: TopK 16x against the seed recipe (ReLU+L1).

    python -m bench.quality [--views 80] [--layer -2] [--l1 ...] [--out runs/bench_quality]

Both are trained on the same tokens in the same streaming pass (same batches, same budget, Adam
lr 4e-4, unit-norm decoder). The ReLU+L1 sweep brackets the TopK L0 so that its FVU can be read
at the same L0 (log-linear interpolation between the two bracketing sweep points, and the nearest
point). Evaluation is on held-out augmented views (another seed).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from bench.report import write_section
from saescope.core.backbones import load_backbone
from saescope.core.sae_io import from_pretrained
from saescope.core.sources import open_source
from saescope.core.store import ActivationStore
from saescope.train.evaluate import evaluate_sae
from saescope.train.extract import extract
from saescope.train.fit import FitConfig, SAESpec, fit


def interpolate_at_l0(rows: list[dict], l0: float) -> tuple[float | None, dict]:
    """FVU of the ReLU frontier at ``l0`` (log-L0 interpolation) and the nearest sweep point."""
    rows = sorted(rows, key=lambda r: r["l0"])
    nearest = min(rows, key=lambda r: abs(math.log(max(r["l0"], 1e-9)) - math.log(l0)))
    for a, b in zip(rows, rows[1:]):
        if a["l0"] <= l0 <= b["l0"] and b["l0"] > a["l0"]:
            t = (math.log(l0) - math.log(a["l0"])) / (math.log(b["l0"]) - math.log(a["l0"]))
            return a["fvu"] + t * (b["fvu"] - a["fvu"]), nearest
    return None, nearest


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/bench_quality")
    p.add_argument("--views", type=int, default=80, help="augmented views per packaged photo")
    p.add_argument("--layer", type=int, default=-2)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--expansion", type=float, default=16)
    p.add_argument("--l1", nargs="+", type=float, default=[3e-3, 1e-2, 3e-2])
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def _extract(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """(training store, held-out evaluation store) of the packaged photos' views."""
    backbone = load_backbone("offline:dinov2-s-saliency")
    train_store = extract(
        backbone,
        open_source(f"builtin:photos?views={args.views}"),
        out / "acts",
        layers=[args.layer],
        kinds="patch",
    )[0]
    eval_store = extract(
        backbone,
        open_source("builtin:photos?views=4&seed=7"),
        out / "acts_eval",
        layers=[args.layer],
        kinds="patch",
    )[0]
    return train_store, eval_store


def _fit(args: argparse.Namespace, train_store: Path, store, out: Path) -> list[Path]:
    """TopK and the ReLU+L1 sweep in one streaming pass; returns their folders, TopK first."""
    specs = [SAESpec("topk", args.expansion, k=args.k)]
    specs += [SAESpec("relu", args.expansion, k=None, l1_coefficient=c) for c in args.l1]
    return fit(
        FitConfig(
            store=str(train_store),
            out=str(out / "saes"),
            saes=specs,
            tokens=int(store.n_tokens * args.epochs),
            batch_size=args.batch_size,
            lr=4e-4,
        )
    )


def _evaluate(folders: list[Path], evals) -> list[dict]:
    """One row of held-out metrics per SAE folder."""
    rows = []
    for folder in folders:
        sae = from_pretrained(folder)
        m = evaluate_sae(sae, evals, max_tokens=evals.n_tokens, progress=False)
        rows.append(
            {
                "name": folder.name,
                "architecture": sae.cfg.architecture,
                "l1": sae.cfg.l1_coefficient,
                "fvu": m["fvu"],
                "l0": m["l0"],
                "mse": m["mse"],
                "dead_fraction": m["dead_fraction"],
                "dense_fraction": m["dense_fraction"],
            }
        )
    return rows


def _print_rows(rows: list[dict], at_l0: float | None, nearest: dict, ratio: float) -> None:
    topk = rows[0]
    for r in rows:
        print(
            f"{r['name']:24s} FVU {r['fvu']:.4f}  L0 {r['l0']:7.1f}  "
            f"dead {r['dead_fraction']:.2%}  "
            f"dense {r['dense_fraction']:.2%}"
        )
    print(
        f"ReLU+L1 FVU at TopK's L0 ({topk['l0']:.1f}): "
        f"{f'interpolated {at_l0:.4f}' if at_l0 is not None else 'outside sweep range'}; "
        f"nearest {nearest['name']} (L0 {nearest['l0']:.1f}) FVU {nearest['fvu']:.4f}; "
        f"ReLU/TopK FVU ratio {ratio:.2f}x"
    )


def _markdown(
    args: argparse.Namespace,
    store,
    evals,
    rows: list[dict],
    at_l0: float | None,
    nearest: dict,
    ratio: float,
    times: tuple[float, float],
) -> list[str]:
    """The RESULTS.md section, as lines."""
    t_extract, t_fit = times
    topk = rows[0]
    md = [
        "## SAE quality on the offline DINOv2-S (`python -m bench.quality`)\n",
        f"Layer {store.layer} (requested {args.layer}), all {store.tokens_per_image} patch tokens "
        f"per image, {store.n_images} augmented views of the packaged photos = "
        f"**{store.n_tokens:,} training tokens** ({args.epochs:g} epoch, batch {args.batch_size}, "
        f"Adam lr 4e-4, unit-norm decoder, same batches for every SAE). Width "
        f"{int(store.d_model * args.expansion)} ({args.expansion:g}x). Evaluated on "
        f"{evals.n_tokens:,} held-out tokens (other views).\n",
        "| SAE | L1 | FVU | L0 | dead | dense |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['name']} | {r['l1'] if r['architecture'] == 'relu' else '-'} | {r['fvu']:.4f} | "
        f"{r['l0']:.1f} | {r['dead_fraction']:.2%} | {r['dense_fraction']:.2%} |"
        for r in rows
    ]
    md.append(
        f"\nReLU+L1 at TopK's L0 ({topk['l0']:.1f}): "
        + (
            f"interpolated FVU **{at_l0:.4f}**"
            if at_l0 is not None
            else "outside the sweep's range"
        )
        + f"; nearest sweep point {nearest['name']} (L0 {nearest['l0']:.1f}) "
        f"FVU {nearest['fvu']:.4f}. "
        f"**ReLU/TopK FVU ratio: {ratio:.2f}x** (> 1 means TopK reconstructs better at equal "
        f"sparsity). TopK dead latents: **{topk['dead_fraction']:.2%}** (target < 1%). "
        f"Extraction {t_extract:.0f} s, training the {len(rows)} SAEs in one pass {t_fit:.0f} s."
    )
    return md


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    train_store, eval_store = _extract(args, out)
    store = ActivationStore(train_store)
    t_extract = time.perf_counter() - t0
    print(
        f"train store: {store.n_tokens:,} tokens, layer {store.layer}; extraction {t_extract:.0f}s"
    )
    t1 = time.perf_counter()
    folders = _fit(args, train_store, store, out)
    t_fit = time.perf_counter() - t1
    evals = ActivationStore(eval_store)
    rows = _evaluate(folders, evals)
    topk = rows[0]
    relus = rows[1:]
    at_l0, nearest = interpolate_at_l0(relus, topk["l0"])
    ratio = (at_l0 if at_l0 is not None else nearest["fvu"]) / topk["fvu"]
    _print_rows(rows, at_l0, nearest, ratio)
    md = _markdown(args, store, evals, rows, at_l0, nearest, ratio, (t_extract, t_fit))
    data = {
        "rows": rows,
        "relu_fvu_at_topk_l0": at_l0,
        "ratio": ratio,
        "n_tokens": store.n_tokens,
        "t_extract": t_extract,
        "t_fit": t_fit,
        "args": vars(args),
    }
    if not args.no_write:
        write_section("quality", "\n".join(md), data)
    return data


if __name__ == "__main__":
    main()
