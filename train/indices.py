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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from saescope.core import formats
from saescope.core.fileio import atomic_write_text
from saescope.core.index import (
    DEFAULT_TARGET_RECALL,
    INDEX_TYPES,
    IndexBuilder,
    VectorIndex,
    l2_normalize,
    patch_id,
)
from saescope.core.matches import (
    DECODER_MATCHES_FILE,
    FEATURES_FILE,
    MATCHES_FILE,
    PATCH_IMAGES_FILE,
    PATCHES_FILE,
    Matches,
)
from saescope.core.sae import SAE, ShapeMismatch
from saescope.core.store import ActivationStore, StoreError
from saescope.train.cli import OutOption, ProgressOption, add_step, announce_config, option

PATCH_REPRESENTATION = "sae_normalized_activation"


def _bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, file=sys.stderr
    )


def _check_pair(sae: SAE, store: ActivationStore) -> None:
    """Clear error when an SAE was not trained on the store's model, layer or width."""
    cfg = sae.cfg
    if cfg.d_in != store.d_model:
        raise ShapeMismatch(
            f"SAE {cfg.name} expects width {cfg.d_in}, store {store.path} holds "
            f"width {store.d_model}"
        )
    if cfg.model_id and store.model_id and cfg.model_id != store.model_id:
        raise ShapeMismatch(
            f"SAE {cfg.name} was trained on {cfg.model_id!r}, store {store.path} "
            f"holds {store.model_id!r}"
        )
    if cfg.layer is not None and cfg.layer != store.layer:
        raise ShapeMismatch(
            f"SAE {cfg.name} was trained on layer {cfg.layer}, store "
            f"{store.path} holds layer {store.layer}"
        )


def _has_patches(store: ActivationStore) -> bool:
    return any(k.value == "patch" for k in store.kinds) and store.layout.n_patches > 0


# ------------------------------------------------------------------------------ patch index
@torch.no_grad()
def patch_vectors(sae: SAE, tokens: torch.Tensor) -> np.ndarray:
    """Raw patch activations ``[..., d_in]`` -> the patch-index representation, float32 ``[n, d_in]``.

    The one place that defines what the patch index stores (build and query both call it).
    """
    x = torch.as_tensor(tokens, dtype=torch.float32).reshape(-1, sae.cfg.d_in)
    return sae.normalize(x).numpy()


def patch_query(sae: SAE, tokens: torch.Tensor) -> np.ndarray:
    """The query for "patches like these": mean of the highlighted patches' unit vectors ``[1, d]``."""
    v = l2_normalize(patch_vectors(sae, tokens))
    if not len(v):
        raise ValueError("highlight at least one patch to search with")
    return v.mean(0, keepdims=True)


def _sample_patches(
    store: ActivationStore, sae: SAE, n_images: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``min(n, all)`` patch vectors drawn without replacement, with their patch ids."""
    per = store.layout.n_patches
    total = n_images * per
    rng = np.random.default_rng(seed)
    flat = np.arange(total) if n >= total else np.sort(rng.choice(total, n, replace=False))
    images, patches = np.divmod(flat, per)
    out = np.empty((len(flat), store.d_model), np.float32)
    starts = np.flatnonzero(np.r_[True, np.diff(images) != 0])
    for a, b in zip(starts, np.r_[starts[1:], len(flat)]):
        out[a:b] = store.tokens(int(images[a]), kinds="patch").numpy()[patches[a:b]]
    return patch_vectors(sae, torch.from_numpy(out)), flat.astype(np.int64)


def patch_index(
    sae: SAE,
    store: ActivationStore,
    max_images: int | None = None,
    index_type: str = "auto",
    target_recall: float = DEFAULT_TARGET_RECALL,
    batch_images: int = 64,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> VectorIndex:
    """Index every patch token of the first ``max_images`` images of ``store`` (see module doc).

    Streaming: trains on a sample read image by image, then adds the store in batches; memory is
    the index itself plus one batch.
    """
    _check_pair(sae, store)
    if not _has_patches(store):
        raise StoreError(
            f"{store.path} holds no patch tokens ({[k.value for k in store.kinds]}); "
            "extract with --kinds patch to build a patch index"
        )
    n_images = store.n_images if max_images is None else min(store.n_images, int(max_images))
    if n_images <= 0:
        raise StoreError(f"{store.path} holds no images")
    per = store.layout.n_patches
    meta = {
        "representation": PATCH_REPRESENTATION,
        "id_scheme": "image_index * n_patches + patch",
        "n_patches": per,
        "grid": list(store.layout.grid),
        "n_images": n_images,
        "model_id": store.model_id,
        "layer": store.layer,
        "sae": sae.cfg.name,
        "sae_model_id": sae.cfg.model_id,
        "store": str(store.path),
    }
    builder = IndexBuilder(
        sae.cfg.d_in,
        n_images * per,
        metric="cosine",
        index_type=index_type,
        kind="patches",
        target_recall=target_recall,
        seed=seed,
        threads=threads,
        meta=meta,
    )
    sample, sample_ids = _sample_patches(store, sae, n_images, builder.sample_size, seed)
    builder.train(sample, sample_ids)
    del sample
    bar = _bar(n_images, "patch index", "img", progress)
    for start, toks in store.iter_images(batch_images, kinds="patch", stop=n_images):
        b = toks.shape[0]
        ids = patch_id(np.repeat(np.arange(start, start + b), per), np.tile(np.arange(per), b), per)
        builder.add(patch_vectors(sae, toks), ids)
        bar.update(b)
    bar.close()
    return builder.finish()


def save_patch_index(index: VectorIndex, store: ActivationStore, folder: str | os.PathLike) -> Path:
    """Write ``patches.faiss`` (+ sidecar) and ``patches.images.json`` into ``folder``."""
    folder = Path(folder)
    path = index.save(folder / PATCHES_FILE)
    n = int(index.meta.get("n_images", store.n_images))
    info = {
        **formats.PATCH_IMAGES.header(),
        "id_scheme": index.meta.get("id_scheme"),
        "n_patches": store.layout.n_patches,
        "grid": list(store.layout.grid),
        "image_ids": store.image_ids[:n],
        "labels": store.labels[:n],
        "label_names": store.label_names,
    }
    atomic_write_text(folder / PATCH_IMAGES_FILE, json.dumps(info), fsync=False)
    return path


# ------------------------------------------------------------------------------ decoder index
def feature_index(
    sae: SAE,
    index_type: str = "auto",
    threads: int | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
) -> VectorIndex:
    """Cosine index over the decoder rows of ``sae`` (ids = feature ids)."""
    w = sae.W_dec.detach().float().numpy()
    meta = {
        "sae": sae.cfg.name,
        "model_id": sae.cfg.model_id,
        "layer": sae.cfg.layer,
        "d_sae": sae.cfg.d_sae,
        "vectors": "W_dec rows",
    }
    return VectorIndex.build(
        w,
        np.arange(len(w)),
        metric="cosine",
        index_type=index_type,
        kind="decoder",
        threads=threads,
        target_recall=target_recall,
        meta=meta,
    )


def decoder_comparable(sae_a: SAE, sae_b: SAE) -> str | None:
    """``None`` when decoder cosines between the two SAEs mean something, else why not."""
    a, b = sae_a.cfg, sae_b.cfg
    if a.d_in != b.d_in:
        return f"different widths ({a.d_in} vs {b.d_in}): different models"
    if a.model_id and b.model_id and a.model_id != b.model_id:
        return f"different models ({a.model_id!r} vs {b.model_id!r})"
    return None


def cross_feature_matches(
    sae_a: SAE, sae_b: SAE, k: int = 10, index_type: str = "auto", threads: int | None = None
) -> Matches:
    """Top-k decoder-cosine matches between two SAEs of one activation space, both ways."""
    why = decoder_comparable(sae_a, sae_b)
    if why:
        raise ValueError(
            f"decoder cosine between {sae_a.cfg.name} and {sae_b.cfg.name} is "
            f"meaningless: {why}. Match them by activation_correlation (the "
            "index step does so given --other-store)"
        )
    ia, ib = (feature_index(s, index_type, threads) for s in (sae_a, sae_b))
    wa = sae_a.W_dec.detach().float().numpy()
    wb = sae_b.W_dec.detach().float().numpy()
    sab, iab = ib.search(wa, k)
    sba, iba = ia.search(wb, k)
    meta = {
        "a": _sae_meta(sae_a),
        "b": _sae_meta(sae_b),
        "index_type": [ia.index_type, ib.index_type],
    }
    return Matches(
        torch.from_numpy(iab),
        torch.from_numpy(sab),
        torch.from_numpy(iba),
        torch.from_numpy(sba),
        "decoder_cosine",
        meta,
    )


def _sae_meta(sae: SAE) -> dict[str, Any]:
    return {
        "sae": sae.cfg.name,
        "model_id": sae.cfg.model_id,
        "layer": sae.cfg.layer,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
    }


# ------------------------------------------------------------------------------ correlation
def pair_images(
    store_a: ActivationStore, store_b: ActivationStore, max_images: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Store indices ``(in A, in B)`` of the images both stores hold, matched by image id."""
    where_b: dict[str, int] = {}
    for j, image_id in enumerate(store_b.image_ids):
        where_b.setdefault(image_id, j)
    ia, ib, seen = [], [], set()
    for i, image_id in enumerate(store_a.image_ids):
        j = where_b.get(image_id)
        if j is not None and image_id not in seen:
            seen.add(image_id)
            ia.append(i)
            ib.append(j)
            if max_images is not None and len(ia) >= max_images:
                break
    if not ia:
        ex_a, ex_b = store_a.image_ids[:2], store_b.image_ids[:2]
        raise ValueError(
            f"stores {store_a.path} and {store_b.path} share no image ids (e.g. "
            f"{ex_a} vs {ex_b}): activation correlation needs the same images run "
            "through both models; extract both from the same --source"
        )
    return np.asarray(ia, np.int64), np.asarray(ib, np.int64)


def _kinds(sae: SAE, store: ActivationStore, mode: str) -> list[str]:
    have = {k.value for k in store.kinds}
    if mode == "patch":
        return ["patch"]
    kinds = [k for k in sae.cfg.token_kinds if k in have] or sorted(have)
    return kinds


def _read(store: ActivationStore, rows: np.ndarray, kinds: list[str]) -> torch.Tensor:
    """Tokens of store images ``rows`` as float32 ``[b, T, d]`` (one read when contiguous)."""
    if len(rows) > 1 and np.all(np.diff(rows) == 1):
        parts = [
            t
            for _, t in store.iter_images(
                len(rows), kinds=kinds, start=int(rows[0]), stop=int(rows[-1]) + 1
            )
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    return torch.stack([store.tokens(int(r), kinds=kinds) for r in rows])


@torch.no_grad()
def _activations(sae: SAE, tokens: torch.Tensor, per_patch: bool) -> torch.Tensor:
    """Feature activations: ``[b * T, F]`` per token, or ``[b, F]`` max-pooled per image."""
    codes = sae.encode(tokens)
    return codes.reshape(-1, codes.shape[-1]) if per_patch else codes.amax(dim=1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a.T @ b`` in float64, using a sparse ``a`` when it is mostly zeros (SAE codes are)."""
    if a.numel() and (a != 0).float().mean() < 0.05:
        return torch.sparse.mm(a.t().to_sparse(), b).double()
    return (a.t() @ b).double()


def _merge_topk(
    scores: torch.Tensor, ids: torch.Tensor, new_scores: torch.Tensor, new_ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.cat([scores, new_scores], dim=1)
    i = torch.cat([ids, new_ids], dim=1)
    top, pos = s.topk(min(k, s.shape[1]), dim=1)
    return top, i.gather(1, pos)


def activation_correlation(
    sae_a: SAE,
    store_a: ActivationStore,
    sae_b: SAE,
    store_b: ActivationStore,
    max_images: int | None = 2000,
    k: int = 10,
    mode: str = "auto",
    batch_images: int | None = None,
    max_matrix_bytes: int = 1 << 30,
    progress: bool = True,
) -> Matches:
    """Pearson correlation of the two SAEs' feature activations over the images both stores hold.

    ``mode``: ``patch`` (samples = patch tokens; needs equal patch grids), ``image`` (samples =
    images, each feature max-pooled over the image's tokens) or ``auto`` (patch when the grids
    agree). Sums, sums of squares and cross products accumulate in float64. When the full
    ``[F_a, F_b]`` cross-product matrix exceeds ``max_matrix_bytes``, features of A are taken in
    blocks, one pass over the images per block; each block's correlations are reduced to top-k at
    once. Features that never vary (dead) correlate 0 with everything.
    """
    _check_pair(sae_a, store_a)
    _check_pair(sae_b, store_b)
    if mode not in ("auto", "patch", "image"):
        raise ValueError(f"mode must be auto, patch or image, got {mode!r}")
    grids_match = (
        _has_patches(store_a)
        and _has_patches(store_b)
        and store_a.layout.grid == store_b.layout.grid
    )
    if mode == "patch" and not grids_match:
        raise ValueError(
            f"per-patch correlation needs equal patch grids, got "
            f"{store_a.layout.grid} and {store_b.layout.grid}; use mode='image'"
        )
    per_patch = mode == "patch" or (mode == "auto" and grids_match)
    mode = "patch" if per_patch else "image"
    ia, ib = pair_images(store_a, store_b, max_images)
    kinds_a, kinds_b = _kinds(sae_a, store_a, mode), _kinds(sae_b, store_b, mode)
    fa, fb = sae_a.cfg.d_sae, sae_b.cfg.d_sae
    ka, kb = min(k, fb), min(k, fa)
    if batch_images is None:  # about 64M floats of codes per batch
        tokens = max(store_a.tokens_per_image, store_b.tokens_per_image)
        batch_images = max(1, (1 << 26) // (tokens * max(fa, fb)))
    block = max(1, min(fa, max_matrix_bytes // (8 * fb)))
    n_blocks = math.ceil(fa / block)
    a_to_b_s = torch.empty(fa, ka, dtype=torch.float32)
    a_to_b_i = torch.empty(fa, ka, dtype=torch.int64)
    b_to_a_s = torch.full((fb, kb), -math.inf, dtype=torch.float64)
    b_to_a_i = torch.full((fb, kb), -1, dtype=torch.int64)
    n_batches = math.ceil(len(ia) / batch_images)
    bar = _bar(n_blocks * n_batches, "correlation", "batch", progress)
    t0 = time.perf_counter()
    dead_a = dead_b = 0
    n = 0
    for a0 in range(0, fa, block):
        a1 = min(fa, a0 + block)
        sum_a = torch.zeros(a1 - a0, dtype=torch.float64)
        sq_a = torch.zeros_like(sum_a)
        sum_b = torch.zeros(fb, dtype=torch.float64)
        sq_b = torch.zeros_like(sum_b)
        cross = torch.zeros(a1 - a0, fb, dtype=torch.float64)
        n = 0
        for s in range(0, len(ia), batch_images):
            acts_a = _activations(
                sae_a, _read(store_a, ia[s : s + batch_images], kinds_a), per_patch
            )[:, a0:a1].contiguous()
            acts_b = _activations(
                sae_b, _read(store_b, ib[s : s + batch_images], kinds_b), per_patch
            )
            if acts_a.shape[0] != acts_b.shape[0]:
                raise ValueError("the two stores give different numbers of tokens per image")
            n += acts_a.shape[0]
            sum_a += acts_a.sum(0, dtype=torch.float64)
            sq_a += acts_a.double().pow(2).sum(0)
            sum_b += acts_b.sum(0, dtype=torch.float64)
            sq_b += acts_b.double().pow(2).sum(0)
            cross += _cross(acts_a, acts_b)
            bar.update(1)
        mean_a, mean_b = sum_a / n, sum_b / n
        var_a = (sq_a / n - mean_a**2).clamp_min(0)
        var_b = (sq_b / n - mean_b**2).clamp_min(0)
        cov = cross / n - mean_a[:, None] * mean_b[None, :]
        denom = (var_a[:, None] * var_b[None, :]).sqrt()
        alive = denom > 1e-20
        corr = torch.where(alive, cov / denom.clamp_min(1e-30), torch.zeros_like(cov))
        corr = corr.clamp(-1.0, 1.0)
        dead_a += int((var_a <= 1e-20).sum())
        dead_b = int((var_b <= 1e-20).sum())
        top, pos = corr.topk(ka, dim=1)
        a_to_b_s[a0:a1], a_to_b_i[a0:a1] = top.float(), pos
        top_t, pos_t = corr.t().topk(min(kb, a1 - a0), dim=1)
        b_to_a_s, b_to_a_i = _merge_topk(b_to_a_s, b_to_a_i, top_t, pos_t + a0, kb)
        del cross, corr, cov, denom
    bar.close()
    meta = {
        "a": {**_sae_meta(sae_a), "store": str(store_a.path)},
        "b": {**_sae_meta(sae_b), "store": str(store_b.path)},
        "mode": mode,
        "n_images": int(len(ia)),
        "n_samples": int(n),
        "k": int(k),
        "dead_a": dead_a,
        "dead_b": dead_b,
        "blocks": n_blocks,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return Matches(a_to_b_i, a_to_b_s, b_to_a_i, b_to_a_s.float(), "activation_correlation", meta)


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
    _check_pair(sae, store)
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
