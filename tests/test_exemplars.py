"""Exemplars and feature statistics against a brute-force computation on a real (tiny) store."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saescope.core.exemplars import (
    EXEMPLARS_FILE,
    META_FILE,
    STATS_FILE,
    ExemplarError,
    ExemplarMaps,
    Exemplars,
    histogram_edges,
)
from saescope.core.sae import SAE, SAEConfig
from saescope.core.sae_io import save_sae
from saescope.core.store import ActivationStore
from saescope.train.exemplars import build_exemplars, build_exemplars_from_images

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
N_IMAGES = 100


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_dinov2) -> dict:
    """A tiny random DINOv2 and a real store of it (CLS + patches) over 100 sklearn digits."""
    from saescope.core.sources import open_source
    from saescope.train.extract import extract

    root = tmp_path_factory.mktemp("exemplars")
    backbone = tiny_dinov2(root / "model")
    path = extract(
        backbone,
        open_source("builtin:digits"),
        root / "acts",
        layers=[-2],
        kinds="cls,patch",
        max_images=N_IMAGES,
        progress=False,
    )[0]
    return {"root": root, "backbone": backbone, "store": ActivationStore(path)}


def make_sae(
    store: ActivationStore,
    arch: str = "topk",
    kinds=("patch",),
    d_sae: int = 128,
    seed: int = 0,
    **over,
) -> SAE:
    prov = {"model_id": store.model_id, "layer": store.layer, **over}
    cfg = SAEConfig(
        d_in=store.d_model,
        d_sae=d_sae,
        architecture=arch,
        k=8 if arch == "topk" else None,
        token_kinds=list(kinds),
        **prov,
    )
    sae = SAE(cfg, seed=seed)
    sae.set_normalization(store.sample(5000, kinds=list(kinds)))
    if arch == "relu":  # sparser than the tied init: most latents start below zero
        with torch.no_grad():
            sae.b_enc.fill_(-1.0)
    return sae.eval()


@torch.no_grad()
def brute_force(sae: SAE, store: ActivationStore, k: int) -> dict:
    """Dense codes of every token (read image by image), then the definitions applied literally."""
    kinds = sae.cfg.token_kinds
    tokens = torch.stack([store.tokens(i, kinds=kinds) for i in range(store.n_images)])
    codes = sae.encode(tokens)  # [n_images, T, F]
    n_patch = store.layout.n_patches
    patches = codes[:, -n_patch:]  # kinds are ordered cls, register, patch
    image_max = patches.amax(1)  # [n_images, F]
    F = sae.cfg.d_sae
    flat = codes.reshape(-1, F)
    edges = histogram_edges().numpy()
    nb = len(edges) - 1
    tok, feat = np.nonzero(flat.numpy() > 0)
    b = np.clip(np.searchsorted(edges, flat.numpy()[tok, feat], side="right") - 1, 0, nb - 1)
    hist = np.bincount(feat * nb + b, minlength=F * nb).reshape(F, nb)
    count = (flat > 0).sum(0).double()
    return {
        "image_max": image_max,
        "patches": patches,
        "frequency": count / flat.shape[0],
        "mean": flat.double().mean(0),
        "mean_active": flat.double().sum(0) / count.clamp_min(1),
        "max": flat.amax(0),
        "histogram": hist,
        "k": k,
    }


def check_against(ex: Exemplars, bf: dict, atol: float = 1e-4) -> None:
    F, k = ex.n_features, ex.k
    rows, cols = ex.grid
    for f in range(F):
        m = bf["image_max"][:, f]
        order = sorted((i for i in range(len(m)) if m[i] > 0), key=lambda i: (-float(m[i]), i))[:k]
        got = [e for e in ex.top(f)]
        assert len(got) == len(order), f"feature {f}"
        want_v = np.array([float(m[i]) for i in order])
        np.testing.assert_allclose([e.value for e in got], want_v, rtol=1e-5, atol=atol)
        for j, e in enumerate(got):
            near_tie = (
                np.any(np.abs(want_v - want_v[j]) < atol)
                and np.sum(np.abs(want_v - want_v[j]) < atol) > 1
            )
            if not near_tie:
                assert e.image_index == order[j], f"feature {f} rank {j}"
            want_map = bf["patches"][e.image_index, :, f].numpy().reshape(rows, cols)
            assert e.patch_map.shape == (rows, cols)
            np.testing.assert_allclose(e.patch_map, want_map, rtol=2e-3, atol=2e-3)
            assert float(m[e.image_index]) == pytest.approx(e.value, rel=1e-5, abs=atol)
        assert (ex.indices[f, len(got) :] == -1).all()
    np.testing.assert_allclose(ex.stats["frequency"], bf["frequency"], atol=2e-4)
    np.testing.assert_allclose(ex.stats["mean"], bf["mean"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ex.stats["mean_active"], bf["mean_active"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ex.stats["max"], bf["max"], rtol=1e-5, atol=1e-5)
    hist = ex.stats["histogram"].numpy()
    assert hist.dtype == np.int64 and hist.shape == bf["histogram"].shape
    # bin membership may flip for values within float rounding of an edge
    assert np.abs(hist - bf["histogram"]).sum() <= max(4, 1e-4 * bf["histogram"].sum())
    np.testing.assert_array_equal(
        hist.sum(1), np.round(ex.stats["frequency"].double().numpy() * ex.meta["n_tokens"])
    )


@pytest.mark.parametrize(
    "arch,kinds,batch",
    [("topk", ("patch",), 16), ("relu", ("patch",), 7), ("topk", ("cls", "patch"), 32)],
)
def test_matches_brute_force(tiny: dict, arch: str, kinds, batch: int) -> None:
    store = tiny["store"]
    sae = make_sae(store, arch, kinds)
    ex = build_exemplars(sae, store, k=6, batch_images=batch, progress=False)
    assert ex.indices.shape == (128, 6) and ex.maps.shape == (128, 6, 256)
    assert ex.maps.dtype == torch.float16 and ex.grid == (16, 16)
    n_tok = N_IMAGES * len(store.layout.indices(kinds))
    assert ex.meta["n_tokens"] == n_tok and ex.meta["n_images"] == N_IMAGES
    check_against(ex, brute_force(sae, store, 6))


def test_k_larger_than_firing_images_leaves_empty_slots(tiny: dict) -> None:
    store = tiny["store"]
    sae = make_sae(store, "relu")
    with torch.no_grad():
        sae.b_enc.fill_(-3.0)  # very sparse: many features fire on few images
    ex = build_exemplars(sae, store, k=N_IMAGES + 5, batch_images=13, progress=False)
    assert (ex.indices[:, -5:] == -1).all() and (ex.values[:, -5:] == 0).all()
    check_against(ex, brute_force(sae, store, N_IMAGES + 5))


def test_images_path_equals_store_path(tiny: dict, tmp_path: Path) -> None:
    """Straight from images (backbone forward) = from a float32 store of the same images."""
    from saescope.train.extract import extract

    backbone, spec = tiny["backbone"], tiny["store"].manifest["source"]["spec"]
    path = extract(
        backbone,
        spec,
        tmp_path / "acts32",
        layers=[-2],
        dtype="float32",
        max_images=20,
        progress=False,
    )[0]
    store = ActivationStore(path)
    sae = make_sae(store)
    a = build_exemplars(sae, store, k=4, batch_images=8, progress=False)
    b = build_exemplars_from_images(
        sae, backbone, spec, k=4, batch_images=6, progress=False, max_images=20
    )
    torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-4)
    assert (a.indices == b.indices).float().mean() > 0.99  # exact ties aside
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-3, atol=1e-3)
    assert a.images == b.images
    for key in ("frequency", "mean", "max"):
        torch.testing.assert_close(a.stats[key], b.stats[key], rtol=1e-4, atol=1e-4)
    assert b.meta["source"]["spec"] == spec and b.meta["store"] is None


def test_ids_and_images_reload(tiny: dict) -> None:
    from saescope.core.sources import open_source

    store = tiny["store"]
    ex = build_exemplars(make_sae(store), store, k=3, batch_images=16, progress=False)
    ids = store.image_ids
    src = open_source(store.manifest["source"]["spec"])
    for e in ex.top(5):
        assert e.image_id == ids[e.image_index]
        assert np.array_equal(
            np.asarray(ex.load_image(e.image_index)), np.asarray(src.load(e.image_index))
        )
    assert set(ex.images) == set(ex.indices[ex.indices >= 0].tolist())


def test_save_load_round_trip(tiny: dict, tmp_path: Path) -> None:
    store = tiny["store"]
    ex = build_exemplars(make_sae(store), store, k=5, batch_images=16, progress=False)
    ex.save(tmp_path / "f16")
    back = Exemplars.load(tmp_path / "f16")
    assert torch.equal(back.indices, ex.indices) and torch.equal(back.values, ex.values)
    assert isinstance(back.maps, ExemplarMaps)  # read per feature, on demand
    assert torch.equal(back.maps_tensor(), ex.maps)
    for f in (0, 17, 127):
        assert torch.equal(back.feature_maps(f), ex.maps[f])
        assert torch.equal(back.maps[f, 2], ex.maps[f, 2])
        for a, b in zip(back.top(f), ex.top(f)):
            assert a[:3] == b[:3] and a.origin == b.origin == a.image_index  # digits: no views
            np.testing.assert_array_equal(a.patch_map, b.patch_map)
    assert back.origins == ex.origins
    for key, v in ex.stats.items():
        assert torch.equal(back.stats[key], v), key
    assert back.grid == ex.grid and back.images == ex.images
    assert back.meta["sae"]["config"]["d_sae"] == 128
    meta = json.loads((tmp_path / "f16" / META_FILE).read_text())
    assert meta["format_version"] == 1 and meta["k"] == 5 and meta["grid"] == [16, 16]
    assert meta["source"]["spec"].startswith("builtin:digits") and meta["map_dtype"] == "float16"
    assert len(meta["images"]["id"]) == len(ex.images)
    ex.save(tmp_path / "u8", map_dtype="uint8")
    q = Exemplars.load(tmp_path / "u8")
    scale = ex.maps.float().amax(-1, keepdim=True) / 255
    assert ((q.maps_tensor().float() - ex.maps.float()).abs() <= scale * 0.51 + 1e-3).all()
    # the lazy per-feature read dequantises exactly like the whole file read eagerly
    raw = load_file(str(tmp_path / "u8" / EXEMPLARS_FILE))
    eager = (raw["maps"].float() * raw["map_scales"][..., None]).half()
    assert torch.equal(q.maps_tensor(), eager)
    for f in (3, 99):
        assert torch.equal(q.feature_maps(f), eager[f])
    # re-saving a loaded (lazy) folder gives the same files' content
    q.save(tmp_path / "u8b", map_dtype="uint8")
    again = load_file(str(tmp_path / "u8b" / EXEMPLARS_FILE))
    assert torch.equal(again["maps"], raw["maps"])
    torch.testing.assert_close(again["map_scales"], raw["map_scales"])
    f16_size = (tmp_path / "f16" / EXEMPLARS_FILE).stat().st_size
    assert (tmp_path / "u8" / EXEMPLARS_FILE).stat().st_size < 0.6 * f16_size
    assert (tmp_path / "u8" / STATS_FILE).is_file()
    with pytest.raises(ExemplarError, match="not an exemplars folder"):
        Exemplars.load(tmp_path)


def test_mismatches_and_unknown_features(tiny: dict) -> None:
    store = tiny["store"]
    ex = build_exemplars(
        make_sae(store), store, k=2, batch_images=50, progress=False, max_images=10
    )
    for bad in (128, -1, "x", 2.5):
        with pytest.raises(ValueError, match="unknown feature|must be an integer"):
            ex.top(bad)
    with pytest.raises(ValueError, match="unknown feature"):
        ex.feature_stats(1000)
    with pytest.raises(ExemplarError, match="layer"):
        build_exemplars(make_sae(store, layer=0), store, progress=False)
    with pytest.raises(ExemplarError, match="trained on"):
        build_exemplars(make_sae(store, model_id="facebook/dinov2-small"), store, progress=False)
    wide = SAE(SAEConfig(d_in=64, d_sae=128, model_id=store.model_id, layer=store.layer))
    with pytest.raises(ExemplarError, match="width 64"):
        build_exemplars(wide, store, progress=False)
    cls_only = make_sae(store, kinds=("cls",))
    with pytest.raises(ExemplarError, match="patch tokens"):
        build_exemplars(cls_only, store, progress=False)


def _peak(sae: SAE, store: ActivationStore, n: int) -> int:
    tracemalloc.start()
    try:
        build_exemplars(sae, store, k=4, batch_images=10, progress=False, max_images=n)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_store_size(tiny: dict) -> None:
    """Python/numpy allocations (tracemalloc: ids, read buffers) are flat in the image count;
    torch tensors are not traced, so the state's size is checked through its shapes."""
    store = tiny["store"]
    sae = make_sae(store)
    _peak(sae, store, 10)  # warm caches (id files, imports)
    small, large = _peak(sae, store, 20), _peak(sae, store, N_IMAGES)
    assert large - small < 0.1 * small + 32_768, (small, large)
    # the state itself is features x k (x patches), whatever the store size
    ex = build_exemplars(sae, store, k=4, batch_images=10, progress=False)
    assert ex.maps.shape == (128, 4, 256) and len(ex.images) <= 128 * 4


def test_cli(tiny: dict, tmp_path: Path, capsys) -> None:
    store = tiny["store"]
    save_sae(make_sae(store), tmp_path / "sae")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "exemplars",
            "--sae",
            str(tmp_path / "sae"),
            "--store",
            str(store.path),
            "--out",
            str(tmp_path / "ex"),
            "--k",
            "3",
            "--map-dtype",
            "uint8",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert '"k": 3' in res.stderr and "resolved config" in res.stderr  # resolved config printed
    assert "exemplars" in res.stderr and "100/100" in res.stderr  # tqdm progress
    ex = Exemplars.load(tmp_path / "ex")
    assert ex.k == 3 and ex.meta["sae"]["path"] == str(tmp_path / "sae")
    assert (tmp_path / "ex" / "exemplars_config.json").is_file()
    # a user error: one clear line and exit status 2 (in-process: a second interpreter is slow)
    from saescope.train.__main__ import main

    save_sae(make_sae(store, layer=0), tmp_path / "bad")
    code = main(
        [
            "exemplars",
            "--sae",
            str(tmp_path / "bad"),
            "--store",
            str(store.path),
            "--out",
            str(tmp_path / "ex2"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "layer" in err
    # straight from images: --source instead of --store (the backbone is the SAE's model)
    code = main(
        [
            "exemplars",
            "--sae",
            str(tmp_path / "sae"),
            "--source",
            "builtin:digits",
            "--max-images",
            "12",
            "--k",
            "2",
            "--out",
            str(tmp_path / "ex3"),
            "--no-progress",
        ]
    )
    assert code == 0
    ex = Exemplars.load(tmp_path / "ex3")
    assert ex.meta["n_images"] == 12 and ex.meta["source"]["spec"].startswith("builtin:digits")


def synthetic(F: int, k: int, grid=(16, 16), n_images: int = 1000, seed: int = 0) -> Exemplars:
    """Exemplars of any shape from random numbers (the format only, no SAE)."""
    g = torch.Generator().manual_seed(seed)
    P = grid[0] * grid[1]
    maps = torch.empty(F, k, P, dtype=torch.float16)
    for a in range(0, F, 512):
        maps[a : a + 512] = torch.rand(min(512, F - a), k, P, generator=g).half()
    indices = torch.randint(0, n_images, (F, k), generator=g)
    values = torch.rand(F, k, generator=g).sort(1, descending=True).values
    stats = {"frequency": torch.rand(F, generator=g), "histogram": torch.zeros(F, 4).long()}
    images = {i: (f"img{i}", i) for i in range(n_images)}
    return Exemplars(indices, values, maps, stats, grid, images, {}, dict.fromkeys(images, 0))


LAZY_PROBE = r"""
import json, resource, sys
from saescope.core.exemplars import Exemplars
def rss():  # current resident set, MiB
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
before = rss()
ex = Exemplars.load(sys.argv[1])
loaded = rss()
pages = [ex.top(f) for f in range(0, ex.n_features, ex.n_features // 20)]
print(json.dumps({"load": loaded - before, "read": rss() - before, "n": len(pages)}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_load_does_not_read_the_maps(tmp_path: Path) -> None:
    """A 128 MiB maps file: loading and reading 20 features' pages grow the process by a few
    MiB (indices and values), not by the maps."""
    ex = synthetic(4096, 64)
    ex.save(tmp_path / "big")
    assert (tmp_path / "big" / EXEMPLARS_FILE).stat().st_size > 128 * 2**20
    res = subprocess.run(
        [sys.executable, "-c", LAZY_PROBE, str(tmp_path / "big")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    grew = json.loads(res.stdout)
    assert grew["n"] == 21 and grew["load"] < 24 and grew["read"] < 32, grew
    back = Exemplars.load(tmp_path / "big")
    for f in (0, 1234, 4095):
        assert torch.equal(back.feature_maps(f), ex.maps[f])
        got = back.top(f, 3)
        assert [e.image_index for e in got] == ex.indices[f, :3].tolist()
        np.testing.assert_array_equal(
            got[1].patch_map, ex.maps[f, 1].float().numpy().reshape(16, 16)
        )
    assert torch.equal(copy.deepcopy(back).feature_maps(7), ex.maps[7])  # re-opens the file
    with pytest.raises(ValueError, match="unknown feature"):
        back.feature_maps(4096)
    with pytest.raises(IndexError):
        back.maps[4096]


def test_scale_bench_runs_small() -> None:
    """bench/exemplars_scale.py end to end on a small shape (without touching RESULTS.md)."""
    from bench.exemplars_scale import main

    data = main(
        ["--features", "96", "--k", "8", "--images", "500", "--fractions", "0.5,1"]
        + ["--pages", "3", "--repeats", "1", "--no-write"]
    )
    small, big = data["rows"]
    assert (small["features"], big["features"]) == (48, 96)
    assert (
        big["sizes_bytes"]["exemplars.safetensors"] > small["sizes_bytes"]["exemplars.safetensors"]
    )
    assert big["rss_after_pages_mb"] - big["rss_imported_mb"] < 64 and big["page_ms_max"] > 0
