"""FAISS indices (core.index), the index step (train.indices), feature matches (core.matches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saescope.core.index import (
    INDEX_TYPES,
    IndexFileError,
    VectorIndex,
    patch_id,
    read_sidecar,
    recall_at_k,
    sidecar_path,
    split_patch_id,
)
from saescope.core.sae import SAE, SAEConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def clusters(n: int, d: int = 24, centres: int = 40, seed: int = 0) -> np.ndarray:
    """Clustered float32 data (fixed mixture; ``seed`` picks the draws)."""
    mix = np.random.default_rng(99)
    c = mix.standard_normal((centres, d)) * 2
    rng = np.random.default_rng(seed)
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = clusters(6000)
    return x, np.arange(len(x), dtype=np.int64) * 7 + 3, clusters(100, seed=1)


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorIndex]:
    x, ids, _ = data
    return {t: VectorIndex.build(x, ids, index_type=t, threads=1) for t in INDEX_TYPES}


# ------------------------------------------------------------------------------ core.index
@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_each_type_finds_the_exact_top10(built, data, index_type):
    x, ids, queries = data
    vi, flat = built[index_type], built["flat"]
    assert vi.index_type == index_type and vi.n == len(x) and vi.d == x.shape[1]
    assert recall_at_k(vi, flat, queries, k=10) >= 0.95  # fresh queries, not the tuning ones
    if index_type != "flat":
        assert vi.tuning["reached"] and vi.tuning["recall_at_k"] >= 0.98
    scores, found = vi.search(queries, 10)
    assert found.shape == scores.shape == (len(queries), 10)
    assert np.isin(found, ids).all()
    # a stored vector finds itself, under its own id
    s, f = vi.search(x[[10, 500]], 10)
    assert ids[10] in f[0] and ids[500] in f[1] and np.allclose(s[:, 0], 1.0, atol=2e-2)


def test_auto_choice_by_size():
    from saescope.core.index import choose_index_type

    assert choose_index_type(10_000, 384) == "flat"
    assert choose_index_type(1_000_000, 384) == "ivf"
    assert choose_index_type(10_000_000, 384) == "ivfpq"
    small = VectorIndex.build(clusters(500, d=8), tune=False)
    assert small.index_type == "flat" and small.tuning["recall_at_k"] == 1.0


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_save_load_round_trip(built, data, tmp_path, index_type):
    vi = built[index_type]
    path = vi.save(tmp_path / f"{index_type}.faiss")
    info = read_sidecar(path)
    assert info["format_version"] == 1 and info["index_type"] == index_type
    assert info["n"] == vi.n and info["d"] == vi.d and info["metric"] == "cosine"
    assert info["bytes"] == path.stat().st_size and len(info["sha256"]) == 64
    again = VectorIndex.load(path)
    assert again.params == vi.params and again.tuning == vi.tuning
    queries = data[2]
    for a, b in zip(vi.search(queries, 10), again.search(queries, 10)):
        np.testing.assert_array_equal(a, b)


def test_damaged_files_raise_index_file_error(built, tmp_path):
    path = built["ivf"].save(tmp_path / "p.faiss")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        VectorIndex.load(path)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(IndexFileError, match="sha256"):
        VectorIndex.load(path)
    path.write_bytes(raw)
    VectorIndex.load(path)  # intact again
    side = sidecar_path(path)
    side.write_text("{not json")
    with pytest.raises(IndexFileError, match="corrupt"):
        VectorIndex.load(path)
    side.unlink()
    with pytest.raises(IndexFileError, match="sidecar"):
        VectorIndex.load(path)


def test_input_validation():
    vi = VectorIndex.build(clusters(50, d=4), tune=False)
    with pytest.raises(ValueError, match="width"):
        vi.search(np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        vi.search(np.full((1, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="metric"):
        VectorIndex.build(clusters(50, d=4), metric="dot")
    assert vi.search(clusters(2, d=4), k=100)[1].shape == (2, 50)  # k clamped to n
    img, patch = split_patch_id(patch_id([0, 3], [5, 15], 16), 16)
    assert img.tolist() == [0, 3] and patch.tolist() == [5, 15]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 12),
    k=st.integers(1, 20),
    metric=st.sampled_from(["cosine", "ip", "l2"]),
    index_type=st.sampled_from(["flat", "ivf", "hnsw"]),
    seed=st.integers(0, 2**16),
)
def test_scores_sorted_and_ids_valid(n, d, k, metric, index_type, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    ids = rng.choice(10**9, size=n, replace=False).astype(np.int64)
    vi = VectorIndex.build(x, ids, metric=metric, index_type=index_type, threads=1)
    scores, found = vi.search(rng.standard_normal((3, d)).astype(np.float32), k)
    assert found.shape == (3, min(k, n))
    valid = found[found >= 0]
    assert np.isin(valid, ids).all()
    for row_s, row_i in zip(scores, found):
        row_s = row_s[row_i >= 0]
        assert len(set(row_i[row_i >= 0].tolist())) == len(row_s)  # no id twice
        order = np.diff(row_s)
        assert (order >= -1e-5).all() if metric == "l2" else (order <= 1e-5).all()


# ------------------------------------------------------------------------------ decoder index
def _sae(d_in: int, d_sae: int, seed: int, **cfg) -> SAE:
    return SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="relu", k=None, **cfg), seed=seed)


def test_feature_index_returns_itself_then_planted_duplicate():
    from saescope.core.matches import related_features
    from saescope.train.indices import feature_index

    sae = _sae(32, 256, seed=0)
    with torch.no_grad():
        near = sae.W_dec[5] + 0.02 * torch.randn(32, generator=torch.Generator().manual_seed(1))
        sae.W_dec[171] = near / near.norm()
    index = feature_index(sae)
    ids, scores = related_features(index, sae, 5, k=5)
    assert ids[:2].tolist() == [5, 171]
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[1] > 0.99 > scores[2]
    with pytest.raises(ValueError, match="unknown feature"):
        related_features(index, sae, 256)


def test_cross_feature_matches_needs_one_activation_space():
    from saescope.train.indices import cross_feature_matches

    a, b = _sae(32, 64, seed=0, model_id="m"), _sae(32, 96, seed=1, model_id="m")
    with torch.no_grad():
        b.W_dec[40] = a.W_dec[7]
    m = cross_feature_matches(a, b, k=3)
    assert m.method == "decoder_cosine" and m.a_to_b_indices.shape == (64, 3)
    assert m.b_to_a_indices.shape == (96, 3)
    assert m.a_to_b_indices[7, 0] == 40 and m.b_to_a_indices[40, 0] == 7
    assert m.a_to_b_scores[7, 0] == pytest.approx(1.0, abs=1e-5)
    assert (m.a_to_b_scores[:, :-1] >= m.a_to_b_scores[:, 1:] - 1e-6).all()
    with pytest.raises(ValueError, match="activation_correlation"):
        cross_feature_matches(a, _sae(48, 64, seed=2))
    with pytest.raises(ValueError, match="different models"):
        cross_feature_matches(a, _sae(32, 64, seed=2, model_id="other"))


# ------------------------------------------------------------------------------ with stores
@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_dinov2) -> dict[str, Path]:
    """Two layers (0 and 2) of a tiny random DINOv2 over 60 digits, by the real extractor."""
    from saescope.core.sources import open_source
    from saescope.train.extract import extract

    root = tmp_path_factory.mktemp("indexstores")
    backbone = tiny_dinov2(root / "model")
    l0, l2 = extract(
        backbone,
        open_source("builtin:digits"),
        root / "acts",
        layers=[0, 2],
        max_images=60,
        progress=False,
    )
    return {"root": root, "l0": l0, "l2": l2}


def _store_sae(store, d_sae: int, seed: int) -> SAE:
    sae = _sae(store.d_model, d_sae, seed, model_id=store.model_id, layer=store.layer)
    sae.set_normalization(store.sample(2000, kinds="patch"))
    return sae


def _mapped_store(src, out: Path, m: np.ndarray, keep: np.ndarray, extra_ids: list[str]) -> Path:
    """A "second model": store ``src``'s tokens times ``m`` (another width), images ``keep`` in
    that order, plus images no other store has."""
    from saescope.core.store import StoreWriter, new_manifest

    model = {"model_id": "test/linear-map", "revision": None, "d_model": int(m.shape[1])}
    manifest = new_manifest(
        model=model,
        layer=0,
        layer_requested=0,
        kinds="patch",
        layout=src.layout,
        dtype="float32",
        shard_images=1000,
    )
    toks = np.zeros((len(keep), src.tokens_per_image, m.shape[1]), np.float32)
    for r, i in enumerate(keep):
        toks[r] = src.tokens(int(i), kinds="patch").numpy() @ m
    extra = np.random.default_rng(5).standard_normal((len(extra_ids), *toks.shape[1:]))
    arr = np.concatenate([toks, extra]).astype(np.float32)
    ids = [src.image_ids[int(i)] for i in keep] + extra_ids
    with StoreWriter(out, manifest, resume=False) as w:
        w.commit_shard(arr, ids, list(range(len(ids))), None, [], len(ids))
        w.finish([], len(ids))
    return out


def test_activation_correlation_finds_a_planted_pair_across_models(stores, tmp_path):
    from saescope.core.matches import Matches
    from saescope.core.store import ActivationStore
    from saescope.train.indices import activation_correlation, pair_images

    a_store = ActivationStore(stores["l0"])
    rng = np.random.default_rng(0)
    m = rng.standard_normal((32, 48)).astype(np.float32)
    keep = rng.permutation(60)[:45]  # B holds 45 of A's images, shuffled, plus 3 of its own
    b_store = ActivationStore(_mapped_store(a_store, tmp_path / "b", m, keep, ["x1", "x2", "x3"]))
    ia, ib = pair_images(a_store, b_store)
    assert len(ia) == 45 and [a_store.image_ids[i] for i in ia] == [
        b_store.image_ids[j] for j in ib
    ]

    sae_a = _store_sae(a_store, 64, seed=0)
    sae_b = SAE(
        SAEConfig(
            d_in=48,
            d_sae=80,
            architecture="relu",
            k=None,
            model_id="test/linear-map",
            layer=0,
            normalization="none",
        ),
        seed=1,
    )
    with torch.no_grad():  # B's feature 11 reads exactly A's feature 3 through the map
        sae_a.b_dec.zero_()
        w_a = sae_a.W_enc[:, 3] / sae_a.norm_scale
        sae_b.W_enc[:, 11] = torch.from_numpy(np.linalg.pinv(m)).float() @ w_a
        sae_b.b_enc[11] = sae_a.b_enc[3] - sae_a.norm_mean @ w_a
    full = activation_correlation(sae_a, a_store, sae_b, b_store, k=4, progress=False)
    assert full.meta["mode"] == "patch" and full.meta["n_images"] == 45
    assert full.meta["n_samples"] == 45 * a_store.layout.n_patches
    assert full.a_to_b_indices[3, 0] == 11 and full.b_to_a_indices[11, 0] == 3
    assert full.a_to_b_scores[3, 0] > 0.999 and full.b_to_a_scores[11, 0] > 0.999
    for s in (full.a_to_b_scores, full.b_to_a_scores):
        assert (s[:, :-1] >= s[:, 1:]).all() and (s.abs() <= 1).all()
    # blockwise (several passes over the images) gives the same answer
    blocks = activation_correlation(
        sae_a,
        a_store,
        sae_b,
        b_store,
        k=4,
        progress=False,
        max_matrix_bytes=8 * 80 * 25,
        batch_images=16,
    )
    assert blocks.meta["blocks"] == 3
    torch.testing.assert_close(blocks.a_to_b_scores, full.a_to_b_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(blocks.b_to_a_scores, full.b_to_a_scores, atol=1e-5, rtol=0)
    # per image (max-pooled) the planted pair is still each other's best match
    img = activation_correlation(sae_a, a_store, sae_b, b_store, k=4, mode="image", progress=False)
    assert img.meta["n_samples"] == 45 and img.a_to_b_indices[3, 0] == 11
    # safetensors round trip
    path = full.save(tmp_path / "m.safetensors")
    again = Matches.load(path)
    assert again.method == "activation_correlation" and again.meta == full.meta
    torch.testing.assert_close(again.a_to_b_scores, full.a_to_b_scores)
    assert again.a_to_b_indices.dtype == torch.int64


def test_activation_correlation_needs_shared_images(stores, tmp_path):
    from saescope.core.store import ActivationStore
    from saescope.train.indices import activation_correlation

    a_store = ActivationStore(stores["l0"])
    b_store = ActivationStore(
        _mapped_store(
            a_store,
            tmp_path / "b",
            np.eye(32, dtype=np.float32),
            np.array([], np.int64),
            ["only-b-1", "only-b-2"],
        )
    )
    sae = _store_sae(a_store, 16, seed=0)
    other = _sae(32, 16, seed=1, model_id="test/linear-map", layer=0)
    with pytest.raises(ValueError, match="share no image ids"):
        activation_correlation(sae, a_store, other, b_store, progress=False)


def test_patch_index_over_a_store(stores):
    from saescope.core.store import ActivationStore
    from saescope.train.indices import patch_index, patch_query, patch_vectors

    store = ActivationStore(stores["l2"])
    sae = _store_sae(store, 64, seed=0)
    per = store.layout.n_patches
    vi = patch_index(sae, store, index_type="ivf", threads=1, progress=False)
    assert vi.n == 60 * per and vi.meta["n_patches"] == per and vi.kind == "patches"
    assert vi.tuning["reached"]
    toks = store.tokens(7, kinds="patch")
    _, ids = vi.search(patch_query(sae, toks[[5]]), 1)
    assert split_patch_id(ids[0, 0], per) == (7, 5)  # a stored patch finds itself
    # the query for several highlighted patches is the mean of their unit vectors
    exact = VectorIndex.build(patch_vectors(sae, store.tokens(3, kinds="patch")), tune=False)
    _, near = exact.search(patch_query(sae, store.tokens(3, kinds="patch")[[0, 1]]), 2)
    assert exact.n == per and set(near[0].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="width"):
        patch_index(_sae(16, 32, seed=0), store, progress=False)


def test_cli_index(stores, tmp_path, capsys):
    from saescope.core.matches import Matches, read_patch_images
    from saescope.core.sae_io import save_sae
    from saescope.core.store import ActivationStore

    s0, s2 = ActivationStore(stores["l0"]), ActivationStore(stores["l2"])
    save_sae(_store_sae(s0, 64, seed=0), tmp_path / "sae0")
    save_sae(_store_sae(s2, 96, seed=1), tmp_path / "sae2")
    out = tmp_path / "bundle"
    cmd = [
        sys.executable,
        "-m",
        "saescope.train",
        "index",
        "--sae",
        str(tmp_path / "sae0"),
        "--store",
        str(stores["l0"]),
        "--out",
        str(out),
        "--other-sae",
        str(tmp_path / "sae2"),
        "--other-store",
        str(stores["l2"]),
        "--k",
        "5",
        "--no-progress",
        "--threads",
        "1",
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resolved config" in run.stderr
    cfg = json.loads((out / "index_config.json").read_text())
    assert cfg["step"] == "index" and cfg["k"] == 5
    patches = VectorIndex.load(out / "patches.faiss")
    assert patches.n == 60 * s0.layout.n_patches and patches.index_type == "flat"
    images = read_patch_images(out)
    assert images == json.loads((out / "patches.images.json").read_text())
    assert images["image_ids"] == s0.image_ids and images["grid"] == list(s0.layout.grid)
    assert VectorIndex.load(out / "features.faiss").n == 64
    m = Matches.load(out / "matches.safetensors")
    assert m.a_to_b_indices.shape == (64, 5) and m.b_to_a_indices.shape == (96, 5)
    assert m.meta["mode"] == "patch" and m.meta["n_images"] == 60
    d = Matches.load(out / "decoder_matches.safetensors")  # same model: decoder cosine too
    assert d.method == "decoder_cosine"
    from saescope.train.__main__ import main  # a user error is one clear line and exit code 2

    assert main(cmd[3:10] + ["--other-sae", str(tmp_path / "sae2")]) == 2
    assert "go together" in capsys.readouterr().err
