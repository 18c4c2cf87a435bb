"""Publishing a bundle: part by part, resumable after a dropped connection, manifest last."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from saescope.core.bundle import Bundle, BundleError, push_bundle
from saescope.core.bundle_push import ledger_path, upload_parts


def _as_hub_cache(remote: Path, cache: Path, repo: str) -> Path:
    """Copy what was pushed into the Hub cache layout, as a later download would find it."""
    owner, name = repo.split("/")
    commit = "1" * 40
    snap = cache / f"models--{owner}--{name}" / "snapshots" / commit
    shutil.rmtree(snap.parent.parent, ignore_errors=True)
    shutil.copytree(remote / owner / name, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(commit)
    return snap


def test_push_resumes_and_writes_the_manifest_last(tmp_path, tiny_bundle, local_hub, monkeypatch):
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "sc"))
    folder = tiny_bundle(tmp_path, "tiny")
    manifest = json.loads((folder / "bundle.json").read_text())
    parts = upload_parts(manifest)
    assert {"sae", "exemplars"} <= set(parts) and "bundle.json" not in parts, parts
    assert len(parts) >= 3
    remote = tmp_path / "remote"
    # the connection drops after two part commits
    hub = local_hub(remote, fail_after=2)
    with pytest.raises(ConnectionError):
        push_bundle(folder, "team/tiny", api=hub, progress=False)
    assert not (remote / "team" / "tiny" / "bundle.json").exists()
    assert ledger_path(folder, "team/tiny", None).is_file()
    # a half-uploaded repo is never taken for a bundle
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    _as_hub_cache(remote, tmp_path / "cache", "team/tiny")
    with pytest.raises(BundleError, match="no bundle.json"):
        Bundle.load(tmp_path / "cache" / "models--team--tiny" / "snapshots" / ("1" * 40))
    # the re-run uploads only the parts that did not go up, then the card and the manifest
    first = [files for _, files in hub.commits]
    hub2 = local_hub(remote)
    push_bundle(folder, "team/tiny", api=hub2, progress=False)
    again = [f for _, files in hub2.commits for f in files]
    assert not set(again) & {f for files in first for f in files}
    assert [files for _, files in hub2.commits][-1] == ["bundle.json"]
    assert hub2.commits[-1][0].endswith("(bundle complete)")
    assert not ledger_path(folder, "team/tiny", None).exists()
    snap = _as_hub_cache(remote, tmp_path / "cache", "team/tiny")
    b = Bundle.load(snap)
    assert b.sae.cfg.d_sae == Bundle.load(folder).sae.cfg.d_sae
    assert len(b.exemplars.top(0)) == len(Bundle.load(folder).exemplars.top(0))
    # pushing a changed bundle over a complete one takes its manifest away first
    hub3 = local_hub(remote, fail_after=1)
    with pytest.raises(ConnectionError):
        push_bundle(folder, "team/tiny", api=hub3, progress=False)
    assert hub3.commits[0][1] == ["-bundle.json"]
    assert not (remote / "team" / "tiny" / "bundle.json").exists()


def test_push_refuses_a_damaged_bundle(tmp_path, tiny_bundle, local_hub, monkeypatch):
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "sc"))
    folder = tiny_bundle(tmp_path, "tiny")
    Bundle.load(folder)  # leaves a verified marker: push must re-hash anyway
    f = folder / "sae" / "config.json"
    data = bytearray(f.read_bytes())
    data[-2] ^= 1
    f.write_bytes(bytes(data))
    hub = local_hub(tmp_path / "remote")
    with pytest.raises(BundleError, match="checksum mismatch"):
        push_bundle(folder, "team/tiny", api=hub, progress=False)
    assert hub.commits == []
