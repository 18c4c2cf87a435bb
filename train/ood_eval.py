"""``saescope ood-eval`` / ``ood-fit``: out-of-distribution detection with SAE codes.

``ood-eval`` answers "do SAE codes flag images the model was not shown, and as well as the usual
baselines?": for each in-distribution set it extracts layer-L activations (:func:`train.extract`,
resumable and cached under ``--work``), fits an SAE on the in-distribution fitting images
(:func:`train.fit`; on every stored token, CLS included, since the store keeps all of them for
the final-CLS baselines) or takes ``--bundle``'s, fits every scorer of :mod:`core.ood` on those
images, calibrates them on later training images the SAE never saw, and scores held-out
in-distribution images against each OOD set. One table (every method x every OOD set: AUROC,
FPR@95, and their means) is printed and saved as JSON + markdown (``--results-md``: into
bench/RESULTS.md).

Splits: an in-distribution source gives its first ``--n-train`` images (the last
``--cal-fraction`` of them for calibration, the rest for fitting) and the next ``--n-test`` for
testing; an OOD-only source gives its first ``--n-test`` images; a source that is
in-distribution in one configuration and OOD in another is tested on its held-out images.

``ood-fit`` adds an ``ood/`` component (calibrated SAE and raw-embedding scorers) to a bundle from
the activation store it was built on; the offline default bundles get one automatically
(:func:`saescope.train.default_bundle.ensure_default_ood`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from saescope.core.ood import (
    FAMILIES,
    ImageSummary,
    OODSuite,
    auroc,
    default_scorers,
    fpr_at_tpr,
    summarize,
)
from saescope.train.cli import ProgressOption, add_step, announce_config, option

DEFAULT_MODEL = "offline:dinov2-s-saliency"


def _log(msg: str, progress: bool = True) -> None:
    if progress:
        print(f"[ood] {msg}", file=sys.stderr, flush=True)


def slug(spec: str) -> str:
    """A file-name-safe short name of a source spec (``builtin:photos?views=8`` -> ``photos-views-8``)."""
    s = spec.split(":", 1)[-1] if spec.startswith(("builtin:", "hf:")) else Path(spec).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:60] or "source"


# ------------------------------------------------------------------------------ data
@dataclass
class ImageSet:
    """A slice of a source extracted to an activation store (layer L, all token kinds)."""

    spec: str
    start: int
    n: int
    store: Path


def extract_set(
    backbone,
    spec: str,
    start: int,
    n: int,
    work: Path,
    layer: int,
    progress: bool = True,
    batch_size: int = 16,
) -> ImageSet:
    """Images ``start .. start + n`` of ``spec`` -> a store of every token of layer ``layer``.

    All token kinds are kept so that the rest of the model (blocks L+1.., final norm) can be run
    on the stored tokens for the final CLS token: one backbone pass serves every baseline.
    """
    from saescope.core.sources import open_source
    from saescope.train.extract import extract

    source = open_source(spec, start=start, max_images=n)
    if len(source) == 0:
        raise ValueError(
            f"source {spec!r} has no images from index {start} (it has "
            f"{len(open_source(spec))}); use a smaller --n-train/--n-test"
        )
    L = backbone.resolve_layer(layer)
    path = work / "acts" / f"{slug(spec)}-s{start}-n{len(source)}-L{L}"
    extract(
        backbone, source, path, layers=[L], kinds="all", batch_size=batch_size, progress=progress
    )
    return ImageSet(spec, start, len(source), path)


@torch.inference_mode()
def store_summary(
    store_path: Path,
    sae,
    backbone=None,
    *,
    with_cls: bool = True,
    batch_images: int = 16,
    max_images: int | None = None,
    progress: bool = True,
    desc: str = "",
) -> ImageSummary:
    """Summaries (:func:`core.ood.summarize`) of every image of an activation store.

    With ``with_cls`` and a store holding all token kinds, blocks L+1.. of ``backbone`` run on the
    stored tokens to give the final (normalised) CLS token for the CLS baselines and the probe.
    """
    from tqdm.auto import tqdm

    from saescope.core.store import ActivationStore
    from saescope.core.tokens import TokenKind

    store = ActivationStore(store_path)
    layout = store.layout
    stored = layout.kinds_of(store.kinds)  # the kind of every stored token, in order
    patch_pos = [i for i, kind in enumerate(stored) if kind == TokenKind.PATCH]
    if not patch_pos:
        raise ValueError(f"activation store {store_path} holds no patch tokens")
    full = len(stored) == layout.n_tokens  # every token: the rest of the model can run on them
    want_cls = with_cls and backbone is not None and full and layout.n_cls > 0
    n = store.n_images if max_images is None else min(store.n_images, max_images)
    if n == 0:
        raise ValueError(f"activation store {store_path} holds no images")
    labels, ids = store.labels[:n], store.image_ids[:n]
    parts = []
    bar = tqdm(
        total=n,
        desc=desc or f"scoring {Path(store_path).name}",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    for first, toks in store.iter_images(batch_images, kinds=None, stop=n):
        patches = toks[:, patch_pos[0] : patch_pos[-1] + 1]  # patches are contiguous, last
        cls = None
        if want_cls:
            final = backbone.run_from(store.layer, toks.to(backbone.device, backbone.dtype)).float()
            cls = layout.select(final, [TokenKind.CLS])[:, 0].cpu()
        parts.append(
            summarize(
                sae,
                patches,
                final_cls=cls,
                labels=labels[first : first + len(toks)],
                label_names=store.label_names,
                ids=ids[first : first + len(toks)],
            )
        )
        bar.update(len(toks))
    bar.close()
    return ImageSummary.concat(parts)


def fit_sae_on(
    store_path: Path, work: Path, *, expansion: float, k: int, epochs: float, progress: bool = True
):
    """A TopK SAE fitted on the in-distribution training store (cached: a rerun resumes at the end)."""
    from saescope.core.sae_io import from_pretrained
    from saescope.core.store import ActivationStore
    from saescope.train.fit import FitConfig, SAESpec, fit

    store = ActivationStore(store_path)
    out = work / "saes" / f"{Path(store_path).name}-topk-x{expansion:g}-k{k}-e{epochs:g}"
    folders = fit(
        FitConfig(
            store=str(store_path),
            out=str(out),
            saes=[SAESpec("topk", expansion, k=k)],
            tokens=int(epochs * store.n_tokens),
            batch_size=2048,
            lr=4e-4,
            progress=progress,
            plots=False,
        )
    )
    return from_pretrained(folders[0]).eval()


# ------------------------------------------------------------------------------ evaluation
def evaluate_config(suite: OODSuite, in_test: ImageSummary, ood: dict[str, ImageSummary]) -> dict:
    """AUROC and FPR@95 of every method against every OOD set, with means over the sets."""
    in_scores = suite.scores(in_test)
    out_scores = {name: suite.scores(s) for name, s in ood.items()}
    rows = {}
    for m in in_scores:
        cells = {}
        for name in ood:
            if m not in out_scores[name]:
                continue
            cells[name] = {
                "auroc": auroc(in_scores[m], out_scores[name][m]),
                "fpr95": fpr_at_tpr(in_scores[m], out_scores[name][m], suite.tpr),
            }
        if not cells:
            continue
        rows[m] = {
            "label": suite.label(m),
            "family": suite.family(m),
            "sets": cells,
            "mean_auroc": float(np.mean([c["auroc"] for c in cells.values()])),
            "mean_fpr95": float(np.mean([c["fpr95"] for c in cells.values()])),
            # how well the calibration split's 95%-TPR threshold holds on unseen images
            "test_tpr_at_calibrated": float(np.mean(in_scores[m] <= suite.threshold(m))),
        }
    return rows


def verdict(rows: dict, tol: float = 0.005) -> dict:
    """Best SAE score vs best raw-embedding baseline by mean AUROC."""

    def best(fam):
        c = [(v["mean_auroc"], m) for m, v in rows.items() if v["family"] == fam]
        return max(c) if c else None

    s, r = best("sae"), best("raw")
    if s is None or r is None:
        return {}
    diff = s[0] - r[0]
    word = "beats" if diff > tol else ("matches" if diff >= -tol else "falls short of")
    return {
        "best_sae": s[1],
        "best_sae_auroc": s[0],
        "best_raw": r[1],
        "best_raw_auroc": r[0],
        "difference": diff,
        "outcome": word,
    }


def markdown_table(cfg: dict) -> str:
    sets = cfg["ood_sets"]
    rows = cfg["rows"]
    best = {
        fam: max((v["mean_auroc"] for v in rows.values() if v["family"] == fam), default=None)
        for fam in FAMILIES
    }
    head = (
        "| method | "
        + " | ".join(f"{s} AUROC / FPR@95" for s in sets)
        + " | **mean AUROC** | **mean FPR@95** | in-dist kept at calibrated threshold |"
    )
    lines = [head, "|---" * (len(sets) + 4) + "|"]
    for m, v in rows.items():
        cells = [
            f"{v['sets'][s]['auroc']:.3f} / {v['sets'][s]['fpr95']:.3f}" if s in v["sets"] else "–"
            for s in sets
        ]
        mean = f"{v['mean_auroc']:.3f}"
        if best.get(v["family"]) is not None and mean == f"{best[v['family']]:.3f}":
            mean = f"**{mean}**"
        lines.append(
            f"| {v['family']}: {v['label']} | "
            + " | ".join(cells)
            + f" | {mean} | {v['mean_fpr95']:.3f} | {v['test_tpr_at_calibrated']:.1%} |"
        )
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = [
        "## OOD detection with SAE codes (`saescope ood-eval`)\n",
        f"Model `{result['model']}`, layer {result['layer']}; "
        f"{result['n_train']} in-distribution training images per configuration: the SAE and "
        f"the scorers are fitted on the first {1 - result['cal_fraction']:.0%}, the last "
        f"{result['cal_fraction']:.0%} (unseen by the SAE) calibrate the thresholds; "
        f"{result['n_test']} "
        "held-out test images per set. AUROC: higher is better; FPR@95: fraction of OOD "
        "images accepted at the threshold that keeps 95% of in-distribution test images, "
        "lower is better. Bold: best mean AUROC per family (SAE / raw / probe). Last column: "
        "share of in-distribution test images below the 95%-TPR threshold set on the "
        "calibration split (what the browser's verdict uses; 95% when calibration holds).",
    ]
    for cfg in result["configs"]:
        out.append(f"\n### In-distribution: `{cfg['in']}`\n")
        out.append(f"SAE: {cfg['sae']}.\n")
        out.append(markdown_table(cfg))
        v = cfg.get("verdict") or {}
        if v:
            out.append(
                f"\nBest SAE score **{cfg['rows'][v['best_sae']]['label']}** "
                f"(mean AUROC {v['best_sae_auroc']:.3f}) **{v['outcome']}** the best raw "
                f"baseline **{cfg['rows'][v['best_raw']]['label']}** "
                f"({v['best_raw_auroc']:.3f}; difference {v['difference']:+.3f}; "
                "'matches' = within ±0.005)."
            )
        for name, why in cfg.get("skipped", {}).items():
            out.append(f"\n_Skipped {name}: {why}_")
    return "\n".join(out)


# ------------------------------------------------------------------------------ bundles
def fit_bundle_ood(
    bundle_path: str | Path,
    store_path: str | Path,
    *,
    max_images: int = 2000,
    k: int = 5,
    progress: bool = True,
) -> Path:
    """Fit and calibrate the SAE and raw (layer-token) scorers of a bundle on its activation
    store; store them as the bundle's ``ood/`` component.

    A random fifth of the store calibrates; the bundle's SAE was trained on the whole store, so
    its calibration images are not unseen and the thresholds lean low (the verdict errs towards
    "OOD"). Calibrating on images the SAE never saw needs a store of them (``OODSuite.fit``).
    """
    from saescope.core.bundle import Bundle
    from saescope.core.store import ActivationStore

    bundle = Bundle.load(bundle_path, verify=False)
    store = ActivationStore(store_path)
    sae = bundle.sae.eval()
    model_id = bundle.model.get("model_id")
    if model_id and store.model_id != model_id:
        raise ValueError(
            f"store {store_path} holds activations of {store.model_id!r}, but bundle "
            f"{bundle.name} uses {model_id!r}"
        )
    if sae.cfg.layer is not None and store.layer != sae.cfg.layer:
        raise ValueError(
            f"store {store_path} holds layer {store.layer}, but the SAE of bundle "
            f"{bundle.name} reads layer {sae.cfg.layer}"
        )
    if store.d_model != sae.cfg.d_in:
        raise ValueError(f"store width {store.d_model} does not match the SAE's {sae.cfg.d_in}")
    t0 = time.perf_counter()
    summary = store_summary(
        Path(store_path),
        sae,
        None,
        with_cls=False,
        max_images=max_images,
        progress=progress,
        desc=f"ood calibration {bundle.name}",
    )
    scorers = default_scorers(("sae", "raw"), k=k, raw_fields=("raw_mean",))
    suite = OODSuite.fit(
        scorers,
        summary,
        meta={
            "source": (store.manifest.get("source") or {}).get("spec"),
            "n_images": len(summary),
            "layer": store.layer,
            "model_id": store.model_id,
            "sae": sae.cfg.name,
            "fit_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    return add_ood_to_bundle(bundle.path, suite)


def add_ood_to_bundle(bundle_path: str | Path, suite: OODSuite) -> Path:
    """Store a fitted suite as the bundle's ``ood/`` component (replacing an older one)."""
    from saescope.core.bundle import update_manifest

    folder = Path(bundle_path) / "ood"
    shutil.rmtree(folder, ignore_errors=True)
    suite.save(folder)
    entry = {
        "path": "ood",
        "scores": suite.names,
        "n_fit": suite.meta.get("n_fit"),
        "n_calibration": suite.meta.get("n_calibration"),
        "source": suite.meta.get("source"),
    }

    def change(info: dict) -> None:
        info.setdefault("components", {})["ood"] = "ood"
        info["ood"] = entry

    update_manifest(bundle_path, change)
    return folder


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class OODEvalConfig(ProgressOption):
    """The options of ``saescope ood-eval``."""

    model: str | None = None
    """backbone (default: the --bundle's, else offline:dinov2-s-saliency)"""
    layer: int | None = None
    """layer L (default: the --bundle SAE's layer, else 10)"""
    bundle: str | None = None
    """use this bundle's SAE instead of fitting one per in-distribution set"""
    in_sets: list[str] = option(flags=("--in",), metavar="SOURCE")
    """in-distribution source(s); each is one configuration, with every other --in and --out
    source as OOD"""
    out_sets: list[str] = option(
        default_factory=list, flags=("--out",), nargs="*", metavar="SOURCE"
    )
    """OOD-only sources (default: none)"""
    n_train: int = 500
    """in-distribution training images"""
    n_test: int = 200
    """test images per set"""
    methods: list[str] = option(default_factory=lambda: list(FAMILIES), choices=FAMILIES)
    """scorer families"""
    knn_k: int = 5
    """k of the k-NN scores"""
    expansion: float = 8.0
    """SAE width / d_model"""
    k: int = 32
    """SAE active latents (TopK)"""
    epochs: float = 3.0
    """SAE training passes"""
    cal_fraction: float = 0.2
    """share of the training images (the last ones) held out from the SAE and the scorers to
    calibrate thresholds and percentiles"""
    work: str = "runs/ood"
    """folder for activation stores, SAEs, results.json and results.md"""
    batch_size: int = 16
    """images per backbone batch when extracting"""
    results_md: bool = False
    """write the table to bench/RESULTS.md"""


@dataclass(kw_only=True)
class OODFitConfig(ProgressOption):
    """The options of ``saescope ood-fit``."""

    bundle: str
    """bundle to add the ood/ component to"""
    store: str
    """the activation store the bundle was built on"""
    max_images: int = 2000
    """images of the store to fit and calibrate on"""
    knn_k: int = 5
    """k of the k-NN scores"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "ood-eval",
        OODEvalConfig,
        run,
        help="OOD detection with SAE codes vs raw-embedding and probe baselines",
        description=__doc__.split("\n\n")[1],
    )
    add_step(
        sub,
        "ood-fit",
        OODFitConfig,
        run_fit,
        help="add calibrated OOD scorers (ood/) to a bundle from its activation store",
        description="Fit the SAE-based and raw-embedding OOD scorers on a bundle's "
        "activation store, calibrate them\non a held-out fifth, and store them as the "
        "bundle's ood/ component (the browser's OOD panel\nreads it).",
    )


def run_fit(cfg: OODFitConfig) -> int:
    announce_config(cfg, "ood-fit", None)
    folder = fit_bundle_ood(
        cfg.bundle, cfg.store, max_images=cfg.max_images, k=cfg.knn_k, progress=cfg.progress
    )
    suite = OODSuite.load(folder)
    for n in suite.names:
        print(f"{n}: 95%-TPR threshold {suite.threshold(n):.4g}")
    print(folder)
    return 0


def _resolve(cfg: OODEvalConfig):
    """Check the options; fill in the model and layer (from ``--bundle``, else the defaults).

    Returns the resolved config, the bundle and its SAE (both None without ``--bundle``)."""
    from saescope.core.backbones import load_backbone

    if cfg.n_train < 10 or cfg.n_test < 2:
        raise ValueError("--n-train must be >= 10 and --n-test >= 2")
    if len(cfg.in_sets) + len(cfg.out_sets) < 2:
        raise ValueError("nothing to compare: give at least one --out source (or two --in sources)")
    bundle = sae = None
    model, layer = cfg.model, cfg.layer
    if cfg.bundle:
        from saescope.core.bundle import Bundle

        bundle = Bundle.load(cfg.bundle)
        b_model = bundle.model.get("model_id")
        if model and b_model and model != b_model:
            raise ValueError(
                f"mismatched models: bundle {bundle.name} was built on {b_model!r}, "
                f"not --model {model!r}"
            )
        sae = bundle.sae.eval()
        model = model or b_model
        if (
            layer is not None
            and sae.cfg.layer is not None
            and layer != sae.cfg.layer
            and load_backbone(model).resolve_layer(layer) != sae.cfg.layer
        ):
            raise ValueError(
                f"mismatched layers: the SAE of bundle {bundle.name} reads layer "
                f"{sae.cfg.layer}, not --layer {layer}"
            )
        layer = sae.cfg.layer if layer is None else layer
    model = model or DEFAULT_MODEL
    layer = 10 if layer is None else layer
    return replace(cfg, model=model, layer=layer), bundle, sae


def _extract_all(cfg: OODEvalConfig, backbone, layer: int, work: Path) -> dict[str, dict]:
    """Every slice extracted once, shared by the configurations: ``{"fit"|"cal"|"test": {spec:
    ImageSet}}``."""
    from saescope.core.sources import open_source

    prog = cfg.progress
    sets: dict[str, dict] = {"fit": {}, "cal": {}, "test": {}}
    for spec in dict.fromkeys(cfg.in_sets + cfg.out_sets):
        n_avail = len(open_source(spec))
        if n_avail == 0:
            raise ValueError(f"source {spec!r} is empty")
        if spec in cfg.in_sets:
            n_train = min(cfg.n_train, n_avail - min(cfg.n_test, n_avail // 2))
            if n_train < 10:
                raise ValueError(
                    f"in-distribution source {spec!r} has only {n_avail} images: "
                    "too few to fit and test on"
                )
            if n_train < cfg.n_train:
                _log(f"{spec}: only {n_avail} images, fitting on {n_train}", prog)
            # the calibration images come after the fitting images: the SAE never sees them,
            # so thresholds and percentiles are those of unseen in-distribution images
            n_cal = max(2, int(round(cfg.cal_fraction * n_train)))
            _log(f"extracting {spec} (training and calibration images)", prog)
            sets["fit"][spec] = extract_set(
                backbone, spec, 0, n_train - n_cal, work, layer, prog, cfg.batch_size
            )
            sets["cal"][spec] = extract_set(
                backbone, spec, n_train - n_cal, n_cal, work, layer, prog, cfg.batch_size
            )
            start = n_train
        else:
            start = 0
        _log(f"extracting {spec} (test images)", prog)
        sets["test"][spec] = extract_set(
            backbone, spec, start, cfg.n_test, work, layer, prog, cfg.batch_size
        )
    return sets


def _evaluate_in(
    cfg: OODEvalConfig,
    in_spec: str,
    sets: dict[str, dict],
    backbone,
    work: Path,
    bundle=None,
    sae=None,
) -> dict:
    """One configuration: ``in_spec`` in-distribution, every other source OOD.

    Raw summaries are SAE-independent and cached per store; the SAE parts are per configuration.
    """
    prog = cfg.progress
    _log(f"configuration: in-distribution {in_spec}", prog)
    fit_set = sets["fit"][in_spec]
    if sae is None:
        sae = fit_sae_on(
            fit_set.store, work, expansion=cfg.expansion, k=cfg.k, epochs=cfg.epochs, progress=prog
        )
        sae_desc = (
            f"TopK k={cfg.k}, {sae.cfg.d_sae} latents, fitted on the {fit_set.n} "
            f"fitting images ({cfg.epochs:g} epochs; FVU "
            f"{sae.cfg.metrics.get('fvu', float('nan')):.3f})"
        )
    else:
        sae_desc = f"from bundle {bundle.name} ({sae.cfg.name})"
    train = store_summary(fit_set.store, sae, backbone, progress=prog, desc=f"{slug(in_spec)} fit")
    cal = store_summary(
        sets["cal"][in_spec].store,
        sae,
        backbone,
        progress=prog,
        desc=f"{slug(in_spec)} calibration",
    )
    suite = OODSuite.fit(
        default_scorers(cfg.methods, k=cfg.knn_k), train, cal, meta={"in": in_spec}
    )
    for name, why in suite.skipped.items():
        _log(f"skipping {name}: {why}", True)
    in_test = store_summary(
        sets["test"][in_spec].store, sae, backbone, progress=prog, desc=f"{slug(in_spec)} test"
    )
    others = [s for s in sets["test"] if s != in_spec]
    ood = {
        slug(spec): store_summary(
            sets["test"][spec].store, sae, backbone, progress=prog, desc=f"{slug(spec)} test"
        )
        for spec in others
    }
    rows = evaluate_config(suite, in_test, ood)
    return {
        "in": in_spec,
        "ood_sets": list(ood),
        "ood_specs": others,
        "sae": sae_desc,
        "n_fit": len(train),
        "n_calibration": len(cal),
        "n_test_in": len(in_test),
        "n_test_ood": {k: len(v) for k, v in ood.items()},
        "rows": rows,
        "skipped": suite.skipped,
        "thresholds": {n: suite.threshold(n) for n in suite.calibration},
        "verdict": verdict(rows),
    }


def run(cfg: OODEvalConfig) -> int:
    from saescope.core.backbones import load_backbone

    cfg, bundle, sae = _resolve(cfg)
    work = Path(cfg.work)
    announce_config(cfg, "ood-eval", work)
    t0 = time.perf_counter()
    backbone = load_backbone(cfg.model)
    layer = backbone.resolve_layer(cfg.layer)
    if sae is not None and sae.cfg.d_in != backbone.d_model:
        raise ValueError(
            f"mismatched models: the SAE reads {sae.cfg.d_in}-d activations, "
            f"{cfg.model} has width {backbone.d_model}"
        )
    sets = _extract_all(cfg, backbone, layer, work)
    configs = [
        _evaluate_in(cfg, in_spec, sets, backbone, work, bundle, sae) for in_spec in cfg.in_sets
    ]
    result = {
        "model": cfg.model,
        "layer": layer,
        "n_train": cfg.n_train,
        "n_test": cfg.n_test,
        "cal_fraction": cfg.cal_fraction,
        "knn_k": cfg.knn_k,
        "configs": configs,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    md = markdown(result)
    print(md)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(result, indent=2))
    (work / "results.md").write_text(md + "\n")
    print(
        f"\nsaved {work / 'results.json'} and {work / 'results.md'} ({result['seconds']:.0f} s)",
        file=sys.stderr,
    )
    if cfg.results_md:
        from saescope.train.results_md import write_section

        cmd = (
            "saescope ood-eval --model "
            + cfg.model
            + f" --layer {cfg.layer} --in "
            + " ".join(cfg.in_sets)
            + (" --out " + " ".join(cfg.out_sets) if cfg.out_sets else "")
            + f" --n-train {cfg.n_train} --n-test {cfg.n_test} --results-md"
        )
        write_section("ood", md + f"\n\nCommand: `{cmd}` ({result['seconds']:.0f} s).", result)
    return 0


__all__ = [
    "ImageSet",
    "OODEvalConfig",
    "OODFitConfig",
    "add_ood_to_bundle",
    "add_parser",
    "evaluate_config",
    "extract_set",
    "fit_bundle_ood",
    "fit_sae_on",
    "markdown",
    "run",
    "run_fit",
    "store_summary",
    "verdict",
]
