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
    assert set(b.components) >= {"sae", "exemplars", "feature_index", "patch_index", "thumbnails"}
    ex = b.exemplars
    assert ex.n_features == b.sae.cfg.d_sae == 128 and ex.k == 8
    f = int(np.argmax(ex.stats["frequency"].numpy()))
    top = ex.top(f)
    assert top and top[0].value >= top[-1].value
    thumb = b.thumbnails.get(top[0].image_index)  # what the model saw, as a thumbnail
    assert thumb.size == (160, 160)
    related = b.related(f, k=5)
    assert len(related) == 5 and all(r != f for r, _ in related)
    assert 0 <= b.stats(f)["frequency"] <= 1
    ids = b.patch_index.search(np.asarray(b.sae.W_dec[f : f + 1].detach()), k=3)[1]
    assert ids.shape == (1, 3)
    with pytest.raises(FileExistsError):
        build_bundle(saes[0], stores[0], out, progress=False)
    with pytest.raises(ValueError, match="trained on layer 2|layer 2, not layer 1"):
        build_bundle(saes[1], stores[0], tmp_path / "bad", progress=False)


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
        env={**ENV, "HF_HUB_CACHE": str(tmp_path / "cache")},
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
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "cli" / "bundle.json").read_text())["name"] == "cli"
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
