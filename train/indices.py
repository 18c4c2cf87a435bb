"""Search indices and feature matches for the apps: ``saescope index``.

Three things are built from an SAE and its activation store:

1. **Patch index** ("find patches in the dataset like the ones I highlighted"): one vector per
   stored patch token, id ``image_index * n_patches + patch`` (:func:`core.index.patch_id`).
   The vectors are the *model activations, SAE-normalised* (``sae.normalize``: the dataset mean is
   subtracted) and compared by cosine. Why not the SAE codes: they are ``d_sae`` wide (16-64x the
   model width), sparse and unstable at the top-k boundary, so nearest neighbours in code space
   are expensive and brittle; a projection of the codes back through ``W_dec`` is just the SAE's
   reconstruction, a lossy copy of the activation. The activation itself carries everything the
   codes do plus the SAE's residual, at the model's width (384 for DINOv2-S). Subtracting the
   mean matters: ViT activations share a large common component (and outlier dimensions), so raw
   cosines are all near 1. A query is the mean of the highlighted patches' unit vectors
   (:func:`patch_query`), so every highlighted patch weighs the same.
2. **Decoder index** (:func:`feature_index`): the unit-norm rows of ``W_dec`` under cosine, ids =
   feature ids: "features related to this one" within one SAE; :func:`cross_feature_matches` does
   the same across two SAEs *of the same activation space* (same model, same width).
3. **Activation correlation** (:func:`activation_correlation`): across models, decoder directions
   live in different spaces and their cosine means nothing, so features are matched by the
   Pearson correlation of their activations over the same images: per patch when the two patch
   grids agree, else per image (max over the image's tokens). Streaming, float64 accumulators,
   the cross-product matrix in row blocks that fit ``max_matrix_bytes``; only the top-k matches
   per feature are kept, both ways.

Files written to ``--out`` (all loadable without the store or the SAE):

- ``patches.faiss`` + ``patches.faiss.json`` (:class:`core.index.VectorIndex`) and
  ``patches.images.json`` (image ids and labels in store order, patch grid, id scheme);
- ``features.faiss`` + ``features.faiss.json``;
- ``matches.safetensors`` (activation correlation, A = ``--sae``, B = ``--other-sae``) and, when the
  two SAEs share an activation space, ``decoder_matches.safetensors``;
- ``index_config.json`` (the resolved command line).

The formats and their readers (:class:`~saescope.core.matches.Matches`,
:func:`~saescope.core.matches.related_features`) are :mod:`saescope.core.matches`.

The patch index is :mod:`saescope.train.indices_patches`, the decoder index and the feature
matches :mod:`saescope.train.indices_matches`; this module is the CLI step.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from saescope.core.index import DEFAULT_TARGET_RECALL, INDEX_TYPES, VectorIndex
from saescope.core.matches import DECODER_MATCHES_FILE, FEATURES_FILE, MATCHES_FILE
from saescope.core.store import ActivationStore
from saescope.train.cli import OutOption, ProgressOption, add_step, announce_config, option
from saescope.train.indices_common import check_pair
from saescope.train.indices_matches import (
    activation_correlation,
    cross_feature_matches,
    decoder_comparable,
    feature_index,
    pair_images,
)
from saescope.train.indices_patches import (
    PATCH_REPRESENTATION,
    patch_index,
    patch_query,
    patch_vectors,
    save_patch_index,
)


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class IndexConfig(ProgressOption, OutOption):
    """``saescope index``: an SAE and its store, optionally a second pair to match against.
    OUT is e.g. a bundle folder."""

    sae: str
    """SAE folder (or Hub id) whose features to index"""
    store: str
    """activation store the SAE was trained on"""
    other_sae: str | None = None
    """second SAE to match features against"""
    other_store: str | None = None
    """the second SAE's store (same images)"""
    k: int = 10
    """matches kept per feature"""
    index_type: str = option("auto", choices=lambda: ["auto", *INDEX_TYPES])
    """patch index type (auto: by size, flat, ivf or ivfpq)"""
    max_images: int | None = None
    """index only the first N images of the store"""
    corr_images: int = 2000
    """shared images used for the activation correlation"""
    corr_mode: Literal["auto", "patch", "image"] = "auto"
    """correlate per patch (equal grids) or per image (max-pooled)"""
    target_recall: float = DEFAULT_TARGET_RECALL
    """recall@10 the approximate index is tuned to"""
    threads: int | None = None
    """faiss threads (default: CPUs, <= 8)"""
    skip_patches: bool = False
    """do not build the patch index"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_step(
        subparsers,
        "index",
        IndexConfig,
        run,
        help="build FAISS search indices (patches, decoder directions) and feature matches",
        description="Build the search indices the apps load from a bundle: a patch index over "
        "the store\n(SAE-normalised activations, cosine), a decoder-direction index over the "
        "SAE, and with\n--other-sae/--other-store the top-k feature matches between the two "
        "SAEs (activation\ncorrelation over shared images; decoder cosine too when both SAEs "
        "live in one activation\nspace).",
    )


def run(cfg: IndexConfig) -> int:
    from saescope.core.sae_io import from_pretrained

    if (cfg.other_sae is None) != (cfg.other_store is None):
        raise ValueError("--other-sae and --other-store go together")
    if cfg.k < 1:
        raise ValueError("--k must be >= 1")
    out = Path(cfg.out)
    announce_config(cfg, "index", out)
    sae, store = from_pretrained(cfg.sae), ActivationStore(cfg.store)
    check_pair(sae, store)
    summary: dict[str, Any] = {}
    if not cfg.skip_patches:
        vi = patch_index(
            sae,
            store,
            cfg.max_images,
            cfg.index_type,
            cfg.target_recall,
            threads=cfg.threads,
            progress=cfg.progress,
        )
        save_patch_index(vi, store, out)
        summary["patches"] = _describe(vi)
    fi = feature_index(sae, threads=cfg.threads)
    fi.save(out / FEATURES_FILE)
    summary["features"] = _describe(fi)
    if cfg.other_sae:
        other, other_store = from_pretrained(cfg.other_sae), ActivationStore(cfg.other_store)
        m = activation_correlation(
            sae,
            store,
            other,
            other_store,
            cfg.corr_images,
            cfg.k,
            cfg.corr_mode,
            progress=cfg.progress,
        )
        m.save(out / MATCHES_FILE)
        summary["matches"] = {k: m.meta[k] for k in ("mode", "n_images", "n_samples", "seconds")}
        if decoder_comparable(sae, other) is None:
            cross_feature_matches(sae, other, cfg.k).save(out / DECODER_MATCHES_FILE)
            summary["decoder_matches"] = True
    for name, info in summary.items():
        print(f"[index] {name}: {info}", file=sys.stderr)
    print(out)
    return 0


def _describe(vi: VectorIndex) -> dict[str, Any]:
    return {
        "n": vi.n,
        "d": vi.d,
        "index_type": vi.index_type,
        "params": {k: v for k, v in vi.params.items()},
        "recall_at_10": vi.tuning.get("recall_at_k"),
        "build_seconds": vi.tuning.get("build_seconds"),
    }


__all__ = [
    "PATCH_REPRESENTATION",
    "patch_vectors",
    "patch_query",
    "patch_index",
    "save_patch_index",
    "feature_index",
    "decoder_comparable",
    "cross_feature_matches",
    "pair_images",
    "activation_correlation",
    "add_parser",
    "run",
    "IndexConfig",
]
