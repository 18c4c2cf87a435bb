"""The head interface, its file format and the class registry every saved head is rebuilt from.

Every head is ``<stem>.safetensors`` (weights) + ``<stem>.json`` (class, config, metrics): no
pickle, and :func:`build_head` rebuilds any registered class from its config. Why a module of
its own: probe heads (:mod:`saescope.core.probes`) and the saliency head both build on it, and
the loader that knows every class (:func:`saescope.core.heads.load_head`) sits above them all.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from saescope.core import formats
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
        """Write ``<stem>.safetensors`` and ``<stem>.json`` into ``folder``; return the JSON."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / f"{stem}.safetensors"), metadata={"format": "pt"})
        meta = {
            "format_version": 1,
            "class": type(self).__name__,
            **self.describe(),
            "config": self.config,
            **(extra or {}),
        }
        (folder / f"{stem}.json").write_text(json.dumps(meta, indent=2))
        return folder / f"{stem}.json"

    @classmethod
    def load(
        cls,
        folder: str | Path,
        stem: str = "head",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Head:
        """Load a head saved by :meth:`save` (``cls`` may be :class:`Head` itself)."""
        return build_head(
            folder, stem, device=device, dtype=dtype, expect=None if cls is Head else cls
        )


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
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HeadError(f"{path} is not valid JSON: {err}") from err
    formats.HEAD.check(meta, path, error=HeadError, check_name=False, default_version=1)
    return meta


def build_head(
    folder: str | Path,
    stem: str = "head",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    expect: type[Head] | None = None,
) -> Head:
    """Rebuild a saved head of a registered class, frozen, in eval mode.

    Only classes already registered are known; :func:`saescope.core.heads.load_head` registers
    every built-in one first.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_head_meta(folder, stem)
    cls = HEAD_CLASSES.get(meta.get("class", ""))
    if cls is None:
        raise HeadError(
            f"{folder / (stem + '.json')}: unknown head class {meta.get('class')!r} "
            f"(known: {', '.join(sorted(HEAD_CLASSES))})"
        )
    if expect is not None and not issubclass(cls, expect):
        raise HeadError(
            f"{folder / (stem + '.json')} holds a {cls.__name__}, not a {expect.__name__}"
        )
    head = cls(**meta["config"])
    weights = folder / f"{stem}.safetensors"
    if not weights.is_file():
        raise HeadError(f"no weights for head {stem!r} in {folder} (missing {weights.name})")
    try:
        head.load_state_dict(load_file(str(weights)))
    except Exception as err:  # truncated file, or weights of another shape
        raise HeadError(
            f"{weights} does not hold the weights of this {cls.__name__}: {err}"
        ) from err
    head.meta = meta
    return head.to(device=device, dtype=dtype).eval().requires_grad_(False)


def patch_grid(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """[B, T, D] tokens -> [B, D, rows, cols] feature map of the patch tokens."""
    patches = layout.select(tokens, [TokenKind.PATCH])
    rows, cols = layout.grid
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], rows, cols)


__all__ = [
    "Head",
    "HEAD_KINDS",
    "HEAD_CLASSES",
    "HeadError",
    "build_head",
    "patch_grid",
    "read_head_meta",
    "register_head",
]
