"""The one interface every vision backbone implements.

A backbone turns PIL images into pixel tensors with *its own* preprocessing, returns the
residual-stream tokens of chosen layers (see :mod:`core.layers` for the layer convention) with a
:class:`~core.tokens.TokenLayout`, and can run "the rest of the model" from layer ``L`` with edited
tokens, which is what steering needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from saescope.core.layers import resolve_layer
from saescope.core.tokens import TokenLayout


@dataclass(frozen=True)
class Preprocess:
    """PIL -> normalised pixels: resize the short side, centre-crop, scale, normalise.

    Implemented with PIL and numpy only so that it works without torchvision.
    """

    crop_size: tuple[int, int]  # (height, width)
    resize_shortest_edge: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.BICUBIC
    rescale: float = 1 / 255

    def _resized(self, image: Image.Image, resample: int) -> Image.Image:
        """Resize the short side, then upscale where needed so the crop fits (no padding)."""
        if self.resize_shortest_edge:
            w, h = image.size
            s = self.resize_shortest_edge / min(w, h)
            new = (max(1, round(w * s)), max(1, round(h * s)))
            if new != image.size:
                image = image.resize(new, resample)
        ch, cw = self.crop_size
        w, h = image.size
        if (w < cw or h < ch) and (w, h) != (cw, ch):
            s = max(cw / w, ch / h)
            image = image.resize((max(cw, round(w * s)), max(ch, round(h * s))), resample)
        return image

    def _centre_crop(self, image: Image.Image) -> Image.Image:
        ch, cw = self.crop_size
        w, h = image.size
        if (w, h) == (cw, ch):
            return image
        left, top = (w - cw) // 2, (h - ch) // 2
        return image.crop((left, top, left + cw, top + ch))

    def crop(self, image: Image.Image) -> Image.Image:
        """The RGB crop the model sees: resize the short side, then centre-crop.

        Heat-maps are drawn on this crop, so it is the one place that defines it.
        """
        return self._centre_crop(self._resized(image.convert("RGB"), self.resample))

    def crop_mask(self, mask: np.ndarray) -> np.ndarray:
        """A per-pixel label map [H, W] cut exactly like :meth:`crop` cuts its image
        (nearest-neighbour, so labels stay labels); segmentation probes train on it."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"a label mask must be 2-D [H, W], got shape {mask.shape}")
        if mask.min(initial=0) < 0 or mask.max(initial=0) > np.iinfo(np.int32).max:
            raise ValueError("mask labels must be non-negative int32 values")
        im = Image.fromarray(mask.astype(np.int32))  # mode "I"
        return np.asarray(self._centre_crop(self._resized(im, Image.NEAREST)), dtype=np.int64)

    def image_to_array(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 [3, H, W], normalised."""
        image = self.crop(image)
        arr = np.asarray(image, dtype=np.float32) * self.rescale
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        return torch.from_numpy(np.stack([self.image_to_array(im) for im in images]))

    def to_dict(self) -> dict:
        return {
            "crop_size": list(self.crop_size),
            "resize_shortest_edge": self.resize_shortest_edge,
            "mean": list(self.mean),
            "std": list(self.std),
            "resample": int(self.resample),
            "rescale": self.rescale,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Inverse of :meth:`to_dict` (manifests record the preprocessing this way)."""
        return cls(
            crop_size=tuple(d["crop_size"]),
            resize_shortest_edge=d.get("resize_shortest_edge"),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            resample=int(d.get("resample", 3)),
            rescale=float(d.get("rescale", 1 / 255)),
        )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class BackboneOutput:
    """Residual-stream tokens of the requested layers, keyed by *resolved* layer index."""

    tokens: dict[int, torch.Tensor]  # layer -> [B, T, D]
    layout: TokenLayout
    extras: dict = field(default_factory=dict)


class Backbone(torch.nn.Module, ABC):
    """A frozen vision transformer behind one interface.

    Subclasses set ``model_id``, ``revision``, ``n_layers``, ``d_model``, ``patch_size``,
    ``preprocess`` and implement :meth:`embed`, :meth:`run_blocks` and :meth:`final_norm`.
    """

    model_id: str
    revision: str | None
    n_layers: int
    d_model: int
    patch_size: int
    n_registers: int = 0
    preprocess: Preprocess
    family: str = "vit"
    display_name: str = ""

    # -- to implement -----------------------------------------------------------------------
    @abstractmethod
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] -> the sequence entering block 0, [B, T, D]."""

    @abstractmethod
    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Run transformer block ``index`` (0-based) on ``hidden`` [B, T, D]."""

    @abstractmethod
    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's final normalisation applied to the last block's output."""

    # -- shared behaviour -------------------------------------------------------------------
    def resolve_layer(self, layer: int) -> int:
        return resolve_layer(layer, self.n_layers)

    def layout_for(self, pixel_values: torch.Tensor) -> TokenLayout:
        h, w = pixel_values.shape[-2:]
        return TokenLayout(1, self.n_registers, (h // self.patch_size, w // self.patch_size))

    @torch.inference_mode()
    def forward_layers(self, pixel_values: torch.Tensor, layers: Sequence[int]) -> BackboneOutput:
        """Tokens at each requested layer; stops after the deepest one (no wasted blocks)."""
        wanted = sorted({self.resolve_layer(layer) for layer in layers})
        if not wanted:
            raise ValueError("forward_layers needs at least one layer")
        pixel_values = pixel_values.to(self.device, self.dtype)
        hidden = self.embed(pixel_values)
        out: dict[int, torch.Tensor] = {}
        for i in range(wanted[-1] + 1):
            hidden = self.run_block(i, hidden)
            if i in wanted:
                out[i] = hidden
        return BackboneOutput(out, self.layout_for(pixel_values))

    def run_from(self, layer: int, hidden: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Run blocks ``layer + 1`` .. end on ``hidden`` (the output of block ``layer``).

        Returns the final tokens, after the model's final norm when ``normalize``.
        Not wrapped in inference_mode so callers may differentiate through it.
        """
        start = self.resolve_layer(layer) + 1
        for i in range(start, self.n_layers):
            hidden = self.run_block(i, hidden)
        return self.final_norm(hidden) if normalize else hidden

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Full forward: final normalised tokens [B, T, D]."""
        pixel_values = pixel_values.to(self.device, self.dtype)
        hidden = self.embed(pixel_values)
        for i in range(self.n_layers):
            hidden = self.run_block(i, hidden)
        return self.final_norm(hidden)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def describe(self) -> dict:
        """Identity of this backbone, recorded in every artefact made from it."""
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "family": self.family,
            "display_name": self.display_name or self.model_id,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "patch_size": self.patch_size,
            "n_registers": self.n_registers,
            "preprocess": self.preprocess.to_dict(),
        }
