"""Feature matches of ``saescope index``: the decoder index and matches across two SAEs.

Within one activation space decoder directions compare by cosine (:func:`feature_index`,
:func:`cross_feature_matches`); across models they do not, so :func:`activation_correlation`
matches features by how their activations correlate over the same images (the method:
:mod:`saescope.train.indices`). Apart from the patch index, which answers another question and
reads the store another way.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from saescope.core.index import DEFAULT_TARGET_RECALL, VectorIndex
from saescope.core.matches import Matches
from saescope.core.sae import SAE
from saescope.core.store import ActivationStore
from saescope.train.indices_common import check_pair, has_patches, progress_bar


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
    check_pair(sae_a, store_a)
    check_pair(sae_b, store_b)
    if mode not in ("auto", "patch", "image"):
        raise ValueError(f"mode must be auto, patch or image, got {mode!r}")
    grids_match = (
        has_patches(store_a) and has_patches(store_b) and store_a.layout.grid == store_b.layout.grid
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
    bar = progress_bar(n_blocks * n_batches, "correlation", "batch", progress)
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
