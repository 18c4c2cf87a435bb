"""``saescope probe``: fit linear probes on a frozen backbone and store them in a bundle.

The probes are the frozen task heads that steering is tested against (``apps/classify.py``,
``apps/segment.py``, ``steer-eval``): edit an SAE feature at layer L, run blocks L+1.. and read
the probe. So a probe reads the backbone's *final, normalised* tokens, exactly what
:meth:`~core.backbones.base.Backbone.forward` returns and :func:`core.steering.steer` feeds heads.

- ``--task classification``: one vector per image (CLS token by default), any labelled source
  (``builtin:digits``, ``builtin:fashion-mnist``, ``hf:...`` with a class column, a folder of
  class sub-folders);
- ``--task segmentation``: every patch token, labelled with the majority pixel label of its patch
  (after the model's own crop); any segmentation source (:mod:`saescope.core.sources.segmentation`:
  ``builtin:digit-scenes``, ``hf:scene_parse_150?reduce_labels=1``, an images/ + masks/ folder).

Held-out accuracy (whole images never seen in fitting) is printed, saved in the probe's JSON and
in the bundle manifest, so every app shows how good the head it steers is.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from saescope.core.probes import (
    LinearProbe,
    ProbeReport,
    fit_linear_probe,
    majority_patch_labels,
    pool_tokens,
)
from saescope.train.cli import SeedOption, add_step, announce_config

DEFAULT_SOURCES = {"classification": "builtin:digits", "segmentation": "builtin:digit-scenes"}
DEFAULT_MAX_IMAGES = {"classification": 600, "segmentation": 300}


@dataclass
class ProbeData:
    """Final-layer features of a source, ready for :func:`core.probes.fit_linear_probe`."""

    features: np.ndarray  # [rows, D'] float32
    labels: np.ndarray  # [rows] int64, -1 = ignore
    groups: np.ndarray  # [rows] image number
    class_names: list[str]
    grid: tuple[int, int] | None = None
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # image number -> cropped mask
    skipped: list[dict] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)


def _batches(source, batch_size: int, skipped: list[dict]):
    """Yield lists of (index, id, image) with unreadable images skipped and listed."""
    from saescope.core.images import ImageError

    batch = []
    for i in range(len(source)):
        image_id, image = source.get(i)
        if isinstance(image, ImageError):
            skipped.append({"index": i, "id": image_id, "error": str(image)})
            continue
        batch.append((i, image_id, image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def collect(
    backbone,
    source,
    task: str,
    *,
    pooling: str = "cls",
    batch_size: int = 16,
    keep_masks: bool = True,
    progress: bool = True,
) -> ProbeData:
    """Run ``backbone`` over ``source`` once and gather the probe's inputs and labels."""
    from tqdm.auto import tqdm

    if task == "classification":
        if not source.has_labels:
            raise ValueError(
                f"source {source.spec!r} has no class labels; a classification probe "
                "needs a labelled source (e.g. builtin:digits, a folder of class "
                "sub-folders, or hf:NAME with a class column)"
            )
        class_names = list(source.label_names)
    elif task == "segmentation":
        if not hasattr(source, "mask"):
            raise ValueError(
                f"source {source.spec!r} has no pixel labels; use a segmentation source "
                "(builtin:digit-scenes, hf:NAME?mask_column=..., images/ + masks/ folder)"
            )
        class_names = list(source.class_names)
    else:
        raise ValueError(f"unknown task {task!r}; use classification or segmentation")
    feats, labels, groups, ids, skipped = [], [], [], [], []
    masks: dict[int, np.ndarray] = {}
    grid = None
    p = backbone.patch_size
    bar = tqdm(total=len(source), desc=f"probe data ({task})", unit="img", disable=not progress)
    for batch in _batches(source, batch_size, skipped):
        pixels = backbone.preprocess([im for _, _, im in batch]).to(backbone.device, backbone.dtype)
        final = backbone(pixels).float()
        layout = backbone.layout_for(pixels)
        grid = tuple(layout.grid)
        if task == "classification":
            feats.append(pool_tokens(final, layout, pooling).numpy())
            labels.extend(int(source.label(i)) for i, _, _ in batch)
            groups.extend(len(ids) + n for n in range(len(batch)))
        else:
            patches = final[:, layout.indices("patch")].numpy().astype(np.float16)
            for n, (i, _, _) in enumerate(batch):
                mask = backbone.preprocess.crop_mask(source.mask(i))
                plab = majority_patch_labels(mask, grid, p).reshape(-1)
                feats.append(patches[n])
                labels.extend(plab.tolist())
                groups.extend([len(ids) + n] * len(plab))
                if keep_masks:
                    masks[len(ids) + n] = mask.astype(np.int16)
        ids.extend(image_id for _, image_id, _ in batch)
        bar.update(len(batch))
    bar.close()
    if not ids:
        raise ValueError(f"no readable image in {source.spec!r}")
    if task == "segmentation" and hasattr(source, "finalise_classes"):
        source.finalise_classes(int(max(labels)) + 1)
        class_names = list(source.class_names)
    return ProbeData(
        np.concatenate(feats).astype(np.float32),
        np.asarray(labels, np.int64),
        np.asarray(groups),
        class_names,
        grid,
        masks,
        skipped,
        ids,
    )


def pixel_accuracy(probe: LinearProbe, data: ProbeData, test_images: np.ndarray) -> float:
    """Accuracy of the upsampled segmentation against the cropped pixel masks of test images."""
    rows, cols = data.grid
    n_p = rows * cols
    correct = total = 0
    with torch.inference_mode():
        for g in test_images:
            mask = data.masks.get(int(g))
            if mask is None:
                continue
            x = torch.from_numpy(data.features[int(g) * n_p : (int(g) + 1) * n_p])
            logits = probe.logits_from_features(x).T.reshape(1, -1, rows, cols)
            up = (
                torch.nn.functional.interpolate(
                    logits, size=mask.shape, mode="bilinear", align_corners=False
                )[0]
                .argmax(0)
                .numpy()
            )
            valid = mask >= 0
            correct += int((up[valid] == mask[valid]).sum())
            total += int(valid.sum())
    return correct / total if total else float("nan")


def fit_probe(
    backbone,
    source,
    task: str,
    *,
    name: str,
    pooling: str = "cls",
    test_fraction: float = 0.2,
    l2: float = 1e-3,
    balanced: bool = False,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> tuple[LinearProbe, ProbeReport, ProbeData]:
    """Collect features over ``source`` and fit a probe; returns it with its held-out report."""
    t0 = time.perf_counter()
    data = collect(
        backbone, source, task, pooling=pooling, batch_size=batch_size, progress=progress
    )
    from saescope.core.probes import split_by_group

    test_rows = split_by_group(data.groups, test_fraction, seed)  # whole images held out
    probe, report = fit_linear_probe(
        data.features,
        data.labels,
        data.class_names,
        kind=task,
        groups=data.groups,
        test_mask=test_rows,
        l2=l2,
        balanced=balanced,
        pooling=pooling,
        patch_size=backbone.patch_size,
        name=name,
        backbone_id=backbone.model_id,
        d_in=backbone.d_model,
    )
    if task == "segmentation" and data.masks:
        report.pixel_accuracy = pixel_accuracy(probe, data, np.unique(data.groups[test_rows]))
    probe.metrics = {
        **report.to_dict(),
        "source": source.spec,
        "n_skipped": len(data.skipped),
        "fit_seconds": round(time.perf_counter() - t0, 1),
    }
    probe.config["metrics"] = probe.metrics
    return probe, report, data


# ------------------------------------------------------------------------------ bundles
def add_probe_to_bundle(bundle_path: str | Path, probe: LinearProbe) -> Path:
    """Store ``probe`` as ``probes/<name>.*`` in a bundle and list it in the manifest."""
    from saescope.core.bundle import Bundle, update_manifest

    bundle = Bundle.load(bundle_path, verify=False)
    model_id = bundle.model.get("model_id")
    if probe.backbone_id and model_id and probe.backbone_id != model_id:
        raise ValueError(
            f"probe {probe.name!r} was fitted on {probe.backbone_id!r}, but bundle "
            f"{bundle.name} uses {model_id!r}"
        )
    probe.save(bundle.path / "probes", probe.name)
    entry = {
        "path": f"probes/{probe.name}",
        "kind": probe.kind,
        "classes": probe.class_names,
        "pooling": probe.pooling,
        "test_accuracy": probe.metrics.get("test_accuracy"),
        "test_balanced_accuracy": probe.metrics.get("test_balanced_accuracy"),
        "source": probe.metrics.get("source"),
    }
    update_manifest(
        bundle.path,
        lambda info: (
            info.setdefault("components", {})
            .setdefault("probes", {})
            .__setitem__(probe.name, entry)
        ),
    )
    return bundle.path / "probes" / f"{probe.name}.json"


DEFAULT_PROBES = (  # (name, task, source, max images) fitted into the offline default bundles
    ("digits", "classification", "builtin:digits?size=112", 300),
    ("digit-scenes", "segmentation", "builtin:digit-scenes?n=300", 200),
)


def ensure_default_probes(bundle_paths, progress: bool = True) -> None:
    """Fit the offline default probes once and add them to every default bundle missing them."""
    from saescope.core.backbones import OFFLINE_MODEL_ID, load_backbone
    from saescope.core.bundle import Bundle
    from saescope.core.sources import open_segmentation_source, open_source

    missing = [
        (name, task, spec, n)
        for name, task, spec, n in DEFAULT_PROBES
        if any(name not in Bundle.load(p, verify=False).probe_names for p in bundle_paths)
    ]
    if not missing:
        return
    backbone = load_backbone(OFFLINE_MODEL_ID)
    for name, task, spec, n in missing:
        opener = open_source if task == "classification" else open_segmentation_source
        probe, report, _ = fit_probe(
            backbone, opener(spec, max_images=n), task, name=name, progress=progress
        )
        if progress:
            print(f"[probe] {name}: {report.summary()}", file=sys.stderr, flush=True)
        for p in bundle_paths:
            if name not in Bundle.load(p, verify=False).probe_names:
                add_probe_to_bundle(p, probe)


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class ProbeConfig(SeedOption):
    """The options of ``saescope probe``."""

    task: Literal["classification", "segmentation"] = "classification"
    """classification: one vector per image; segmentation: every patch token, labelled with the
    majority pixel label of its patch"""
    bundle: str | None = None
    """bundle to add the probe to (its backbone is used)"""
    model: str | None = None
    """backbone id when no --bundle is given"""
    source: str | None = None
    """labelled source (default: builtin:digits / builtin:digit-scenes)"""
    max_images: int | None = None
    """images to use (default: 600 classification / 300 segmentation)"""
    name: str | None = None
    """probe name (default: from the source)"""
    out: str | None = None
    """folder for the probe when no --bundle is given"""
    pooling: Literal["cls", "mean", "cls+mean"] = "cls"
    """classification: which tokens the probe reads"""
    test_fraction: float = 0.2
    """share of the images held out (whole images) to measure accuracy"""
    l2: float = 1e-3
    """L2 penalty of the logistic regression"""
    balanced: bool = False
    """class-balanced loss (higher balanced accuracy, lower mIoU when one class such as
    background dominates)"""
    batch_size: int = 16
    """images per backbone batch"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "probe",
        ProbeConfig,
        run,
        help="fit a linear probe (classification or segmentation) on frozen features",
        description=__doc__.split("\n\n")[0] + "\n\nThe probe reads the backbone's final "
        "tokens; with --bundle it is stored in the bundle for the apps\nand steer-eval.",
    )


def _default_name(spec: str, task: str) -> str:
    base = spec.split("?")[0].split(":")[-1].rstrip("/").split("/")[-1] or task
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in base)


def run(cfg: ProbeConfig) -> int:
    from saescope.core.backbones import load_backbone
    from saescope.core.bundle import Bundle
    from saescope.core.sources import open_segmentation_source, open_source

    if (cfg.bundle is None) == (cfg.model is None):
        raise ValueError(
            "give exactly one of --bundle (store the probe in it) or --model (with --out)"
        )
    if cfg.bundle is None and cfg.out is None:
        raise ValueError("--model needs --out (the folder to write the probe to)")
    spec = cfg.source or DEFAULT_SOURCES[cfg.task]
    name = cfg.name or _default_name(spec, cfg.task)
    announce_config(cfg, "probe", cfg.out)
    n = cfg.max_images if cfg.max_images is not None else DEFAULT_MAX_IMAGES[cfg.task]
    opener = open_source if cfg.task == "classification" else open_segmentation_source
    source = opener(spec, max_images=n)
    if cfg.bundle is not None:
        bundle = Bundle.load(cfg.bundle)
        backbone = bundle.backbone
    else:
        backbone = load_backbone(cfg.model)
    probe, report, data = fit_probe(
        backbone,
        source,
        cfg.task,
        name=name,
        pooling=cfg.pooling,
        test_fraction=cfg.test_fraction,
        l2=cfg.l2,
        balanced=cfg.balanced,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    if data.skipped:
        print(
            f"skipped {len(data.skipped)} unreadable images: "
            + "; ".join(s["error"] for s in data.skipped[:5]),
            file=sys.stderr,
        )
    print(report.summary())
    if cfg.bundle is not None:
        path = add_probe_to_bundle(bundle.path, probe)
    else:
        path = probe.save(cfg.out, name)
    (path.parent / f"{name}.report.json").write_text(json.dumps(probe.metrics, indent=2))
    print(path)
    return 0
