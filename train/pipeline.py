"""``saescope run``: the default end-to-end training run (extract -> fit -> evaluate).

With no options it trains a TopK SAE on the real offline DINOv2-S (saliency fine-tune) over the
packaged photos, offline, in a few minutes on a laptop CPU, and reports reconstruction, sparsity
and how much of the frozen saliency head's output survives the SAE. Every stage is resumable:
running the command again after a kill continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saescope.train.cli import OutOption, ProgressOption, add_step, announce_config
from saescope.train.extract import BackboneOptions, ImageOptions
from saescope.train.fit import SweepOptions


@dataclass(kw_only=True)
class RunConfig(ProgressOption, SweepOptions, ImageOptions, BackboneOptions, OutOption):
    """``saescope run``: the extract options, the fit sweep options, and what only a run has."""

    out: str = "runs/default"
    """output folder: OUT/acts, OUT/saes/<name>, OUT/report.json"""
    source: str = "builtin:photos?views=16"
    eval_source: str = "builtin:photos?views=2&seed=1"
    """held-out images for the downstream (frozen head) evaluation"""
    layer: int = -2
    """layer L = output of block L, negative counts from the end"""
    epochs: float = 3.0
    """passes over the store"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "run",
        RunConfig,
        run,
        help="default end-to-end run: extract, fit, evaluate (offline model by default)",
        description="Extract activations, train an SAE sweep, and evaluate it, in one "
        "resumable command.\nOutputs: OUT/acts (activation store), OUT/saes/<name> (SAE "
        "folders, plots, log.jsonl),\nOUT/report.json.",
    )


def run(cfg: RunConfig) -> int:
    from saescope.core.backbones import load_backbone
    from saescope.core.sources import open_source
    from saescope.core.store import ActivationStore
    from saescope.train.evaluate import downstream_recovery
    from saescope.train.extract import extract
    from saescope.train.fit import FitConfig, fit

    out = Path(cfg.out)
    announce_config(cfg, "run", out)
    backbone = load_backbone(cfg.model, cfg.revision)
    print(f"[1/3] extracting layer {cfg.layer} of {backbone.describe()['display_name']}")
    store_path = extract(
        backbone,
        open_source(cfg.source),
        out / "acts",
        layers=[cfg.layer],
        kinds=cfg.kinds,
        max_images=cfg.max_images,
        progress=cfg.progress,
    )[0]
    store = ActivationStore(store_path)
    print(f"      {store.n_images} images, {store.n_tokens:,} tokens of width {store.d_model}")
    print("[2/3] training")
    fit_cfg = FitConfig(
        store=str(store_path),
        out=str(out / "saes"),
        saes=cfg.sweep(),
        tokens=int(store.n_tokens * cfg.epochs),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        progress=cfg.progress,
    )
    folders = fit(fit_cfg)
    print("[3/3] downstream evaluation through the frozen head")
    report = {"store": str(store_path), "saes": []}
    head = _head_or_none(backbone)
    images = [im for _, im in open_source(cfg.eval_source) if not isinstance(im, Exception)]
    from saescope.core.sae_io import from_pretrained

    for folder in folders:
        sae = from_pretrained(folder)
        entry = {"folder": str(folder), **sae.cfg.metrics}
        if head is not None and images:
            entry["downstream"] = downstream_recovery(
                sae, backbone, head, images, progress=cfg.progress
            )
            d = entry["downstream"]
            print(
                f"      {folder.name}: head recovery {d['recovery']:.3f}"
                + (f", mask agreement {d['mask_agreement']:.3f}" if "mask_agreement" in d else "")
            )
        report["saes"].append(entry)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"done: report in {out / 'report.json'}, plots in {out / 'saes'}")
    return 0


def _head_or_none(backbone):
    """The backbone's frozen head when it has one (the offline model's saliency decoder)."""
    from saescope.core.heads import load_head_for

    try:
        return load_head_for(backbone)
    except LookupError:
        return None
