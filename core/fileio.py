"""Crash-safe file writes and checksums: the one definition every artefact writer uses.

Why atomic: a killed run (or a full disk) must never leave a half-written file under its final
name, because readers trust names (a resumed extraction, a bundle manifest, a cached model).
Every writer here writes to a hidden temporary file beside the target, fsyncs it and renames it
over the target, which POSIX makes atomic within a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

BLOCK = 1 << 22  # 4 MiB reads: sequential-read speed without holding a large file in memory


def sha256_file(path: str | os.PathLike, block: int = BLOCK) -> str:
    """Hex sha256 of a file, read in ``block``-sized chunks (constant memory)."""
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


def temp_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name a write to ``path`` goes through (``.NAME.tmp``, same folder)."""
    path = Path(path)
    return path.with_name("." + path.name + ".tmp")


def is_temp_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a half-written file left by a killed writer (see :func:`temp_path`)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _HashingWriter:
    """File wrapper that hashes and counts what is written (one pass over the bytes)."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.sha, self.n = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self.sha.update(mv)
        self.n += len(mv)
        return self.fh.write(mv)


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; renamed over ``path`` on success.

    For writers that want a file name rather than a file object (safetensors, FAISS, PIL). On an
    exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


@contextmanager
def atomic_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``folder``; it replaces ``folder`` on success.

    For artefacts that are whole folders (a saved pipeline, an artefact with its pipeline): a
    reader sees the old folder or the complete new one, never a half-written one. On an exception
    the temporary folder is removed and ``folder`` is left as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(
    path: str | os.PathLike, write: Callable[[Any], Any], *, fsync: bool = True
) -> tuple[int, str]:
    """Write ``path`` via ``write(fileobj)`` atomically; return (bytes written, their sha256)."""
    path = Path(path)
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, "wb") as fh:
            hw = _HashingWriter(fh)
            write(hw)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    if fsync:
        fsync_dir(path.parent)
    return hw.n, hw.sha.hexdigest()


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, fsync: bool = True
) -> tuple[int, str]:
    """Write ``data`` to ``path`` atomically; return (bytes, sha256)."""
    return atomic_write(path, lambda fh: fh.write(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> tuple[int, str]:
    """Write UTF-8 ``text`` to ``path`` atomically; return (bytes, sha256)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    fsync: bool = True,
) -> tuple[int, str]:
    """Write ``obj`` as JSON to ``path`` atomically; return (bytes, sha256)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys), fsync=fsync)


@contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Why: two processes building the same cached artefact (two app workers, two test runs on
    a first start) must not write it at once; the second waits, then finds it built.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


__all__ = [
    "exclusive_lock",
    "sha256_file",
    "temp_path",
    "is_temp_path",
    "fsync_dir",
    "atomic_path",
    "atomic_dir",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
]
