"""What ``saescope bundle`` takes in besides the SAE: reused outputs and the sampled patch index.

Why a module of its own: at ImageNet scale the exemplar pass and the indices are hours of work,
already done by ``saescope exemplars`` and ``saescope index``; the bundle builder checks those
outputs against the SAE (one clear error when they were made for another SAE, model or layer)
and hard-links or copies them instead of recomputing. The patch index, optional, is built from a
bounded random sample of patch tokens, so its size no longer grows with the data set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from saescope.core.exemplars import ExemplarError, Exemplars
from saescope.core.index import DEFAULT_TARGET_RECALL, IndexBuilder, VectorIndex, read_sidecar
from saescope.core.matches import FEATURES_FILE, PATCH_IMAGES_FILE, PATCHES_FILE
from saescope.core.sae import SAE
from saescope.core.store import ActivationStore, StoreError
from saescope.train.indices_common import check_pair, has_patches, progress_bar
from saescope.train.indices_patches import (
    PATCH_REPRESENTATION,
    patch_index_meta,
    patch_vectors,
)


class ReuseError(ValueError):
    """An exemplars or index output that was not made for this SAE (or is not such an output)."""


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system: no copy), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _mismatch(what: str, where: Path, diffs: list[str]) -> ReuseError:
    return ReuseError(f"{what} {where} was not made for this SAE: {'; '.join(diffs)}")


# ------------------------------------------------------------------------------ exemplars
_SAE_KEYS = ("d_in", "d_sae", "architecture", "k", "model_id", "layer")


def reuse_exemplars(folder: str | os.PathLike, sae: SAE, store: ActivationStore) -> Exemplars:
    """The exemplars in ``folder`` (output of ``saescope exemplars``), checked against ``sae``
    and ``store``: width, model, layer, the SAE's configuration, and the recorded top activation
    of a few features recomputed from the store."""
    folder = Path(folder)
    try:
        ex = Exemplars.load(folder)
    except ExemplarError as err:
        raise ReuseError(f"--exemplars {folder}: {err}") from err
    cfg, meta = sae.cfg, ex.meta
    diffs = []
    if ex.n_features != cfg.d_sae:
        diffs.append(f"{ex.n_features} features, the SAE has {cfg.d_sae}")
    for key, want in (("model_id", store.model_id), ("layer", store.layer)):
        if meta.get(key) is not None and want is not None and meta[key] != want:
            diffs.append(f"{key} {meta[key]!r}, the store holds {want!r}")
    recorded = (meta.get("sae") or {}).get("config") or {}
    mine = cfg.to_dict()
    diffs += [
        f"SAE {key} {recorded[key]!r}, this SAE's is {mine.get(key)!r}"
        for key in _SAE_KEYS
        if key in recorded and recorded[key] != mine.get(key)
    ]
    if not diffs and meta.get("store") is not None:
        diffs += _spot_check(ex, sae, store)
    if diffs:
        raise _mismatch("exemplars", folder, diffs)
    return ex


@torch.no_grad()
def _spot_check(ex: Exemplars, sae: SAE, store: ActivationStore, n: int = 4) -> list[str]:
    """Recompute the best exemplar's activation of ``n`` features (a wrong SAE shows here)."""
    top = ex.indices[:, 0]
    feats = torch.nonzero((top >= 0) & (top < store.n_images)).flatten()
    if not len(feats):
        return []
    pick = feats[torch.linspace(0, len(feats) - 1, min(n, len(feats))).long()]
    out = []
    for f in pick.tolist():
        x = store.tokens(int(top[f]), kinds="patch").to(sae.W_enc.device, sae.W_enc.dtype)
        got = float(sae.encode(x)[:, f].max())
        want = float(ex.values[f, 0])
        if abs(got - want) > 1e-2 * max(abs(want), 1e-3):
            out.append(
                f"feature {f} peaks at {got:.4g} on image {int(top[f])}, recorded {want:.4g}"
            )
    return out


# ------------------------------------------------------------------------------ indices
def _index_file(path: str | os.PathLike, name: str) -> Path:
    """``path`` itself, or ``path/name`` when ``path`` is an output folder of ``saescope index``."""
    path = Path(path)
    file = path / name if path.is_dir() else path
    if not file.is_file():
        raise ReuseError(f"{file} is not an index file (expected {name} from 'saescope index')")
    return file


def _check_meta(meta: dict, what: str, where: Path, keys: dict) -> None:
    diffs = [
        f"{k} {meta[k]!r}, expected {want!r}"
        for k, want in keys.items()
        if meta.get(k) is not None and want is not None and meta[k] != want
    ]
    if diffs:
        raise _mismatch(what, where, diffs)


def reuse_feature_index(path: str | os.PathLike, sae: SAE) -> Path:
    """The decoder-direction index at ``path`` checked against ``sae``: sizes, recorded model,
    layer and SAE, and a search of a few decoder rows that must find themselves."""
    file = _index_file(path, FEATURES_FILE)
    info = read_sidecar(file)
    cfg = sae.cfg
    if info.get("kind") != "decoder":
        raise ReuseError(f"{file} is a {info.get('kind')!r} index, not a decoder index")
    if (info["n"], info["d"]) != (cfg.d_sae, cfg.d_in):
        raise _mismatch(
            "feature index",
            file,
            [f"{info['n']} x {info['d']} vectors, the SAE's decoder is {cfg.d_sae} x {cfg.d_in}"],
        )
    meta = info.get("meta") or {}
    _check_meta(
        meta,
        "feature index",
        file,
        {"sae": cfg.name, "model_id": cfg.model_id, "layer": cfg.layer},
    )
    rows = np.unique(np.linspace(0, cfg.d_sae - 1, min(32, cfg.d_sae)).astype(np.int64))
    w = sae.W_dec.detach().float().cpu().numpy()[rows]
    scores, _ = VectorIndex.load(file).search(w, 1)
    if float(np.mean(scores[:, 0] > 0.995)) < 0.9:
        raise _mismatch("feature index", file, ["its vectors are not this SAE's decoder rows"])
    return file


def reuse_patch_index(path: str | os.PathLike, sae: SAE, store: ActivationStore) -> list[Path]:
    """The patch index files at ``path`` (index, sidecar, image list) checked against ``sae``
    and ``store``: width, representation, model, layer, SAE, patch grid and image ids."""
    import json

    file = _index_file(path, PATCHES_FILE)
    info = read_sidecar(file)
    meta = info.get("meta") or {}
    if info.get("kind") != "patches" or meta.get("representation") != PATCH_REPRESENTATION:
        raise ReuseError(f"{file} is not a patch index of 'saescope index'")
    if info["d"] != sae.cfg.d_in:
        raise _mismatch("patch index", file, [f"width {info['d']}, the SAE's is {sae.cfg.d_in}"])
    _check_meta(
        meta,
        "patch index",
        file,
        {
            "model_id": store.model_id,
            "layer": store.layer,
            "sae": sae.cfg.name,
            "n_patches": store.layout.n_patches,
        },
    )
    images = file.with_name(PATCH_IMAGES_FILE)
    if not images.is_file():
        raise ReuseError(f"{images} is missing (the image list of the patch index)")
    ids = json.loads(images.read_text()).get("image_ids") or []
    if ids != store.image_ids[: len(ids)]:
        raise _mismatch("patch index", file, [f"its images are not those of {store.path}"])
    return [file, file.with_name(file.name + ".json"), images]


# ------------------------------------------------------------------------------ sampled patches
def _choose(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``min(n, total)`` distinct ids of ``range(total)``, sorted, without a permutation of
    ``total`` when ``n`` is much smaller (250M patch tokens: 2 GB)."""
    if n >= total:
        return np.arange(total, dtype=np.int64)
    if 2 * n > total:
        return np.sort(rng.choice(total, n, replace=False)).astype(np.int64)
    chosen = np.unique(rng.integers(0, total, n))
    while len(chosen) < n:
        chosen = np.union1d(chosen, rng.integers(0, total, n - len(chosen)))
    return chosen.astype(np.int64)


def _vectors_at(store: ActivationStore, sae: SAE, ids: np.ndarray, per: int) -> np.ndarray:
    """Patch-index vectors of the (sorted) patch ids, read image by image."""
    images, patches = np.divmod(ids, per)
    out = np.empty((len(ids), store.d_model), np.float32)
    starts = np.flatnonzero(np.r_[True, np.diff(images) != 0])
    for a, b in zip(starts, np.r_[starts[1:], len(ids)]):
        out[a:b] = store.tokens(int(images[a]), kinds="patch").numpy()[patches[a:b]]
    return patch_vectors(sae, torch.from_numpy(out))


def sampled_patch_index(
    sae: SAE,
    store: ActivationStore,
    max_vectors: int,
    index_type: str = "auto",
    target_recall: float = DEFAULT_TARGET_RECALL,
    batch_images: int = 64,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> VectorIndex:
    """A patch index (same vectors and ids as ``saescope index``) over a uniform random sample
    of at most ``max_vectors`` patch tokens of ``store``: every patch when the store holds
    fewer. The index type follows the sample size (exact, IVF, IVF-PQ beyond 2 GiB)."""
    check_pair(sae, store)
    if not has_patches(store):
        raise StoreError(
            f"{store.path} holds no patch tokens; extract with --kinds patch for a patch index"
        )
    if max_vectors < 1:
        raise ValueError(f"--patch-index needs a sample of at least 1 vector, got {max_vectors}")
    per = store.layout.n_patches
    total = store.n_images * per
    rng = np.random.default_rng(seed)
    ids = _choose(total, int(max_vectors), rng)
    meta = {
        **patch_index_meta(sae, store, store.n_images),
        "sampled": {"vectors": len(ids), "of": total, "seed": seed},
    }
    builder = IndexBuilder(
        sae.cfg.d_in,
        len(ids),
        metric="cosine",
        index_type=index_type,
        kind="patches",
        target_recall=target_recall,
        seed=seed,
        threads=threads,
        meta=meta,
    )
    train = np.sort(rng.choice(ids, min(builder.sample_size, len(ids)), replace=False))
    builder.train(_vectors_at(store, sae, train, per), train)
    if len(np.unique(ids // per)) * 4 < store.n_images:  # a few images: read only those
        for a in range(0, len(ids), 1 << 16):
            builder.add(
                _vectors_at(store, sae, ids[a : a + (1 << 16)], per), ids[a : a + (1 << 16)]
            )
        return builder.finish()
    bar = progress_bar(store.n_images, "patch index", "img", progress)
    for start, toks in store.iter_images(batch_images, kinds="patch"):
        b = toks.shape[0]
        lo, hi = np.searchsorted(ids, [start * per, (start + b) * per])
        if hi > lo:
            x = toks.reshape(b * per, -1)[torch.from_numpy(ids[lo:hi] - start * per)]
            builder.add(patch_vectors(sae, x), ids[lo:hi])
        bar.update(b)
    bar.close()
    return builder.finish()


__all__ = [
    "ReuseError",
    "link_or_copy",
    "reuse_exemplars",
    "reuse_feature_index",
    "reuse_patch_index",
    "sampled_patch_index",
]
