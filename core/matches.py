"""Index-folder formats: cross-model feature matches, the patch-image table, and file names.

Why in core: bundles and apps read these; only ``saescope.train.indices`` builds them. Files an
index folder holds (all loadable without the store or the SAE):

- ``patches.faiss`` + sidecar (:class:`~saescope.core.index.VectorIndex`) and
  ``patches.images.json`` (image ids and labels in store order, patch grid, id scheme);
- ``features.faiss`` + sidecar (decoder directions; :func:`related_features` searches it);
- ``matches.safetensors`` / ``decoder_matches.safetensors`` (:class:`Matches`): tensors
  ``a_to_b.indices`` [F_a, k] int64, ``a_to_b.scores`` [F_a, k] float32, ``b_to_a.*`` likewise,
  metadata ``format``, ``format_version``, ``method``, ``k`` and ``meta`` (JSON).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from saescope.core import formats
from saescope.core.fileio import atomic_path
from saescope.core.index import VectorIndex
from saescope.core.sae import SAE

PATCHES_FILE = "patches.faiss"
PATCH_IMAGES_FILE = "patches.images.json"
FEATURES_FILE = "features.faiss"
MATCHES_FILE = "matches.safetensors"
DECODER_MATCHES_FILE = "decoder_matches.safetensors"
MATCHES_FORMAT = formats.FEATURE_MATCHES.name
MATCHES_FORMAT_VERSION = formats.FEATURE_MATCHES.version


def related_features(
    index: VectorIndex, sae: SAE, feature: int, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """``(feature ids [k], cosines [k])`` of the decoder directions nearest to ``feature``'s.

    The feature itself comes first (cosine 1).
    """
    f = sae.check_feature(feature)
    scores, ids = index.search(sae.W_dec[f].detach().float().numpy()[None], k)
    return ids[0], scores[0]


def read_patch_images(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked ``patches.images.json`` of an index folder (ids and labels in store order)."""
    path = Path(folder) / PATCH_IMAGES_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is missing or unreadable ({err})") from err
    formats.PATCH_IMAGES.check(info, path)
    return info


@dataclass
class Matches:
    """Top-k matches between the features of two SAEs, both ways, with scores (descending)."""

    a_to_b_indices: torch.Tensor  # [F_a, k] int64: features of B matching each feature of A
    a_to_b_scores: torch.Tensor  # [F_a, k] float32
    b_to_a_indices: torch.Tensor  # [F_b, k'] int64
    b_to_a_scores: torch.Tensor  # [F_b, k'] float32
    method: str  # "decoder_cosine" or "activation_correlation"
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "a_to_b.indices": self.a_to_b_indices.to(torch.int64).contiguous(),
            "a_to_b.scores": self.a_to_b_scores.to(torch.float32).contiguous(),
            "b_to_a.indices": self.b_to_a_indices.to(torch.int64).contiguous(),
            "b_to_a.scores": self.b_to_a_scores.to(torch.float32).contiguous(),
        }
        metadata = {
            "format": MATCHES_FORMAT,
            "format_version": str(MATCHES_FORMAT_VERSION),
            "method": self.method,
            "k": str(self.a_to_b_indices.shape[1]),
            "meta": json.dumps(self.meta),
        }
        with atomic_path(path, fsync=False) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Matches:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as fh:
                md = fh.metadata() or {}
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises several types on damaged files
            raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
        if md.get("format") != MATCHES_FORMAT:
            raise ValueError(f"{path} is not a saescope feature-matches file")
        formats.FEATURE_MATCHES.check(
            md, path, check_name=False, default_version=MATCHES_FORMAT_VERSION
        )
        return cls(
            tensors["a_to_b.indices"],
            tensors["a_to_b.scores"],
            tensors["b_to_a.indices"],
            tensors["b_to_a.scores"],
            md.get("method", ""),
            json.loads(md.get("meta", "{}")),
        )


__all__ = [
    "Matches",
    "related_features",
    "read_patch_images",
    "PATCHES_FILE",
    "PATCH_IMAGES_FILE",
    "FEATURES_FILE",
    "MATCHES_FILE",
    "DECODER_MATCHES_FILE",
    "MATCHES_FORMAT",
    "MATCHES_FORMAT_VERSION",
]
