"""``saescope run``: the default end-to-end training run (extract -> fit -> evaluate).

With no options it trains a TopK SAE on the real offline DINOv2-S (saliency fine-tune) over the
packaged photos, offline, in a few minutes on a laptop CPU, and reports reconstruction, sparsity
and how much of the frozen saliency head's output survives the SAE. Every stage is resumable:
running the command again after a kill continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saescope.train.cli_util import announce_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="default end-to-end run: extract, fit, evaluate (offline model by default)",
        description="Extract activations, train an SAE sweep, and evaluate it, in one resumable "
        "command. Outputs: OUT/acts (activation store), OUT/saes/<name> (SAE folders, plots, "
        "log.jsonl), OUT/report.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/default")
    p.add_argument("--model", default="offline:dinov2-s-saliency")
    p.add_argument("--revision", default=None)
    p.add_argument("--source", default="builtin:photos?views=16")
    p.add_argument("--eval-source", default="builtin:photos?views=2&seed=1",
                   help="held-out images for the downstream (frozen head) evaluation")
    p.add_argument("--layer", type=int, default=-2)
    p.add_argument("--kinds", default="patch")
    p.add_argument("--arch", nargs="+", default=["topk"])
    p.add_argument("--expansion", nargs="+", type=float, default=[16.0])
    p.add_argument("--k", nargs="+", type=int, default=[32])
    p.add_argument("--l1", nargs="+", type=float, default=[3e-3])
    p.add_argument("--l0", nargs="+", type=float, default=[1e-3])
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the store")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run, step="run")


def run(args: argparse.Namespace) -> int:
    from saescope.core.backbones import load_backbone
    from saescope.train.evaluate import downstream_recovery
    from saescope.train.extract import extract
    from saescope.train.fit import FitConfig, fit, specs_from_args
    from saescope.train.sources import open_source
    from saescope.train.store import ActivationStore

    out = Path(args.out)
    announce_config(args, out)
    backbone = load_backbone(args.model, args.revision)
    print(f"[1/3] extracting layer {args.layer} of {backbone.describe()['display_name']}")
    store_path = extract(backbone, open_source(args.source), out / "acts", layers=[args.layer],
                         kinds=args.kinds, max_images=args.max_images, progress=args.progress)[0]
    store = ActivationStore(store_path)
    print(f"      {store.n_images} images, {store.n_tokens:,} tokens of width {store.d_model}")
    print("[2/3] training")
    cfg = FitConfig(store=str(store_path), out=str(out / "saes"), saes=specs_from_args(args),
                    tokens=int(store.n_tokens * args.epochs), batch_size=args.batch_size,
                    lr=args.lr, progress=args.progress)
    folders = fit(cfg)
    print("[3/3] downstream evaluation through the frozen head")
    report = {"store": str(store_path), "saes": []}
    head = _head_or_none(backbone)
    images = [im for _, im in open_source(args.eval_source) if not isinstance(im, Exception)]
    from saescope.core.sae_io import from_pretrained

    for folder in folders:
        sae = from_pretrained(folder)
        entry = {"folder": str(folder), **sae.cfg.metrics}
        if head is not None and images:
            entry["downstream"] = downstream_recovery(sae, backbone, head, images,
                                                      progress=args.progress)
            d = entry["downstream"]
            print(f"      {folder.name}: head recovery {d['recovery']:.3f}"
                  + (f", mask agreement {d['mask_agreement']:.3f}" if "mask_agreement" in d else ""))
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
