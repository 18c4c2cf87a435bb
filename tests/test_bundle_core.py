"""Bundle manifests, verification, thumbnails and resolution (real files, real safetensors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saescope.core.bundle import (
    Bundle,
    BundleError,
    Thumbnails,
    pack_thumbnails,
    read_manifest,
    verify_bundle,
    write_manifest,
)
from saescope.core.sae import SAE, SAEConfig
from saescope.core.sae_io import save_sae

ROOT = Path(__file__).resolve().parents[1]


def small_bundle(folder: Path) -> Path:
    save_sae(SAE(SAEConfig(d_in=8, d_sae=32, k=4, model_id="tiny", layer=1)), folder / "sae")
    rng = np.random.default_rng(0)
    imgs = [
        (i * 3, f"img/{i}", Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), np.uint8)))
        for i in range(5)
    ]
    pack_thumbnails(folder, imgs, size=32, source_spec="builtin:photos?views=2")
    write_manifest(
        folder, {"name": "tiny", "model": {"model_id": "tiny"}, "components": {"sae": "sae"}}
    )
    return folder


def test_manifest_lists_every_file_with_checksums(tmp_path: Path) -> None:
    small_bundle(tmp_path)
    m = read_manifest(tmp_path)
    assert m["format_version"] == 1 and m["name"] == "tiny"
    assert set(m["files"]) == {
        "sae/config.json",
        "sae/sae.safetensors",
        "thumbnails.safetensors",
        "thumbnails.json",
    }
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in m["files"].values())
    b = Bundle.load(tmp_path)
    assert b.sae.cfg.d_sae == 32 and b.has("sae") and not b.has("exemplars")
    with pytest.raises(BundleError, match="no 'exemplars' component"):
        b.component_path("exemplars")


def test_partial_truncated_and_corrupt_bundles_name_the_file(tmp_path: Path) -> None:
    small_bundle(tmp_path)
    w = tmp_path / "sae" / "sae.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:50])
    with pytest.raises(BundleError, match=r"truncated or wrong size: sae/sae.safetensors \(50 of"):
        Bundle.load(tmp_path)
    w.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(BundleError, match="checksum mismatch: sae/sae.safetensors"):
        verify_bundle(tmp_path)
    w.unlink()
    with pytest.raises(BundleError, match="missing: sae/sae.safetensors"):
        verify_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text('{"format": "saescope-bundle", "format_versi')
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(tmp_path)


def test_newer_format_and_non_bundles_are_refused(tmp_path: Path) -> None:
    small_bundle(tmp_path)
    m = json.loads((tmp_path / "bundle.json").read_text())
    m["format_version"] = 7
    (tmp_path / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer than this saescope"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="no bundle.json"):
        Bundle.load(tmp_path / "sae")


def test_thumbnails_round_trip(tmp_path: Path) -> None:
    small_bundle(tmp_path)
    t = Thumbnails.load(tmp_path)
    assert len(t) == 5 and 6 in t and 7 not in t
    im = t.get(6)
    assert max(im.size) <= 32 and im.mode == "RGB"
    assert t.image_id(6) == "img/2" and t.source == "builtin:photos?views=2"
    with pytest.raises(KeyError, match="no thumbnail"):
        t.get(7)


def test_bundle_by_hub_id_offline_from_cache(tmp_path: Path) -> None:
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "hub" / "models--team--tiny-bundle"
    small_bundle(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "from core.bundle import Bundle, BundleError\n"
        "b = Bundle.load('team/tiny-bundle'); print(b.name, b.sae.cfg.d_sae)\n"
        "try:\n    Bundle.load('team/absent')\nexcept BundleError as e:\n    print('ERR', e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "SAESCOPE_CACHE": str(tmp_path / "saescope-cache"),  # the snapshot's verified marker
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "tiny 32"
    assert lines[1].startswith(
        "ERR bundle 'team/absent' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
    ), lines[1]
    assert "hf download team/absent" in lines[1]
