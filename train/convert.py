"""``saescope import``: turn a saev checkpoint or an SAELens folder into a native SAE folder.

Why a separate step: published checkpoints lack provenance and normalisation constants; this step
adds them once (model id, layer, and — from an activation store — the input scale the SAE was
trained with), so that every later consumer just calls ``from_pretrained``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saescope.core.sae_io import import_saelens, import_saev, save_sae
from saescope.train.cli_util import announce_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import", help="import a saev .pt checkpoint or an SAELens folder",
        description="Convert a saev checkpoint (JSON header line + torch state dict, read with "
        "weights_only=True) or an SAELens folder (cfg.json + sae_weights.safetensors) into a native "
        "saescope SAE folder (config.json + sae.safetensors).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="saev .pt file or SAELens folder")
    p.add_argument("--out", required=True, help="output SAE folder")
    p.add_argument("--model", default=None, help="backbone id the SAE was trained on")
    p.add_argument("--revision", default=None)
    p.add_argument("--layer", type=int, default=None, help="layer L (output of block L)")
    p.add_argument("--kinds", default="patch", help="token kinds it was trained on")
    p.add_argument("--normalize-from-store", default=None,
                   help="estimate the input normalisation from this activation store (saev only)")
    p.add_argument("--sample-tokens", type=int, default=100_000)
    p.set_defaults(func=run, step="import")


def run(args: argparse.Namespace) -> int:
    from saescope.core.tokens import parse_kinds

    announce_config(args, args.out)
    src = Path(args.checkpoint)
    if not src.exists():
        raise FileNotFoundError(f"no checkpoint at {src}")
    if src.is_dir():
        sae = import_saelens(src)
    else:
        sample = None
        if args.normalize_from_store:
            from saescope.train.store import ActivationStore

            store = ActivationStore(args.normalize_from_store)
            sample = store.sample(args.sample_tokens, seed=0).float()
        sae = import_saev(src, normalization_sample=sample)
    if args.model:
        sae.cfg.model_id, sae.cfg.model_revision = args.model, args.revision
    if args.layer is not None:
        sae.cfg.layer_requested = args.layer
        sae.cfg.layer = args.layer
        if args.model:
            from saescope.core.backbones import load_backbone

            sae.cfg.layer = load_backbone(args.model, args.revision).resolve_layer(args.layer)
    sae.cfg.token_kinds = [k.value for k in parse_kinds(args.kinds)]
    folder = save_sae(sae, args.out)
    print(f"imported {sae.cfg.name} ({sae.cfg.d_in} -> {sae.cfg.d_sae}) into {folder}")
    return 0
