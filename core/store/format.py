"""The activation-store format: file names, manifest fields, identity, and the manifest check.

Layout of a store folder::

    manifest.json              format, model identity, layer, token kinds, layout, dtype, shards,
                               skipped images, complete flag (rewritten atomically per shard)
    shard_00000.npy            [n_images, tokens_per_image, d_model] float16/float32 (.npy,
                               mmap-able)
    shard_00000.ids.json       image ids, source indices and labels of the shard's rows

Why this shape: ``.npy`` is the simplest format that numpy can memory-map with no pickle; shards
are written once, to a temp file that is fsynced and renamed, and only then listed in the manifest,
so a crash at any instant leaves a store that resumes into a byte-identical result.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from saescope.core import formats
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds

FORMAT = formats.ACTIVATION_STORE.name
FORMAT_VERSION = formats.ACTIVATION_STORE.version
MANIFEST = "manifest.json"
DTYPES: dict[str, np.dtype] = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
# what must match for a run to resume into an existing store
IDENTITY_KEYS = (
    "model_id",
    "revision",
    "preprocess",
    "layer",
    "token_kinds",
    "dtype",
    "d_model",
    "layout",
    "tokens_per_image",
    "shard_images",
)


class StoreError(ValueError):
    """An activation store is missing, damaged, or incompatible with the request."""


def shard_file(i: int) -> str:
    return f"shard_{i:05d}.npy"


def ids_file(i: int) -> str:
    return f"shard_{i:05d}.ids.json"


def check_dtype(dtype: str) -> np.dtype:
    if str(dtype) not in DTYPES:
        raise StoreError(
            f"unsupported store dtype {dtype!r}: use one of {sorted(DTYPES)} "
            "(numpy has no bfloat16)"
        )
    return DTYPES[str(dtype)]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_manifest(path: Path) -> dict:
    """The checked manifest of the store in folder ``path`` (:class:`StoreError` if not one)."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        hint = ""
        if path.is_dir():
            layers = sorted(p.name for p in path.iterdir() if (p / MANIFEST).is_file())
            if layers:
                hint = f" (it holds per-layer stores: {', '.join(layers)}; open one of those)"
        elif not path.exists():
            hint = " (the folder does not exist)"
        raise StoreError(f"not an activation store: no {MANIFEST} in {path}{hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{mpath} is unreadable or corrupt ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(
            f"{mpath} is not an activation-store manifest (format "
            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})"
        )
    formats.ACTIVATION_STORE.check(manifest, path, error=StoreError, check_name=False)
    return manifest


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, reading only its header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if fortran:
            raise StoreError(f"{path}: Fortran-ordered shard is not supported")
        return tuple(shape), np.dtype(dtype), fh.tell()


def identity(manifest: dict) -> dict:
    """The fields that define what a store contains (compared before resuming)."""
    model = manifest.get("model", {})
    return {
        "model_id": manifest.get("model_id", model.get("model_id")),
        "revision": manifest.get("revision", model.get("revision")),
        "preprocess": model.get("preprocess"),
        "layer": manifest.get("layer"),
        "token_kinds": list(manifest.get("token_kinds", [])),
        "dtype": manifest.get("dtype"),
        "d_model": manifest.get("d_model"),
        "layout": manifest.get("layout"),
        "tokens_per_image": manifest.get("tokens_per_image"),
        "shard_images": manifest.get("shard_images"),
    }


def new_manifest(
    *,
    model: dict,
    layer: int,
    layer_requested: int,
    kinds: Sequence[str | TokenKind],
    layout: TokenLayout,
    dtype: str,
    shard_images: int,
    source: dict | None = None,
    label_names: list[str] | None = None,
) -> dict:
    """A fresh manifest (no shards yet) for the given backbone description and selection."""
    kinds = parse_kinds(kinds)
    check_dtype(dtype)
    return {
        **formats.ACTIVATION_STORE.header(),
        "model": model,
        "model_id": model.get("model_id"),
        "revision": model.get("revision"),
        "layer": int(layer),
        "layer_requested": int(layer_requested),
        "token_kinds": [k.value for k in kinds],
        "layout": layout.to_dict(),
        "tokens_per_image": len(layout.indices(kinds)),
        "d_model": int(model["d_model"]),
        "dtype": str(dtype),
        "shard_images": int(shard_images),
        "source": source or {},
        "label_names": label_names,
        "shards": [],
        "n_images": 0,
        "n_tokens": 0,
        "next_source_index": 0,
        "skipped": [],
        "complete": False,
        "created_at": now(),
        "updated_at": now(),
    }


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "DTYPES",
    "IDENTITY_KEYS",
    "StoreError",
    "shard_file",
    "ids_file",
    "check_dtype",
    "read_manifest",
    "npy_header",
    "identity",
    "new_manifest",
    "now",
]
