"""Cost of the exemplar pass against a plain SAE encode pass over the same tokens.

    python -m bench.exemplar_speed [--images 128] [--batch 16] [--expansion 16] [--k 64]

In one run, on one activation store of the real offline DINOv2-S (extracted here once, or
``--store``) and with the same batch size:

- baseline: ``sae.encode`` (dense codes) over every token, reading batches with
  ``store.iter_images`` exactly as the exemplar pass does;
- exemplars: ``train.exemplars.build_exemplars`` end to end (encode, statistics, histogram,
  running top-k, patch maps, id resolution).

Both are timed ``--repeats`` times, interleaved; the headline ratio compares the fastest runs
(the least disturbed by other load on a shared machine), with process-CPU and median ratios
beside it. The target is a ratio of at most 1.3. Two SAEs are measured: a TopK SAE (sparse
codes, the default architecture) and a ReLU SAE whose bias is set so that about ``--relu-l0``
latents fire per token (the dense-codes path). Both are untrained (random, normalised): the
cost depends on sizes and sparsity, not on what the features mean.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.report import write_section


def _encode_pass(sae, store, batch: int, kinds: list[str]) -> None:
    with torch.inference_mode():
        for _, x in store.iter_images(batch, kinds=kinds):
            sae.encode(x.reshape(-1, x.shape[-1]))


def _time(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _make_sae(store, arch: str, expansion: float, k: int, relu_l0: int):
    from saescope.core.sae import SAE, SAEConfig

    d = store.d_model
    cfg = SAEConfig(
        d_in=d,
        d_sae=int(d * expansion),
        architecture=arch,
        k=k if arch == "topk" else None,
        model_id=store.model_id,
        layer=store.layer,
        token_kinds=[kind.value for kind in store.kinds],
    )
    sae = SAE(cfg, seed=0).eval()
    sample = store.sample(20_000)
    sae.set_normalization(sample)
    if arch == "relu":  # per-latent bias at the quantile that leaves ~relu_l0 firing per token
        with torch.no_grad():
            pre = sae.pre_acts(sae.normalize(sample[:4096]))
            q = 1 - relu_l0 / cfg.d_sae
            sae.b_enc.sub_(pre.quantile(q, dim=0))
    return sae


def main(argv: list[str] | None = None) -> dict:
    from saescope.core.backbones import load_backbone
    from saescope.core.store import ActivationStore
    from saescope.train.exemplars import build_exemplars
    from saescope.train.extract import extract

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="images per batch (both passes)")
    p.add_argument("--expansion", type=float, default=16.0)
    p.add_argument("--sae-k", type=int, default=32)
    p.add_argument("--relu-l0", type=int, default=64)
    p.add_argument("--k", type=int, default=64, help="exemplars per feature")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layer", type=int, default=-2)
    p.add_argument("--store", default=None, help="an existing store (default: extract one)")
    p.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.store
        if path is None:
            bb = load_backbone("offline:dinov2-s-saliency")
            path = extract(
                bb,
                "builtin:photos?views=8",
                Path(tmp) / "acts",
                layers=[args.layer],
                max_images=args.images,
                progress=False,
            )[0]
        store = ActivationStore(path)
        kinds = [kind.value for kind in store.kinds]
        rows, data = (
            [],
            {
                "images": store.n_images,
                "tokens": store.n_tokens,
                "batch": args.batch,
                "k": args.k,
                "saes": {},
            },
        )
        for arch in ("topk", "relu"):
            sae = _make_sae(store, arch, args.expansion, args.sae_k, args.relu_l0)
            _encode_pass(sae, store, args.batch, kinds)  # warm-up (page cache, allocator)
            enc, exm = [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit both alike
                enc.append(_time(lambda sae=sae: _encode_pass(sae, store, args.batch, kinds)))
                exm.append(
                    _time(
                        lambda sae=sae: build_exemplars(
                            sae, store, k=args.k, batch_images=args.batch, progress=False
                        )
                    )
                )
            e_w, x_w = min(w for w, _ in enc), min(w for w, _ in exm)
            e_c, x_c = min(c for _, c in enc), min(c for _, c in exm)
            med = statistics.median(w for w, _ in exm) / statistics.median(w for w, _ in enc)
            ratio, cpu_ratio = x_w / e_w, x_c / e_c
            name = sae.cfg.name
            print(
                f"{name}: encode {e_w:.2f}s  exemplars {x_w:.2f}s  ratio {ratio:.2f} "
                f"(CPU {cpu_ratio:.2f}, medians {med:.2f}; wall runs: encode "
                f"{[round(w, 2) for w, _ in enc]}, exemplars {[round(w, 2) for w, _ in exm]})"
            )
            data["saes"][name] = {
                "encode_wall_cpu_s": enc,
                "exemplars_wall_cpu_s": exm,
                "ratio_min_wall": ratio,
                "ratio_min_cpu": cpu_ratio,
                "ratio_median_wall": med,
                "d_sae": sae.cfg.d_sae,
            }
            rows.append(
                f"| {name} ({sae.cfg.d_sae} latents) | {e_w:.2f} | {x_w:.2f} | "
                f"**{ratio:.2f}** | {cpu_ratio:.2f} | {med:.2f} |"
            )
    md = (
        f"### Exemplar pass vs plain encode (`python -m bench.exemplar_speed`)\n\n"
        f"{data['images']} images x {store.tokens_per_image} tokens of the offline DINOv2-S "
        f"(layer {store.layer}), batches of {args.batch} images, k={args.k} exemplars per "
        f"feature, {args.repeats} interleaved runs of each pass. Both passes read the store "
        "the same way; the exemplar pass includes statistics, histogram, top-k, patch maps, "
        "ordering and id resolution. Ratio = fastest exemplar run / fastest encode run "
        "(also in process CPU time, and medians). Target: <= 1.3.\n\n"
        "| SAE | encode (s) | exemplars (s) | ratio | CPU ratio | median ratio |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    if not args.no_write:
        write_section("exemplar_speed", md, data)
    return data


if __name__ == "__main__":
    main()
