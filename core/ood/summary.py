"""Per-image summaries every OOD scorer reads, computed in one pass over an image set.

Why one pass: the SAE codes, per-image FVU, mean-pooled layer tokens and final CLS of an image set
are computed once by :func:`summarize`, so that fitting and scoring a dozen scorers never re-runs
the SAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class ImageSummary:
    """What the scorers read about a set of images (one row per image)."""

    fvu: np.ndarray | None = None  # [N] per-image FVU of the SAE on the patch tokens
    code_mean: np.ndarray | None = None  # [N, d_sae] codes averaged over patches
    fire_count: np.ndarray | None = None  # [N, d_sae] uint16: patches where each feature fired
    raw_mean: np.ndarray | None = None  # [N, d] mean-pooled layer-L patch tokens
    cls_final: np.ndarray | None = None  # [N, d] final normalised CLS token
    labels: np.ndarray | None = None  # [N] int64, -1 = unknown
    label_names: list[str] | None = None
    n_patches: int = 0
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        for a in (self.fvu, self.raw_mean, self.cls_final, self.code_mean):
            if a is not None:
                return len(a)
        return 0

    def field(self, name: str) -> np.ndarray:
        arr = getattr(self, name)
        if arr is None:
            raise ValueError(f"these image summaries carry no {name!r} (computed without it)")
        return arr

    def subset(self, rows: Any) -> ImageSummary:
        rows = np.asarray(rows)

        def pick(a: Any) -> Any:
            return None if a is None else a[rows]

        ids = [self.ids[i] for i in np.arange(len(self))[rows]] if self.ids else []
        return ImageSummary(
            pick(self.fvu),
            pick(self.code_mean),
            pick(self.fire_count),
            pick(self.raw_mean),
            pick(self.cls_final),
            pick(self.labels),
            self.label_names,
            self.n_patches,
            ids,
        )

    @classmethod
    def concat(cls, parts: Sequence[ImageSummary]) -> ImageSummary:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()

        def cat(name):
            arrs = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrs) else np.concatenate(arrs)

        return cls(
            cat("fvu"),
            cat("code_mean"),
            cat("fire_count"),
            cat("raw_mean"),
            cat("cls_final"),
            cat("labels"),
            parts[0].label_names,
            parts[0].n_patches,
            [i for p in parts for i in p.ids],
        )


@torch.inference_mode()
def summarize(
    sae,
    patch_tokens: torch.Tensor,
    *,
    final_cls: torch.Tensor | None = None,
    labels: Sequence[int | None] | None = None,
    label_names: list[str] | None = None,
    ids: Sequence[str] | None = None,
    chunk_images: int = 16,
) -> ImageSummary:
    """Per-image summaries of layer-L patch tokens ``[B, P, d]`` (raw units) through ``sae``.

    ``sae`` may be ``None`` (raw baselines only). The FVU is the one the browser shows: squared
    reconstruction error over the image's own patch variance.
    """
    x_all = patch_tokens.float()
    if x_all.ndim != 3:
        raise ValueError(f"patch tokens must be [B, P, d], got {tuple(x_all.shape)}")
    b, p, d = x_all.shape
    fvu, means, fires = [], [], []
    if sae is not None:
        for a in range(0, b, chunk_images):
            x = x_all[a : a + chunk_images]
            flat = x.reshape(-1, d)
            codes = sae.encode(flat)
            err = (flat - sae.decode(codes)).pow(2).sum(-1).view(len(x), p).sum(1)
            var = (x - x.mean(1, keepdim=True)).pow(2).sum((1, 2)).clamp_min(1e-12)
            codes = codes.view(len(x), p, -1)
            fvu.append((err / var).double().numpy())
            means.append(codes.mean(1).numpy().astype(np.float32))
            fires.append((codes > 0).sum(1).numpy().astype(np.uint16))
    lab = None
    if labels is not None:
        lab = np.array([-1 if v is None else int(v) for v in labels], np.int64)
    return ImageSummary(
        fvu=np.concatenate(fvu) if fvu else None,
        code_mean=np.concatenate(means) if means else None,
        fire_count=np.concatenate(fires) if fires else None,
        raw_mean=x_all.mean(1).double().numpy().astype(np.float32),
        cls_final=None if final_cls is None else final_cls.float().reshape(b, -1).numpy(),
        labels=lab,
        label_names=label_names,
        n_patches=p,
        ids=list(ids or []),
    )


__all__ = ["ImageSummary", "summarize"]
