"""Bundles built from a real (tiny-model) store: contents, Hub round trip, matches, bad files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.core.bundle import Bundle, BundleError, push_bundle

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dinov2):
    """Two layers of a tiny random DINOv2 over digits+photos, one TopK SAE each."""
    from saescope.core.sources import open_source
    from saescope.train.extract import extract
    from saescope.train.fit import FitConfig, SAESpec, fit

    root = tmp_path_factory.mktemp("bundle")
    bb = tiny_dinov2(root / "m")
    stores = extract(
        bb,
        open_source("builtin:photos?views=2+builtin:digits?max_images=30"),
        root / "acts",
        layers=[1, 2],
        progress=False,
    )
    saes = [
        fit(
            FitConfig(
                store=str(s),
                out=str(root / f"sae{i}"),
                saes=[SAESpec("topk", 4, k=4)],
                batch_size=512,
                tokens=20_000,
                progress=False,
                plots=False,
            )
        )[0]
        for i, s in enumerate(stores)
    ]
    return root, stores, saes


def test_build_bundle_contents_and_loading(trained, tmp_path: Path) -> None:
    from saescope.train.bundle import build_bundle

    root, stores, saes = trained
    out = build_bundle(saes[0], stores[0], tmp_path / "b0", k=8, progress=False)
    assert not (tmp_path / "b0.partial").exists()
    b = Bundle.load(out)
    assert b.manifest["layer"] == 1 and b.manifest["dataset"]["n_images"] == 80
    assert set(b.components) == {"sae", "exemplars", "feature_index", "thumbnails"}
    # the patch index is optional and off by default: nothing in the bundle grows with the data
    assert not list(out.glob("indices/patches*")) and not b.has("patch_index")
    with pytest.raises(BundleError, match="no 'patch_index' component"):
        _ = b.patch_index
    ex = b.exemplars
    assert ex.n_features == b.sae.cfg.d_sae == 128 and ex.k == 8
    assert json.loads((out / "exemplars" / "exemplars.json").read_text())["map_dtype"] == "uint8"
    f = int(np.argmax(ex.stats["frequency"].numpy()))
    top = ex.top(f)
    assert top and top[0].value >= top[-1].value
    thumb = b.thumbnails.get(top[0].image_index)  # what the model saw, as a thumbnail
    assert thumb.size == (160, 160)
    related = b.related(f, k=5)
    assert len(related) == 5 and all(r != f for r, _ in related)
    assert 0 <= b.stats(f)["frequency"] <= 1
    with pytest.raises(FileExistsError):
        build_bundle(saes[0], stores[0], out, progress=False)
    with pytest.raises(ValueError, match="trained on layer 2|layer 2, not layer 1"):
        build_bundle(saes[1], stores[0], tmp_path / "bad", progress=False)


def test_patch_index_on_request_from_a_bounded_sample(trained, tmp_path: Path) -> None:
    from saescope.core.index import split_patch_id
    from saescope.train.bundle import build_bundle

    root, stores, saes = trained
    out = build_bundle(saes[0], stores[0], tmp_path / "p", k=4, patch_index=3000, progress=False)
    b = Bundle.load(out)
    assert b.components["patch_index"] == "indices/patches.faiss"
    pi = b.patch_index
    assert pi.n == 3000 and pi.meta["sampled"] == {"vectors": 3000, "of": 80 * 256, "seed": 0}
    images, patches = split_patch_id(pi.search(np.asarray(b.sae.W_dec[:2].detach()), 5)[1], 256)
    assert (images >= 0).all() and (images < 80).all() and (patches < 256).all()
    # a sample as large as the store indexes every patch token
    full = build_bundle(
        saes[0], stores[0], tmp_path / "all", k=4, patch_index=10**7, progress=False
    )
    assert Bundle.load(full).patch_index.n == 80 * 256
    with pytest.raises(ValueError, match="not both"):
        build_bundle(
            saes[0], stores[0], tmp_path / "x", patch_index=10, patch_index_from=out, progress=False
        )


def test_matches_push_and_load_back_by_hub_id_offline(local_hub, trained, tmp_path: Path) -> None:
    from saescope.train.bundle import add_matches, build_bundle

    root, stores, saes = trained
    b0 = build_bundle(saes[0], stores[0], tmp_path / "layer1", k=4, progress=False)
    b1 = build_bundle(saes[1], stores[1], tmp_path / "layer2", k=4, progress=False)
    add_matches(b0, stores[0], b1, stores[1], k=5, progress=False)
    a, b = Bundle.load(b0), Bundle.load(b1)  # manifests rewritten with the new files: still valid
    m_ab, m_ba = a.matches(b), b.matches(a)
    assert m_ab.a_to_b_indices.shape == (128, 5) and m_ba.a_to_b_indices.shape == (128, 5)
    assert torch.equal(m_ab.a_to_b_indices, m_ba.b_to_a_indices)
    with pytest.raises(BundleError, match="no feature matches with"):
        a.matches(a)
    # push to a local Hub-like target, then resolve it by repo id from the Hub cache layout
    hub = tmp_path / "remote"
    push_bundle(b0, "team/tiny-l1", api=local_hub(hub))
    cache = tmp_path / "cache" / "models--team--tiny-l1"
    commit = "1" * 40
    shutil.copytree(hub / "team" / "tiny-l1", cache / "snapshots" / commit)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    code = (
        "from core.bundle import Bundle\nb = Bundle.load('team/tiny-l1')\n"
        "print(b.name, b.sae.cfg.d_sae, len(b.exemplars.top(0)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={
            **ENV,
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "SAESCOPE_CACHE": str(tmp_path / "sc"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["layer1", "128"]


def test_corrupted_or_truncated_bundle_file_is_named(trained, tmp_path: Path) -> None:
    from saescope.train.bundle import build_bundle

    root, stores, saes = trained
    out = build_bundle(saes[0], stores[0], tmp_path / "b", k=4, progress=False)
    target = out / "indices" / "features.faiss"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(BundleError, match="indices/features.faiss"):
        Bundle.load(out)


def test_bundle_cli(trained, tmp_path: Path) -> None:
    root, stores, saes = trained
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "bundle",
            "--sae",
            str(saes[0]),
            "--store",
            str(stores[0]),
            "--out",
            str(tmp_path / "cli"),
            "--k",
            "4",
            "--patch-index",  # bare: the default sample (10M), here every patch token
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "cli" / "bundle.json").read_text())
    assert manifest["name"] == "cli" and "patch_index" in manifest["components"]
    side = json.loads((tmp_path / "cli" / "indices" / "patches.faiss.json").read_text())
    assert side["meta"]["sampled"]["vectors"] == 80 * 256
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "bundle",
            "--sae",
            str(saes[0]),
            "--store",
            str(stores[0]),
            "--out",
            str(tmp_path / "cli"),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr


@pytest.fixture(scope="module")
def outputs(trained, tmp_path_factory):
    """What ``saescope exemplars`` and ``saescope index`` write for the layer-1 SAE."""
    from saescope.train import exemplars as ex_step
    from saescope.train import indices as index_step

    root, stores, saes = trained
    out = tmp_path_factory.mktemp("outputs")
    cfg = ex_step.ExemplarsConfig(
        sae=str(saes[0]), store=str(stores[0]), out=str(out / "ex"), k=8, map_dtype="uint8"
    )
    cfg.progress = False
    ex_step.run(cfg)
    index_step.run(
        index_step.IndexConfig(
            sae=str(saes[0]), store=str(stores[0]), out=str(out / "idx"), progress=False
        )
    )
    return out / "ex", out / "idx"


def test_bundle_reuses_exemplar_and_index_outputs(trained, outputs, tmp_path: Path) -> None:
    from saescope.train.bundle import build_bundle

    root, stores, saes = trained
    ex_dir, idx_dir = outputs
    scratch = Bundle.load(build_bundle(saes[0], stores[0], tmp_path / "s", k=8, progress=False))
    out = build_bundle(
        saes[0],
        stores[0],
        tmp_path / "r",
        exemplars=ex_dir,
        feature_index=idx_dir,
        patch_index_from=idx_dir / "patches.faiss",
        progress=False,
    )
    reused = Bundle.load(out)
    a, b = scratch.exemplars, reused.exemplars
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert torch.equal(a.maps_tensor(), b.maps_tensor()) and a.images == b.images
    assert torch.equal(a.stats["histogram"], b.stats["histogram"])
    q = np.asarray(scratch.sae.W_dec[:16].detach())
    s1, i1 = scratch.feature_index.search(q, 5)
    s2, i2 = reused.feature_index.search(q, 5)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)
    assert reused.patch_index.n == 80 * 256 and not scratch.has("patch_index")
    assert scratch.thumbnails.blob(int(a.indices[0, 0])) == reused.thumbnails.blob(
        int(a.indices[0, 0])
    )
    # hard-linked, not copied (same file system)
    same = (ex_dir / "exemplars.safetensors", out / "exemplars" / "exemplars.safetensors")
    assert same[0].stat().st_ino == same[1].stat().st_ino
    assert reused.manifest["reused"] == {
        "exemplars": str(ex_dir),
        "feature_index": str(idx_dir),
        "patch_index": str(idx_dir / "patches.faiss"),
    }


def test_mismatched_reuse_is_refused(trained, outputs, tmp_path: Path) -> None:
    from saescope.core.sae_io import from_pretrained, save_sae
    from saescope.train import indices as index_step
    from saescope.train.bundle import build_bundle

    root, stores, saes = trained
    ex_dir, idx_dir = outputs

    def build(sae, store, **kw):
        return build_bundle(sae, store, tmp_path / "m", progress=False, **kw)

    with pytest.raises(ValueError, match=r"exemplars .* not made for this SAE: .*layer 1"):
        build(saes[1], stores[1], exemplars=ex_dir)
    with pytest.raises(ValueError, match="feature index .* not made for this SAE"):
        build(saes[1], stores[1], feature_index=idx_dir)
    with pytest.raises(ValueError, match="patch index .* not made for this SAE: .*layer"):
        build(saes[1], stores[1], patch_index_from=idx_dir)
    # an SAE with the same name and shape but other weights: caught by content checks
    other = from_pretrained(saes[0])
    with torch.no_grad():
        other.W_enc.mul_(-1.0)
        other.W_dec.copy_(other.W_dec.roll(1, dims=1))
    save_sae(other, tmp_path / "other")
    with pytest.raises(ValueError, match="feature .* peaks at"):
        build(tmp_path / "other", stores[0], exemplars=ex_dir)
    with pytest.raises(ValueError, match="not this SAE's decoder rows"):
        build(tmp_path / "other", stores[0], feature_index=idx_dir / "features.faiss")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
    # a patch index over another store (other images) is refused too
    index_step.run(
        index_step.IndexConfig(
            sae=str(saes[1]), store=str(stores[1]), out=str(tmp_path / "i1"), progress=False
        )
    )
    with pytest.raises(ValueError, match="not a decoder index|not a patch index"):
        build(saes[0], stores[0], feature_index=tmp_path / "i1" / "patches.faiss")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "bundle",
            "--sae",
            str(saes[1]),
            "--store",
            str(stores[1]),
            "--out",
            str(tmp_path / "cli"),
            "--exemplars",
            str(ex_dir),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "error: exemplars" in res.stderr
    assert "Traceback" not in res.stderr
