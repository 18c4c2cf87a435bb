"""The patch index of ``saescope index``: what it stores, how it is built and queried.

"Find patches in the dataset like the ones I highlighted": one SAE-normalised activation per
stored patch token, compared by cosine (why this representation: :mod:`saescope.train.indices`).
A module of its own: building (:func:`patch_index`) and querying (:func:`patch_query`) share
:func:`patch_vectors`, the one definition of the stored vectors; neither needs feature matching.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from saescope.core import formats
from saescope.core.fileio import atomic_write_text
from saescope.core.index import (
    DEFAULT_TARGET_RECALL,
    IndexBuilder,
    VectorIndex,
    l2_normalize,
    patch_id,
)
from saescope.core.matches import PATCH_IMAGES_FILE, PATCHES_FILE
from saescope.core.sae import SAE
from saescope.core.store import ActivationStore, StoreError
from saescope.train.indices_common import check_pair, has_patches, progress_bar

PATCH_REPRESENTATION = "sae_normalized_activation"


@torch.no_grad()
def patch_vectors(sae: SAE, tokens: torch.Tensor) -> np.ndarray:
    """Raw patch activations ``[..., d_in]`` -> the patch-index vectors, float32 ``[n, d_in]``.

    The one place that defines what the patch index stores (build and query both call it).
    """
    x = torch.as_tensor(tokens, dtype=torch.float32).reshape(-1, sae.cfg.d_in)
    return sae.normalize(x).numpy()


def patch_query(sae: SAE, tokens: torch.Tensor) -> np.ndarray:
    """The query for "patches like these": mean of the highlighted patches' unit vectors.

    Shape ``[1, d]``; every highlighted patch weighs the same.
    """
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


def patch_index_meta(sae: SAE, store: ActivationStore, n_images: int) -> dict:
    """The metadata a patch index records: what its vectors are, how ids map to patches, and
    the SAE and store they came from (one definition for the full and the sampled index)."""
    return {
        "representation": PATCH_REPRESENTATION,
        "id_scheme": "image_index * n_patches + patch",
        "n_patches": store.layout.n_patches,
        "grid": list(store.layout.grid),
        "n_images": n_images,
        "model_id": store.model_id,
        "layer": store.layer,
        "sae": sae.cfg.name,
        "sae_model_id": sae.cfg.model_id,
        "store": str(store.path),
    }


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
    check_pair(sae, store)
    if not has_patches(store):
        raise StoreError(
            f"{store.path} holds no patch tokens ({[k.value for k in store.kinds]}); "
            "extract with --kinds patch to build a patch index"
        )
    n_images = store.n_images if max_images is None else min(store.n_images, int(max_images))
    if n_images <= 0:
        raise StoreError(f"{store.path} holds no images")
    per = store.layout.n_patches
    meta = patch_index_meta(sae, store, n_images)
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
    bar = progress_bar(n_images, "patch index", "img", progress)
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
