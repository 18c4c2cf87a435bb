"""Vectors as faiss takes them, and the id scheme of patch indices.

Why: every entry point (build, add, search, tuning) accepts numpy or torch input of any float
type; the checks that it is ``[N, d]``, finite and of the index's width live here once.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_f32(x: Any, d: int | None = None, what: str = "vectors") -> np.ndarray:
    """Array-like (numpy or torch) -> C-contiguous float32 ``[N, d]``."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{what} must be [N, d], got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{what} have width {x.shape[1]}, the index holds width {d}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(x)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, eps), dtype=np.float32)


def patch_id(image_index: Any, patch: Any, n_patches: int) -> Any:
    """The id scheme of patch indices: ``image_index * n_patches + patch``."""
    return np.asarray(image_index, np.int64) * int(n_patches) + np.asarray(patch, np.int64)


def split_patch_id(ids: Any, n_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`patch_id`: ``(image_index, patch)`` arrays."""
    return np.divmod(np.asarray(ids, np.int64), int(n_patches))


__all__ = ["as_f32", "l2_normalize", "patch_id", "split_patch_id"]
