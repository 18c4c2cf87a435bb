"""Search by example: which SAE features fire on the patches a user highlights, and where else.

The pipeline of the seed paper's demo, with the project's conventions:
image -> ``backbone.preprocess`` -> ``forward_layers`` at the SAE's layer -> the patch tokens ->
SAE codes per patch -> summed over the highlighted patches -> top features -> their exemplars.

Patches are addressed on the backbone's patch grid, i.e. on the crop the model saw
(:func:`core.heatmap.crop_for_preprocess`); :func:`patch_mask_from_box` converts a box drawn on
that crop into patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from saescope.core.sae import SAE, ShapeMismatch
from saescope.core.sae_io import check_compatible
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds

Patches = Sequence[tuple[int, int]] | np.ndarray | torch.Tensor | None


class PatchSelectionError(ValueError):
    """Highlighted patches that do not fit the patch grid."""


def _sae_layer(backbone, sae: SAE) -> int:
    cfg = sae.cfg
    layer = cfg.layer if cfg.layer is not None else cfg.layer_requested
    if layer is None:
        raise ShapeMismatch(f"SAE {cfg.name} does not record the layer it was trained on")
    try:
        return backbone.resolve_layer(layer)
    except ValueError as err:
        raise ShapeMismatch(
            f"SAE {cfg.name} was trained on layer {layer}, which "
            f"{backbone.model_id} does not have: {err}"
        ) from err


def check_backbone_sae(backbone, sae: SAE) -> int:
    """Raise a clear :class:`ShapeMismatch` unless ``sae`` fits ``backbone``; returns the layer."""
    layer = _sae_layer(backbone, sae)
    check_compatible(sae, backbone.model_id, layer, backbone.d_model)
    if TokenKind.PATCH not in parse_kinds(sae.cfg.token_kinds):
        raise ShapeMismatch(
            f"SAE {sae.cfg.name} was trained on {sae.cfg.token_kinds} tokens, "
            "not patches: it cannot map patches"
        )
    return layer


@torch.inference_mode()
def patch_codes(backbone, sae: SAE, image: Image.Image) -> tuple[torch.Tensor, TokenLayout]:
    """SAE codes of every patch token of ``image``: ``[n_patches, d_sae]`` (row-major grid)."""
    layer = check_backbone_sae(backbone, sae)
    pixels = backbone.preprocess([image.convert("RGB")])
    out = backbone.forward_layers(pixels, [layer])
    tokens = out.layout.select(out.tokens[layer][0], [TokenKind.PATCH]).float()
    return sae.encode(tokens), out.layout


def patch_mask(grid: tuple[int, int], patches: Patches) -> torch.Tensor:
    """A boolean ``[rows, cols]`` mask from (row, col) pairs, a boolean mask, or None (all).

    Clear errors for patches outside the grid, masks of the wrong shape and empty selections.
    """
    rows, cols = grid
    if patches is None:
        return torch.ones(rows, cols, dtype=torch.bool)
    if isinstance(patches, torch.Tensor):
        patches = patches.detach().cpu().numpy()
    arr = np.asarray(patches)
    if arr.dtype == bool:
        if arr.shape != (rows, cols):
            raise PatchSelectionError(
                f"patch mask has shape {arr.shape}, the patch grid is {rows}x{cols}"
            )
        mask = torch.from_numpy(arr.copy())
    else:
        if arr.size == 0:
            raise PatchSelectionError("no patches selected")
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise PatchSelectionError(
                "patches must be (row, col) integer pairs or a boolean "
                f"[rows, cols] mask, got an array of shape {arr.shape} "
                f"and dtype {arr.dtype}"
            )
        bad = (arr[:, 0] < 0) | (arr[:, 0] >= rows) | (arr[:, 1] < 0) | (arr[:, 1] >= cols)
        if bad.any():
            r, c = (int(v) for v in arr[bad][0])
            raise PatchSelectionError(
                f"patch ({r}, {c}) is outside the {rows}x{cols} grid "
                f"(rows 0..{rows - 1}, cols 0..{cols - 1})"
            )
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        mask[torch.from_numpy(arr[:, 0]), torch.from_numpy(arr[:, 1])] = True
    if not mask.any():
        raise PatchSelectionError("no patches selected")
    return mask


def patch_mask_from_box(
    grid: tuple[int, int], size: tuple[int, int], box: tuple[float, float, float, float]
) -> np.ndarray:
    """Patches overlapping ``box`` = (left, top, right, bottom) in pixels of an image of ``size``
    (width, height) that the grid covers, e.g. the model's crop."""
    rows, cols = grid
    w, h = size
    left, top, right, bottom = box
    if not (right > left and bottom > top):
        raise PatchSelectionError(f"empty box {box}")
    ys, xs = np.arange(rows) * h / rows, np.arange(cols) * w / cols
    in_r = (ys + h / rows > top) & (ys < bottom)
    in_c = (xs + w / cols > left) & (xs < right)
    mask = in_r[:, None] & in_c[None, :]
    if not mask.any():
        raise PatchSelectionError(f"box {box} covers no patch of a {w}x{h} image")
    return mask


def _top(summed: torch.Tensor, n: int) -> list[tuple[int, float]]:
    n = min(int(n), summed.numel())
    vals, idx = summed.topk(n)
    return [(int(i), float(v)) for v, i in zip(vals, idx) if v > 0]


def top_features_for_patches(
    backbone, sae: SAE, image: Image.Image, patches: Patches = None, n: int = 10
) -> list[tuple[int, float]]:
    """The ``n`` features with the largest activation summed over ``patches`` (None = all).

    Features that do not fire on the selection are left out, so the list may be shorter.
    """
    codes, layout = patch_codes(backbone, sae, image)
    mask = patch_mask(layout.grid, patches).reshape(-1)
    return _top(codes[mask].sum(0), n)


def top_features_of_codes(
    codes: torch.Tensor, mask: np.ndarray | None, n: int = 12
) -> list[tuple[int, float, int]]:
    """Top features of a patch selection from codes already computed (the apps cache them):
    ``[(feature, mean activation over the selection, number of selected patches where it
    fires)]``, strongest first; features silent on the selection are left out.

    ``codes [n_patches, d_sae]``; ``mask`` a boolean ``[n_patches]`` (None: all patches).
    """
    sel = codes if mask is None else codes[torch.as_tensor(np.asarray(mask, bool))]
    if sel.shape[0] == 0:
        return []
    score = sel.mean(0)
    fired = (sel > 0).sum(0)
    k = min(n, int((score > 0).sum()))
    if k == 0:
        return []
    vals, idx = score.topk(k)
    return [(int(i), float(v), int(fired[i])) for i, v in zip(idx, vals)]


def feature_map(backbone, sae: SAE, image: Image.Image, feature: int) -> np.ndarray:
    """One feature's activation on every patch of ``image``: ``[rows, cols]`` float32."""
    f = sae.check_feature(feature)
    codes, layout = patch_codes(backbone, sae, image)
    return codes[:, f].reshape(layout.grid).numpy().astype(np.float32)


@dataclass
class FeatureMatch:
    """One feature found by example: its score on the selection, its map, its exemplars."""

    feature: int
    score: float  # activation summed over the highlighted patches
    query_map: np.ndarray  # [rows, cols] activation on the query image
    exemplars: list  # core.exemplars.Exemplar tuples (image_index, image_id, value, patch_map)
    stats: dict[str, Any] = field(default_factory=dict)


def _check_exemplars(sae: SAE, exemplars) -> None:
    cfg = (exemplars.meta.get("sae") or {}).get("config") or {}
    problems = []
    if exemplars.n_features != sae.cfg.d_sae:
        problems.append(f"{exemplars.n_features} features vs the SAE's {sae.cfg.d_sae}")
    for key in ("model_id", "layer", "d_in", "architecture"):
        if key in cfg and cfg[key] != getattr(sae.cfg, key):
            problems.append(f"{key} {cfg[key]!r} vs the SAE's {getattr(sae.cfg, key)!r}")
    if problems:
        raise ShapeMismatch("these exemplars were built for another SAE: " + "; ".join(problems))


def search_by_example(
    backbone,
    sae: SAE,
    exemplars,
    image: Image.Image,
    patches: Patches = None,
    n_features: int = 5,
    n_exemplars: int = 8,
) -> list[FeatureMatch]:
    """Top features of the highlighted patches, each with its map on ``image`` and its exemplars.

    ``exemplars`` is a :class:`saescope.core.exemplars.Exemplars` built for this SAE (checked).
    """
    _check_exemplars(sae, exemplars)
    codes, layout = patch_codes(backbone, sae, image)
    if tuple(layout.grid) != tuple(exemplars.grid):
        raise ShapeMismatch(
            f"the image gives a {layout.grid} patch grid, the exemplars have {exemplars.grid}"
        )
    mask = patch_mask(layout.grid, patches).reshape(-1)
    out = []
    for f, score in _top(codes[mask].sum(0), n_features):
        out.append(
            FeatureMatch(
                f,
                score,
                codes[:, f].reshape(layout.grid).numpy().copy(),
                exemplars.top(f, n_exemplars),
                exemplars.feature_stats(f),
            )
        )
    return out


__all__ = [
    "patch_codes",
    "patch_mask",
    "patch_mask_from_box",
    "top_features_for_patches",
    "top_features_of_codes",
    "feature_map",
    "search_by_example",
    "FeatureMatch",
    "PatchSelectionError",
    "check_backbone_sae",
]
