"""Optional open_clip backend (``open_clip:<arch>[/<pretrained>]`` or ``hf-hub:<repo>`` ids).

open_clip needs torchvision, which saescope does not require, so it is imported only inside
:func:`load_open_clip_backbone`; :class:`OpenClipBackbone` itself only touches the attributes of
open_clip's ``VisionTransformer`` (conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks, ln_post) and works on any module shaped like it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from saescope.core.backbones.base import CLIP_MEAN, CLIP_STD, Backbone, Preprocess

INSTALL_HINT = (
    "open_clip backend needs open_clip_torch and a working torchvision: {err}. "
    "Install both (`pip install open_clip_torch torchvision`) or use a transformers model id "
    "(e.g. a Hub CLIP checkpoint) instead."
)


def import_open_clip() -> Any:
    """Import open_clip; a failure (missing package, broken torchvision) is a clear ImportError."""
    try:
        import open_clip  # noqa: PLC0415 -- optional dependency, imported lazily on purpose
    except Exception as err:  # ImportError, or RuntimeError from a torchvision/torch mismatch
        raise ImportError(INSTALL_HINT.format(err=f"{type(err).__name__}: {err}")) from err
    return open_clip


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


class OpenClipBackbone(Backbone):
    """open_clip ``VisionTransformer`` run block by block (layer L = output of resblock L)."""

    family = "clip"

    def __init__(self, visual: torch.nn.Module, model_id: str, revision: str | None = None) -> None:
        super().__init__()
        transformer = getattr(visual, "transformer", None)
        if (
            transformer is None
            or not hasattr(transformer, "resblocks")
            or not hasattr(visual, "conv1")
        ):
            raise ValueError(
                f"{model_id}: only open_clip VisionTransformer towers are supported "
                f"(got {type(visual).__name__}, e.g. a timm tower)"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError(f"{model_id}: attentional-pooling towers (CoCa) are not supported")
        self.visual = visual
        self.model_id = model_id
        self.revision = revision
        self.n_layers = len(transformer.resblocks)
        self.d_model = int(visual.positional_embedding.shape[-1])
        self.patch_size = _pair(visual.conv1.kernel_size)[0]
        self.native_grid = _pair(getattr(visual, "grid_size", None) or self._grid_from_positions())
        self.preprocess = self._preprocess_of(visual)
        self.display_name = f"CLIP ({model_id}, open_clip)"

    def _grid_from_positions(self) -> int:
        return int(round((self.visual.positional_embedding.shape[0] - 1) ** 0.5))

    @staticmethod
    def _preprocess_of(visual: torch.nn.Module) -> Preprocess:
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = _pair(cfg.get("size", getattr(visual, "image_size", 224)))
        mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or CLIP_MEAN)
        std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or CLIP_STD)
        return Preprocess(size, min(size), mean, std)  # type: ignore[arg-type]

    def _positions(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """[1 + rows*cols, D] position table, bicubically resized when the grid differs."""
        pos = self.visual.positional_embedding
        if grid == self.native_grid:
            return pos.to(dtype)
        cls_pos, patch_pos = pos[:1], pos[1:]
        rows, cols = self.native_grid
        patch_pos = patch_pos.reshape(1, rows, cols, -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
        return torch.cat([cls_pos.float(), patch_pos]).to(dtype)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(pixel_values.to(v.conv1.weight.dtype))  # [B, D, rows, cols]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self._positions(grid, x.dtype)
        return v.ln_pre(x)  # patch_dropout is the identity in eval mode

    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        block = self.visual.transformer.resblocks[index]
        # older open_clip runs blocks sequence-first (nn.MultiheadAttention(batch_first=False))
        batch_first = bool(getattr(getattr(block, "attn", None), "batch_first", False))
        if batch_first:
            return block(hidden)
        return block(hidden.transpose(0, 1)).transpose(0, 1)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(hidden)


def parse_open_clip_id(model_id: str, revision: str | None = None) -> tuple[str, str | None]:
    """``open_clip:ViT-B-16/openai`` -> ("ViT-B-16", "openai"); ``hf-hub:org/repo`` -> (id, None).

    Why: both spellings name a model; only the first names its pretrained weights.
    """
    if model_id.startswith("hf-hub:"):
        return model_id, None
    name = model_id.removeprefix("open_clip:")
    arch, _, tag = name.partition("/")
    if not arch:
        raise ValueError(f"bad open_clip id {model_id!r}: expected open_clip:<arch>[/<pretrained>]")
    return arch, tag or revision


def load_open_clip_backbone(
    model_id: str,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> OpenClipBackbone:
    """Create the open_clip model and wrap its vision tower (text tower dropped)."""
    open_clip = import_open_clip()
    name, pretrained = parse_open_clip_id(model_id, revision)
    model = open_clip.create_model(name, pretrained=pretrained, device=device)
    visual = model.visual.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return OpenClipBackbone(visual, model_id, pretrained or revision)


__all__ = ["OpenClipBackbone", "load_open_clip_backbone", "import_open_clip", "parse_open_clip_id"]
