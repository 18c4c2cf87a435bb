"""core.store: format, validation, streaming shuffle with bounded memory, atomic resume."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.core.store import (
    MANIFEST,
    ActivationStore,
    StoreError,
    StoreWriter,
    new_manifest,
    shard_file,
)
from saescope.core.tokens import TokenLayout

MODEL = {
    "model_id": "test/model",
    "revision": "abc",
    "d_model": 4,
    "n_layers": 3,
    "preprocess": {"crop_size": [28, 28]},
}


def _manifest(
    d: int = 4,
    dtype: str = "float32",
    kinds: str = "patch",
    shard_images: int = 5,
    grid=(2, 3),
    n_cls: int = 1,
) -> dict:
    return new_manifest(
        model={**MODEL, "d_model": d},
        layer=1,
        layer_requested=-2,
        kinds=kinds,
        layout=TokenLayout(n_cls, 0, grid),
        dtype=dtype,
        shard_images=shard_images,
        source={"spec": "test"},
        label_names=["even", "odd"],
    )


def build_store(
    path: Path,
    n_images: int,
    d: int = 4,
    dtype: str = "float32",
    kinds: str = "patch",
    shard_images: int = 5,
    grid=(2, 3),
) -> Path:
    """A store whose token t of image i has value (i * T + t) in every dimension + dim index."""
    m = _manifest(d, dtype, kinds, shard_images, grid)
    T = m["tokens_per_image"]
    with StoreWriter(path, m) as w:
        for s in range(0, n_images, shard_images):
            idx = list(range(s, min(n_images, s + shard_images)))
            base = (np.array(idx)[:, None] * T + np.arange(T)[None, :]).astype(np.float64)
            arr = (base[..., None] + np.arange(d) / 100 * 0).astype(dtype)
            arr = np.broadcast_to(arr, (len(idx), T, d)).astype(dtype)
            w.commit_shard(
                arr, [f"img{i}" for i in idx], idx, [i % 2 for i in idx], [], idx[-1] + 1
            )
        w.finish([], n_images)
    return path


def test_round_trip_and_metadata(tmp_path):
    path = build_store(tmp_path / "s", 12)
    st = ActivationStore(path)
    assert (st.n_images, st.tokens_per_image, st.d_model) == (12, 6, 4)
    assert st.n_tokens == 72 and len(st) == 12
    assert st.layer == 1 and st.layer_requested == -2 and st.model_id == "test/model"
    assert st.complete and st.revision == "abc"
    assert st.image_ids == [f"img{i}" for i in range(12)]
    assert st.labels == [i % 2 for i in range(12)] and st.label_names == ["even", "odd"]
    t = st.tokens(7)
    assert t.dtype == torch.float32 and t.shape == (6, 4)
    assert t[:, 0].tolist() == [42.0, 43.0, 44.0, 45.0, 46.0, 47.0]
    m = json.loads((path / MANIFEST).read_text())
    assert [s["n_images"] for s in m["shards"]] == [5, 5, 2]
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    arr = np.load(path / shard_file(1), mmap_mode="r")
    assert arr.shape == (5, 6, 4) and arr[0, 0, 0] == 30
    with pytest.raises(IndexError):
        st.tokens(12)
    firsts = [i for i, _ in st.iter_images(4)]
    assert firsts == [0, 4, 5, 9, 10]  # never crosses a shard


def test_iter_batches_is_a_permutation_and_deterministic(tmp_path):
    st = ActivationStore(build_store(tmp_path / "s", 23))

    def run(**kw):
        return torch.cat(list(st.iter_batches(7, shuffle_buffer=20, **kw)))[:, 0]

    a = run(seed=3)
    assert sorted(a.tolist()) == list(range(23 * 6))  # every token exactly once
    assert not torch.equal(a, torch.arange(23 * 6, dtype=torch.float32))  # shuffled
    assert torch.equal(a, run(seed=3))
    assert not torch.equal(a, run(seed=4))
    sizes = [len(b) for b in st.iter_batches(7, shuffle_buffer=20, seed=3)]
    assert sizes[:-1] == [7] * (len(sizes) - 1) and sum(sizes) == 138
    assert all(len(b) == 7 for b in st.iter_batches(7, shuffle_buffer=20, seed=3, drop_last=True))
    skipped = torch.cat(list(st.iter_batches(7, shuffle_buffer=20, seed=3, skip_batches=4)))[:, 0]
    assert torch.equal(skipped, a[28:])


def test_iter_batches_buffer_larger_than_store_and_loop(tmp_path):
    st = ActivationStore(build_store(tmp_path / "s", 4, shard_images=3))
    a = torch.cat(list(st.iter_batches(5, shuffle_buffer=10_000, seed=0)))[:, 0]
    assert sorted(a.tolist()) == list(range(24))
    tiny = torch.cat(list(st.iter_batches(5, shuffle_buffer=4, seed=0)))[:, 0]  # < 1 image
    assert sorted(tiny.tolist()) == list(range(24))
    it = st.iter_batches(5, shuffle_buffer=8, seed=0, loop=True)
    many = torch.cat([next(it) for _ in range(20)])[:, 0]  # 100 tokens > 4 epochs of 24
    counts = np.bincount(many.int().numpy(), minlength=24)
    assert counts.min() >= 2 and counts.max() <= 6


def test_kinds_selection(tmp_path):
    path = build_store(tmp_path / "s", 6, kinds="cls,patch", grid=(2, 2))
    st = ActivationStore(path)
    assert st.tokens_per_image == 5
    cls = torch.cat(list(st.iter_batches(4, shuffle_buffer=8, kinds="cls")))[:, 0]
    assert sorted(cls.tolist()) == [i * 5 for i in range(6)]
    patches = st.tokens(1, kinds="patch")[:, 0].tolist()
    assert patches == [6.0, 7.0, 8.0, 9.0]
    with pytest.raises(StoreError, match="register"):
        st.tokens(0, kinds="register")


def test_sample(tmp_path):
    st = ActivationStore(build_store(tmp_path / "s", 10, dtype="float16"))
    s = st.sample(25, seed=1)
    assert s.shape == (25, 4) and s.dtype == torch.float32
    vals = s[:, 0].tolist()
    assert len(set(vals)) == 25 and all(0 <= v < 60 for v in vals)
    assert torch.equal(s, st.sample(25, seed=1))
    assert st.sample(10_000).shape == (60, 4)


def test_peak_memory_flat_while_streaming_a_large_store(tmp_path):
    """Streaming a 24 MB / 48 MB store through a 4k-token (0.5 MB) buffer needs ~2 MB either way."""
    peaks = []
    for n in (2000, 4000):
        path = tmp_path / f"s{n}"
        m = _manifest(d=64, dtype="float16", shard_images=250, grid=(8, 12))
        with StoreWriter(path, m) as w:
            for s in range(0, n, 250):
                idx = list(range(s, s + 250))
                w.commit_shard(
                    np.ones((250, 96, 64), np.float16),
                    [str(i) for i in idx],
                    idx,
                    None,
                    [],
                    s + 250,
                )
            w.finish([], n)
        st = ActivationStore(path)
        store_bytes = st.n_tokens * 64 * 2
        tracemalloc.start()
        total = 0
        for batch in st.iter_batches(1024, shuffle_buffer=2**12, seed=0):
            total += len(batch)
            del batch
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert total == st.n_tokens
        assert peak < store_bytes / 4, (peak, store_bytes)
        peaks.append(peak)
    assert peaks[1] < peaks[0] * 1.3 + 200_000, peaks


# -- validation -----------------------------------------------------------------------------


def test_no_manifest(tmp_path):
    with pytest.raises(StoreError, match="not an activation store: no manifest.json in"):
        ActivationStore(tmp_path)
    build_store(tmp_path / "layer_01", 2)
    with pytest.raises(StoreError, match="per-layer stores: layer_01"):
        ActivationStore(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore(tmp_path / "missing")


def test_bad_manifests(tmp_path):
    path = build_store(tmp_path / "s", 7)
    m = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(StoreError, match="unknown activation-store format version 99.*newer"):
        ActivationStore(path)
    (path / MANIFEST).write_text("{ not json")
    with pytest.raises(StoreError, match="corrupt"):
        ActivationStore(path)
    (path / MANIFEST).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(StoreError, match="not an activation-store manifest"):
        ActivationStore(path)


def test_missing_and_truncated_shards(tmp_path):
    path = build_store(tmp_path / "s", 12)
    data = (path / shard_file(1)).read_bytes()
    (path / shard_file(1)).write_bytes(data[:-10])
    with pytest.raises(StoreError, match="shard_00001.npy is truncated"):
        ActivationStore(path)
    (path / shard_file(1)).unlink()
    with pytest.raises(StoreError, match="shard_00001.npy is missing"):
        ActivationStore(path)
    (path / shard_file(1)).write_bytes(data[:-4] + b"\x00\x00\x00\x01")  # same size, other bytes
    ActivationStore(path)  # size checks pass ...
    with pytest.raises(StoreError, match="checksum"):
        ActivationStore(path, verify=True)  # ... the checksum does not


# -- writer / resume ------------------------------------------------------------------------


def test_resume_cleans_temp_and_orphans_and_repairs(tmp_path):
    path = build_store(tmp_path / "s", 12)
    m = json.loads((path / MANIFEST).read_text())
    (path / ".shard_00003.npy.tmp").write_bytes(b"half")
    (path / "shard_00007.npy").write_bytes(b"orphan")
    (path / "shard_00002.npy").write_bytes(b"damaged")
    with StoreWriter(path, _manifest()) as w:
        assert w.n_shards == 2 and w.next_source_index == 10 and not w.complete
        assert any("shard_00002.npy" in note for note in w.repaired)
    names = sorted(p.name for p in path.iterdir())
    assert names == [
        ".lock",
        MANIFEST,
        "shard_00000.ids.json",
        "shard_00000.npy",
        "shard_00001.ids.json",
        "shard_00001.npy",
    ]
    assert json.loads((path / MANIFEST).read_text())["shards"] == m["shards"][:2]


def test_resume_refuses_other_settings(tmp_path):
    path = build_store(tmp_path / "s", 3)
    for kw, field in (
        ({"dtype": "float16"}, "dtype"),
        ({"kinds": "cls,patch"}, "token_kinds"),
        ({"shard_images": 9}, "shard_images"),
    ):
        with pytest.raises(StoreError, match=f"cannot resume into .*{field}"):
            StoreWriter(path, _manifest(**kw))
    other = _manifest()
    other["model"] = {**other["model"], "model_id": "other/model"}
    other["model_id"] = "other/model"
    with pytest.raises(StoreError, match="model_id: store has 'test/model'"):
        StoreWriter(path, other)
    with StoreWriter(path, _manifest(dtype="float16"), resume=False) as w:  # overwrite
        assert w.n_shards == 0
    assert not list(path.glob("shard_*"))


def test_overwrite_never_deletes_foreign_files(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "saescope.sae"}))
    with pytest.raises(StoreError, match="refusing to overwrite"):
        StoreWriter(tmp_path, _manifest(), resume=False)
    (tmp_path / MANIFEST).unlink()
    (tmp_path / "notes.txt").write_text("keep me")
    build_store(tmp_path, 3)
    with StoreWriter(tmp_path, _manifest(), resume=False):
        pass
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_one_writer_at_a_time(tmp_path):
    with StoreWriter(tmp_path / "s", _manifest()):
        with pytest.raises(StoreError, match="another extraction"):
            StoreWriter(tmp_path / "s", _manifest())


def test_unsupported_dtype():
    with pytest.raises(StoreError, match="bfloat16"):
        _manifest(dtype="bfloat16")
