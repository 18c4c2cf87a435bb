"""The bundle manifest (``bundle.json``): its error type, and its fields checked one by one.

Why a module of its own, below every other bundle module: reading a manifest is the first step of
every bundle reader (files, checks, the loader), and a damaged or hostile ``bundle.json`` (wrong
types, paths leaving the folder, odd versions) must be one :class:`BundleError` naming the field,
not a ``KeyError`` or ``TypeError`` deep in the loader. Depending on nothing else of the bundle
keeps the bundle modules free of import cycles.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

from saescope.core import formats

MANIFEST = "bundle.json"


class BundleError(ValueError):
    """A bundle that is missing, partial, corrupt, or from an incompatible format version."""


class BundleView(Protocol):
    """What the checks read of a loaded bundle (:class:`saescope.core.bundle.Bundle` is one)."""

    path: Path
    manifest: dict

    @property
    def name(self) -> str: ...

    @property
    def components(self) -> dict: ...


PATH_COMPONENTS = {  # component -> is it a folder
    "sae": True,
    "labels": True,
    "exemplars": True,
    "ood": True,
    "feature_index": False,
    "patch_index": False,
    "thumbnails": False,
}
TABLE_COMPONENTS = ("matches", "probes")


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON true is not a size)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_pos_int(v: Any) -> bool:
    return is_int(v) and v > 0


def is_grid(v: Any) -> bool:
    """A patch grid: [rows, cols] of positive ints."""
    return isinstance(v, list) and len(v) == 2 and all(is_pos_int(x) for x in v)


MAX_MANIFEST_BYTES = 64 << 20  # a real bundle.json is a few kB; this refuses a bogus one early
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ------------------------------------------------------------------------------ manifest fields
def load_manifest(path: str | os.PathLike) -> dict:
    """Read, parse and check the ``bundle.json`` at ``path``; any damage is one BundleError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"{path} is {size} bytes; a bundle manifest is a few kB (not a bundle.json?)"
            )
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BundleError(f"{path} is not UTF-8 text (damaged download?): {err.reason}") from err
    except json.JSONDecodeError as err:
        raise BundleError(f"{path} is not valid JSON (truncated download?): {err}") from err
    except RecursionError as err:
        raise BundleError(f"{path} nests too deeply to be a bundle manifest") from err
    except OSError as err:
        raise BundleError(f"{path} cannot be read: {err.strerror or err}") from err
    return check_manifest_fields(manifest, path)


def check_manifest_fields(manifest: Any, path: str | os.PathLike) -> dict:
    """``manifest`` (parsed ``bundle.json``), checked field by field; BundleError names the field.

    Checks the format and version first (a newer format may have other fields), then the types of
    every field the loader reads, and that every path stays inside the bundle folder.
    """
    formats.BUNDLE.check(manifest, path, error=BundleError)
    files = manifest.get("files", {})  # optional: old manifests list no files
    if not isinstance(files, dict):
        raise BundleError(f"{path}: field files must be an object, got {_kind(files)}")
    for rel, meta in files.items():
        _safe_rel(rel, f"files[{rel!r}]", path)
        if not isinstance(meta, dict):
            raise BundleError(f"{path}: field files[{rel!r}] must be an object, got {_kind(meta)}")
        if not is_int(meta.get("bytes")) or meta["bytes"] < 0:
            raise BundleError(
                f"{path}: field files[{rel!r}].bytes must be a size in bytes, "
                f"got {meta.get('bytes')!r}"
            )
        if not isinstance(meta.get("sha256"), str) or not _SHA256.fullmatch(meta["sha256"]):
            raise BundleError(
                f"{path}: field files[{rel!r}].sha256 must be 64 hex digits, "
                f"got {meta.get('sha256')!r}"
            )
    for key, ok, what in _FIELDS:
        value = _lookup(manifest, key)
        if value is not None and not ok(value):
            raise BundleError(f"{path}: field {key} must be {what}, got {_kind(value)}")
    _check_components(manifest.get("components") or {}, path)
    return manifest


def _check_components(components: dict, path: str | os.PathLike) -> None:
    for name, value in components.items():
        field = f"components.{name}"
        if isinstance(value, str) and name not in TABLE_COMPONENTS:
            _safe_rel(value, field, path)
            continue
        if not isinstance(value, dict) or name in PATH_COMPONENTS:
            want = "an object" if name in TABLE_COMPONENTS else "a relative path"
            raise BundleError(f"{path}: field {field} must be {want}, got {_kind(value)}")
        for key, entry in value.items():
            if isinstance(entry, dict):
                entry = entry.get("path")
                if not isinstance(entry, str):
                    raise BundleError(
                        f"{path}: field {field}[{key!r}].path must be a relative path, "
                        f"got {_kind(entry)}"
                    )
            elif not isinstance(entry, str):
                raise BundleError(
                    f"{path}: field {field}[{key!r}] must be a relative path, got {_kind(entry)}"
                )
            _safe_rel(entry, f"{field}[{key!r}]", path)


def _safe_rel(rel: Any, field: str, path: str | os.PathLike) -> str:
    """``rel`` if it is a relative path inside the bundle (no '..', not absolute, no drive)."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise BundleError(f"{path}: field {field} must be a relative path, got {rel!r}")
    win = PureWindowsPath(rel)
    if PurePosixPath(rel).is_absolute() or win.is_absolute() or win.drive or ".." in win.parts:
        raise BundleError(f"{path}: field {field} points outside the bundle folder: {rel!r}")
    return rel


def _kind(v: Any) -> str:
    """A short description of a bad value for messages (type and a clipped repr)."""
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


_FIELDS: list[tuple[str, Any, str]] = [  # (dotted field, check, what it must be); None is allowed
    ("name", lambda v: isinstance(v, str), "a string"),
    ("title", lambda v: isinstance(v, str), "a string"),
    ("description", lambda v: isinstance(v, str), "a string"),
    ("layer", is_int, "an integer"),
    ("token_kinds", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list"),
    *[(k, lambda v: isinstance(v, dict), "an object") for k in ("model", "sae", "head", "layout")],
    *[(k, lambda v: isinstance(v, dict), "an object") for k in ("dataset", "ood", "components")],
    *[(f"model.{k}", lambda v: isinstance(v, str), "a string") for k in ("model_id", "revision")],
    ("model.display_name", lambda v: isinstance(v, str), "a string"),
    ("model.layer", is_int, "an integer"),
    ("model.d_model", is_pos_int, "a positive integer"),
    ("sae.d_sae", is_pos_int, "a positive integer"),
    ("layout.grid", is_grid, "two positive integers"),
]


__all__ = [
    "BundleError",
    "BundleView",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "PATH_COMPONENTS",
    "TABLE_COMPONENTS",
    "check_manifest_fields",
    "is_grid",
    "is_int",
    "is_pos_int",
    "load_manifest",
]
