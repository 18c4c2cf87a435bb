"""``saescope import``: turn a saev checkpoint or an SAELens folder into a native SAE folder.

Why a separate step: published checkpoints lack provenance and normalisation constants; this step
adds them once (model id, layer, and — from an activation store — the input scale the SAE was
trained with), so that every later consumer just calls ``from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saescope.core.sae_io import import_folder, import_saev, save_sae
from saescope.train.cli import OutOption, add_step, announce_config, option


@dataclass(kw_only=True)
class ImportConfig(OutOption):
    """``saescope import``: the checkpoint, and the provenance it lacks. OUT is the SAE folder."""

    checkpoint: str = option(positional=True)
    """saev .pt file, SAELens folder or sparsify folder"""
    model: str | None = None
    """backbone id the SAE was trained on"""
    revision: str | None = None
    """Hub revision of the backbone"""
    layer: int | None = None
    """layer L (output of block L)"""
    kinds: str = "patch"
    """token kinds it was trained on"""
    normalize_from_store: str | None = None
    """estimate the input normalisation from this activation store (saev only)"""
    sample_tokens: int = 100_000
    """tokens sampled from that store"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "import",
        ImportConfig,
        run,
        help="import a saev .pt checkpoint, an SAELens or a sparsify folder",
        description="Convert a saev checkpoint (JSON header line + torch state dict, read "
        "with weights_only=True),\nan SAELens (cfg.json + sae_weights.safetensors) or sparsify "
        "folder (cfg.json + sae.safetensors)\ninto a native saescope SAE folder OUT "
        "(config.json + sae.safetensors).",
    )


def run(cfg: ImportConfig) -> int:
    from saescope.core.tokens import parse_kinds

    announce_config(cfg, "import", cfg.out)
    src = Path(cfg.checkpoint)
    if not src.exists():
        raise FileNotFoundError(f"no checkpoint at {src}")
    if src.is_dir():
        sae = import_folder(src)
    else:
        sample = None
        if cfg.normalize_from_store:
            from saescope.core.store import ActivationStore

            store = ActivationStore(cfg.normalize_from_store)
            sample = store.sample(cfg.sample_tokens, seed=0).float()
        sae = import_saev(src, normalization_sample=sample)
    if cfg.model:
        sae.cfg.model_id, sae.cfg.model_revision = cfg.model, cfg.revision
    if cfg.layer is not None:
        sae.cfg.layer_requested = cfg.layer
        sae.cfg.layer = cfg.layer
        if cfg.model:
            from saescope.core.backbones import load_backbone

            sae.cfg.layer = load_backbone(cfg.model, cfg.revision).resolve_layer(cfg.layer)
    sae.cfg.token_kinds = [k.value for k in parse_kinds(cfg.kinds)]
    folder = save_sae(sae, cfg.out)
    print(f"imported {sae.cfg.name} ({sae.cfg.d_in} -> {sae.cfg.d_sae}) into {folder}")
    return 0
