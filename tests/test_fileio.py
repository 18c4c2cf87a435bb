"""core.fileio and core.formats: the one atomic write, sha256 and manifest check of every format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saescope.core import fileio, formats


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=3 * 1024))
def test_atomic_write_round_trips_and_reports_size_and_sha(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("w") / "f.bin"
    n, sha = fileio.atomic_write_bytes(path, data)
    assert path.read_bytes() == data and n == len(data)
    assert sha == hashlib.sha256(data).hexdigest() == fileio.sha256_file(path, block=7)
    assert not fileio.temp_path(path).exists()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    fileio.atomic_write_json(path, {"v": 1})

    def boom(fh) -> None:
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fileio.atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with pytest.raises(ValueError), fileio.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise ValueError("killed")
    assert json.loads(path.read_text()) == {"v": 1} and not fileio.temp_path(path).exists()
    assert fileio.is_temp_path(fileio.temp_path(path)) and not fileio.is_temp_path(path)


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path: Path) -> None:
    folder = tmp_path / "artefact"
    with fileio.atomic_dir(folder) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (folder / "a.txt").read_text() == "one"
    with pytest.raises(KeyboardInterrupt), fileio.atomic_dir(folder) as tmp:
        (tmp / "a.txt").write_text("two")
        raise KeyboardInterrupt
    assert (folder / "a.txt").read_text() == "one"  # old folder untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]  # no temp folder left
    with fileio.atomic_dir(folder) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]


def test_every_format_is_named_once_and_checks_its_manifests() -> None:
    names = [f.name for f in formats.ALL]
    assert len(set(names)) == len(names) and all(f.version >= 1 for f in formats.ALL)
    fmt = formats.EXEMPLARS
    assert fmt.check(fmt.header(), "x") == fmt.version
    with pytest.raises(ValueError, match="newer than this saescope reads.*upgrade saescope"):
        fmt.check({"format": fmt.name, "format_version": fmt.version + 1}, "x")
    with pytest.raises(ValueError, match="is not a saescope exemplars"):
        fmt.check({"format": formats.BUNDLE.name, "format_version": 1}, "x")
    with pytest.raises(KeyError, match="x: field format_version must be an integer, got .abc."):
        fmt.check({"format": fmt.name, "format_version": "abc"}, "x", error=KeyError)
    with pytest.raises(ValueError, match="unknown exemplars format version 0"):
        fmt.check({"format": fmt.name, "format_version": 0}, "x")
    assert fmt.check({"format": fmt.name}, "x", default_version=1) == 1


def _hold_lock(path: str, log: str, tag: str) -> None:
    import time as _time

    from saescope.core.fileio import exclusive_lock

    with exclusive_lock(path):
        with open(log, "a") as fh:
            fh.write(f"{tag}-in\n")
        _time.sleep(0.3)
        with open(log, "a") as fh:
            fh.write(f"{tag}-out\n")


def test_exclusive_lock_serialises_processes(tmp_path):
    """Two processes holding the lock never overlap: each enters only after the other left."""
    import multiprocessing as mp

    from saescope.core.fileio import exclusive_lock

    lock, log = tmp_path / "sub" / "x.lock", tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hold_lock, args=(str(lock), str(log), t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().split()
    assert lines[0][0] == lines[1][0] and lines[2][0] == lines[3][0], lines
    with exclusive_lock(lock):  # free again afterwards
        pass
