"""An index on disk: the faiss file ``NAME`` and its JSON sidecar ``NAME.json``.

Why a sidecar: a downloaded or half-copied index must be refused with a clear message before
faiss reads it; the sidecar records the format version, sizes, parameters and the sha256 of the
index file, and is written last, so it never vouches for a half-written index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss

from saescope.core import formats
from saescope.core.fileio import atomic_path, atomic_write_json, sha256_file
from saescope.core.index.params import INDEX_TYPES, METRICS

FORMAT = formats.VECTOR_INDEX.name
FORMAT_VERSION = formats.VECTOR_INDEX.version


class IndexFileError(ValueError):
    """A saved index that is missing, truncated, modified, or not an index of this format."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of index file ``path`` (``NAME`` -> ``NAME.json``)."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The validated sidecar of index file ``path``."""
    side = sidecar_path(path)
    if not side.is_file():
        raise IndexFileError(f"no index sidecar {side} (an index is saved as NAME + NAME.json)")
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise IndexFileError(f"index sidecar {side} is unreadable or corrupt ({err})") from err
    if not isinstance(info, dict):
        raise IndexFileError(f"{side} is not a saescope vector-index sidecar")
    formats.VECTOR_INDEX.check(info, f"index sidecar {side}", error=IndexFileError)
    missing = [k for k in ("metric", "d", "n", "index_type", "bytes", "sha256") if k not in info]
    if missing or info["metric"] not in METRICS or info["index_type"] not in INDEX_TYPES:
        raise IndexFileError(f"{side} lacks or has bad fields {missing or ['metric/index_type']}")
    return info


def write_index(
    index: faiss.Index, path: str | os.PathLike, sidecar: Callable[[str, int, str], dict[str, Any]]
) -> Path:
    """Write ``index`` to ``path`` and ``sidecar(sha256, bytes, file name)`` beside it.

    Each file is written atomically; the index first, the sidecar last: a crash in between
    leaves a sidecar whose hash fails (clear error), never one that vouches for a half-written
    index.
    """
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(f"{path}: an index file must not end in .json (the sidecar does)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
        info = sidecar(sha256_file(tmp), tmp.stat().st_size, path.name)
    atomic_write_json(sidecar_path(path), info, indent=1)
    return path


def read_index(path: str | os.PathLike, verify: bool = True) -> tuple[faiss.Index, dict[str, Any]]:
    """The faiss index saved at ``path`` and its sidecar, checking size and (``verify``) sha256
    before faiss reads the file."""
    path = Path(path)
    info = read_sidecar(path)
    if not path.is_file():
        raise IndexFileError(f"index file {path} is missing (its sidecar is there)")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise IndexFileError(
            f"index file {path} is truncated or changed: {size} bytes, the "
            f"sidecar records {info['bytes']}; rebuild or re-download it"
        )
    if verify and sha256_file(path) != info["sha256"]:
        raise IndexFileError(
            f"index file {path} fails its sha256 check (modified or "
            "corrupt); rebuild or re-download it"
        )
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise IndexFileError(f"faiss cannot read {path}: {str(err).splitlines()[0]}") from err
    if index.d != info["d"] or index.ntotal != info["n"]:
        raise IndexFileError(
            f"{path} holds {index.ntotal} x {index.d}, the sidecar says {info['n']} x {info['d']}"
        )
    return index, info


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "IndexFileError",
    "sidecar_path",
    "read_sidecar",
    "write_index",
    "read_index",
]
