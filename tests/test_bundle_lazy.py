"""Lazy, verified-once bundles: the verified marker, per-component Hub fetches, mapped thumbnails.

Real files throughout; the Hub is a huggingface_hub cache folder read with HF_HUB_OFFLINE=1 (the
real Hub is unreachable here), which exercises the same per-file ``hf_hub_download`` path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saescope.core import bundle_files
from saescope.core.bundle import (
    MARKER,
    Bundle,
    BundleError,
    Thumbnails,
    pack_thumbnails,
    read_manifest,
    update_manifest,
    write_manifest,
)
from saescope.core.bundle_files import VerifiedMarker, component_files
from saescope.core.exemplars import Exemplars
from saescope.core.index import VectorIndex
from saescope.core.sae import SAE, SAEConfig
from saescope.core.sae_io import save_sae
from saescope.core.thumbnails import THUMBS

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lazy_bundle(folder: Path, n_images: int = 10) -> Path:
    """A bundle with every component an app may touch, from the real writers."""
    sae = SAE(SAEConfig(d_in=16, d_sae=64, k=4, model_id="tiny", layer=1))
    save_sae(sae, folder / "sae")
    F, k = 64, 4
    g = torch.Generator().manual_seed(0)
    values = torch.rand(F, k, generator=g).sort(1, descending=True).values
    stats = {
        "frequency": torch.rand(F, generator=g),
        "mean": torch.rand(F, generator=g),
        "mean_active": torch.rand(F, generator=g),
        "max": values[:, 0].clone(),
        "histogram": torch.randint(0, 9, (F, 3), generator=g),
        "bin_edges": torch.tensor([0.0, 1.0, 2.0, 3.0]),
    }
    Exemplars(
        torch.randint(0, n_images, (F, k), generator=g),
        values,
        torch.rand(F, k, 4, generator=g).half(),
        stats,
        (2, 2),
        {i: (f"img/{i}", i) for i in range(n_images)},
        {"model_id": "tiny", "layer": 1},
    ).save(folder / "exemplars", map_dtype="uint8")
    rng = np.random.default_rng(0)
    pack_thumbnails(
        folder,
        [
            (i, f"img/{i}", Image.fromarray(rng.integers(0, 255, (24, 30, 3), np.uint8)))
            for i in range(n_images)
        ],
        size=32,
        source_spec="memory:lazy",
    )
    w = sae.W_dec.detach().numpy()
    VectorIndex.build(w, kind="decoder").save(folder / "indices" / "features.faiss")
    VectorIndex.build(rng.normal(size=(500, 16)), kind="patches").save(
        folder / "indices" / "patches.faiss"
    )
    components = {
        "sae": "sae",
        "exemplars": "exemplars",
        "thumbnails": THUMBS,
        "feature_index": "indices/features.faiss",
        "patch_index": "indices/patches.faiss",
    }
    write_manifest(
        folder, {"name": "lazy", "model": {"model_id": "tiny"}, "components": components}
    )
    return folder


def _age(folder: Path, seconds: float = 60.0) -> None:
    """Give every file an old mtime (as a download from an hour ago would have)."""
    t = time.time_ns() - int(seconds * 1e9)
    for p in folder.rglob("*"):
        if p.is_file() and p.name != MARKER:
            os.utime(p, ns=(t, t))


def _hashed(fn) -> int:
    before = bundle_files.HASHED["files"]
    fn()
    return bundle_files.HASHED["files"] - before


# ------------------------------------------------------------------------------ local marker
def test_marker_created_reused_and_invalidated(tmp_path: Path) -> None:
    folder = lazy_bundle(tmp_path / "b")
    n = len(read_manifest(folder)["files"])
    _age(folder)
    assert _hashed(lambda: Bundle.load(folder)) == n  # stats changed since the build: hashed
    marker = json.loads((folder / MARKER).read_text())
    assert set(marker["files"]) == set(read_manifest(folder)["files"])
    assert _hashed(lambda: Bundle.load(folder)) == 0  # later starts only stat
    # the marker is never listed in the manifest, even when it is rebuilt
    assert MARKER not in update_manifest(folder, lambda info: None)["files"]
    # same size, other bytes, a new mtime: re-hashed, refused, and named
    w = folder / "sae" / "sae.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    _age(folder, 30)
    with pytest.raises(BundleError, match="checksum mismatch: sae/sae.safetensors"):
        Bundle.load(folder)
    assert _hashed(lambda: Bundle.load(folder, verify=False)) == 0  # sizes only
    w.write_bytes(data)
    _age(folder, 20)
    assert _hashed(lambda: Bundle.load(folder)) == n  # every mtime changed: all re-hashed once
    w.write_bytes(data[:-5])
    with pytest.raises(BundleError, match="truncated or wrong size: sae/sae.safetensors"):
        Bundle.load(folder, verify=False)


def test_same_size_edit_in_the_same_clock_tick_is_caught(tmp_path: Path) -> None:
    """An entry hashed right after its file was written is racy: trusted only once re-hashed."""
    folder = lazy_bundle(tmp_path / "b")
    w = folder / "thumbnails.json"
    w.write_text(w.read_text() + " ")
    update_manifest(folder, lambda info: None)  # hashed within a few ms of the write
    st = w.stat()
    w.write_text(w.read_text().replace("memory:lazy", "memory:LAZY"))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, inode and mtime as hashed
    assert (w.stat().st_size, w.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(BundleError, match="checksum mismatch: thumbnails.json"):
        Bundle.load(folder)


def test_marker_of_a_hub_snapshot_lives_in_the_user_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "cache"))
    folder = lazy_bundle(tmp_path / "b")
    (folder / MARKER).unlink()
    m = VerifiedMarker(folder, in_folder=False)
    p = folder / "README"
    p.write_text("x")
    m.sha256("README", p, p.stat())
    m.save()
    assert not (folder / MARKER).exists()
    saved = list((tmp_path / "cache" / "verified").glob("*.json"))
    assert len(saved) == 1 and "README" in json.loads(saved[0].read_text())["files"]


def test_manifest_of_a_bundle_under_a_dot_cache_folder_lists_its_files(tmp_path: Path) -> None:
    """The default bundles live in ~/.cache/saescope: their manifests used to list no file."""
    folder = lazy_bundle(tmp_path / ".cache" / "saescope" / "b")
    files = read_manifest(folder)["files"]
    assert "sae/sae.safetensors" in files and MARKER not in files


def test_component_files_are_the_path_and_its_sidecars() -> None:
    files = [
        "sae/config.json",
        "sae/sae.safetensors",
        "saex/x",
        "indices/features.faiss",
        "indices/features.faiss.json",
        "indices/patches.faiss",
        "indices/patches.faiss.json",
        "indices/patches.images.json",
        "thumbnails.safetensors",
        "thumbnails.json",
        "probes/digits.json",
        "probes/digits.safetensors",
        "probes/digit-scenes.json",
    ]
    m = {"files": dict.fromkeys(files, {})}
    assert component_files(m, "sae") == ["sae/config.json", "sae/sae.safetensors"]
    assert component_files(m, "indices/features.faiss") == files[3:5]
    assert component_files(m, "indices/patches.faiss") == files[5:8]
    assert component_files(m, THUMBS) == files[8:10]
    assert component_files(m, "probes/digits") == files[10:12]


# ------------------------------------------------------------------------------ thumbnails
def test_thumbnails_stream_map_and_stay_safetensors(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(buf, "JPEG")
    items = [
        (7, "a", Image.new("RGB", (64, 48), (0, 90, 200))),
        (3, "b", buf.getvalue()),  # pre-encoded: stored as is
        (5, "c", Image.new("RGB", (10, 90), (9, 9, 9))),
    ]
    assert pack_thumbnails(tmp_path, items, size=32, source_spec="memory:t") == 3
    t = Thumbnails.load(tmp_path)
    assert isinstance(t.data, np.memmap) and len(t) == 3 and 3 in t and 4 not in t
    assert t.blob(3) == buf.getvalue() and t.get(3).size == (20, 10)
    assert max(t.get(7).size) == 32 and t.image_id(5) == "c" and t.source == "memory:t"
    raw = load_file(str(tmp_path / THUMBS))  # a valid safetensors file for any reader
    assert raw["image_index"].tolist() == [7, 3, 5] and raw["offsets"][-1] <= len(raw["data"])
    with pytest.raises(KeyError, match="no thumbnail"):
        t.get(4)
    # files packed by earlier versions (safetensors' own writer) still load
    from safetensors.numpy import save_file

    save_file(raw, str(tmp_path / THUMBS))
    assert Thumbnails.load(tmp_path).blob(3) == buf.getvalue()
    assert pack_thumbnails(tmp_path / "", [], size=32, source_spec=None) == 0
    assert len(Thumbnails.load(tmp_path)) == 0


# ------------------------------------------------------------------------------ the Hub
SPY = """
import json, sys
import huggingface_hub
asked = []
real = huggingface_hub.hf_hub_download
def spy(repo_id, filename, **kw):
    asked.append(filename)
    return real(repo_id, filename, **kw)
huggingface_hub.hf_hub_download = spy
from saescope.core import bundle_files
from saescope.core.bundle import Bundle, BundleError
out = {}
b = Bundle.load("team/lazy")
out["load"] = list(asked)
try:
    f = 3
    tops = b.exemplars.top(f)
    out["page"] = [b.thumbnails.get(e.image_index).size for e in tops] and b.stats(f)["max"]
    b.sae
except BundleError as e:
    out["error"] = str(e)
try:
    b.patch_index
except BundleError as e:
    out["patch_error"] = str(e)
out["asked"] = asked
out["hashed"] = bundle_files.HASHED["files"]
print(json.dumps(out))
"""


def _hub(tmp_path: Path) -> tuple[Path, dict]:
    src = lazy_bundle(tmp_path / "src")
    snap = tmp_path / "hub" / "models--team--lazy" / "snapshots" / COMMIT
    shutil.copytree(src, snap, ignore=shutil.ignore_patterns(MARKER, "patches.*"))
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(COMMIT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "SAESCOPE_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    return snap, env


def _spy(env: dict) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", SPY], env=env, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_hub_bundle_fetches_and_verifies_only_what_is_used(tmp_path: Path) -> None:
    snap, env = _hub(tmp_path)
    files = read_manifest(snap)["files"]
    used = {r for r in files if r.split("/")[0] in ("sae", "exemplars") or r.startswith("thumb")}
    first = _spy(env)
    assert first["load"] == ["bundle.json"]  # opening a bundle fetches the manifest only
    assert "error" not in first and first["page"]
    # each used file fetched once, nothing else (the decoder index and README never); the
    # patch index, absent from this cache, is asked for only when used, and refused clearly
    assert set(first["asked"]) - {"bundle.json"} - used == {"indices/patches.faiss"}
    assert used <= set(first["asked"]) and len(first["asked"]) == len(set(first["asked"]))
    assert "could not fetch indices/patches.faiss" in first["patch_error"]
    assert first["hashed"] == len(used)  # verified once per download ...
    assert _spy(env)["hashed"] == 0  # ... not at every start
    # a blob changed in the cache (same size, new mtime): re-hashed and refused
    p = snap / "exemplars" / "exemplars.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    os.utime(p, ns=(time.time_ns() - 10**10,) * 2)
    third = _spy(env)
    assert "checksum mismatch: exemplars/exemplars.safetensors" in third["error"]
    assert third["hashed"] == 1


def test_hub_bundle_whose_manifest_lists_no_files_is_fetched_whole(tmp_path: Path) -> None:
    """Bundles built under ~/.cache before the fix list no files: they still open (whole)."""
    snap, env = _hub(tmp_path)
    m = json.loads((snap / "bundle.json").read_text())
    m["files"] = {}
    (snap / "bundle.json").write_text(json.dumps(m))
    code = (
        "from saescope.core.bundle import Bundle\n"
        "b = Bundle.load('team/lazy')\n"
        "print(b.hub is None, b.sae.cfg.d_sae, len(b.exemplars.top(3)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "64", "4"]
