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

This module is the CLI and the experiment driver; the stores and image summaries live in
:mod:`saescope.train.ood_data`, the tables and verdict in :mod:`saescope.train.ood_report`, and
the bundle component in :mod:`saescope.train.ood_bundle` (their names are re-exported here).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from saescope.core.ood import FAMILIES, OODSuite, default_scorers
from saescope.train.cli import ProgressOption, add_step, announce_config, option
from saescope.train.ood_bundle import add_ood_to_bundle, fit_bundle_ood
from saescope.train.ood_data import ImageSet, extract_set, fit_sae_on, slug, store_summary
from saescope.train.ood_report import evaluate_config, markdown, verdict

if TYPE_CHECKING:
    from saescope.core.backbones import Backbone
    from saescope.core.bundle import Bundle
    from saescope.core.sae import SAE

DEFAULT_MODEL = "offline:dinov2-s-saliency"


def _log(msg: str, progress: bool = True) -> None:
    if progress:
        print(f"[ood] {msg}", file=sys.stderr, flush=True)


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


def _resolve(cfg: OODEvalConfig) -> tuple[OODEvalConfig, Bundle | None, SAE | None]:
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


def _extract_all(
    cfg: OODEvalConfig, backbone: Backbone, layer: int, work: Path
) -> dict[str, dict[str, ImageSet]]:
    """Every slice extracted once, shared by the configurations: ``{"fit"|"cal"|"test": {spec:
    ImageSet}}``."""
    from saescope.core.sources import open_source

    prog = cfg.progress
    sets: dict[str, dict[str, ImageSet]] = {"fit": {}, "cal": {}, "test": {}}
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
    sets: dict[str, dict[str, ImageSet]],
    backbone: Backbone,
    work: Path,
    bundle: Bundle | None = None,
    sae: SAE | None = None,
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
