"""A bundle's files: the manifest, checksums verified once (a verified marker), Hub fetches.

Why apart from :mod:`saescope.core.bundle`: a bundle of the reference shape (an ImageNet SAE) is
about 10 GB. Hashing all of it at every app start, or downloading all of it to show one feature,
does not scale; this module decides what to hash and what to fetch.

- ``bundle.json`` lists every file with its size and sha256 (:func:`write_manifest`).
- A **verified marker** (``.saescope-verified.json`` in the bundle folder, or a per-user cache
  file keyed by the folder's absolute path when the folder is read-only or a Hub cache snapshot)
  records, for every file hashed, its size, mtime_ns, inode and sha256. A later check only stats
  a file and re-hashes it when its stat changed, so each file is hashed once per download or
  edit. Like git's index, an entry hashed within :data:`RACY_NS` of the file's mtime is not
  trusted (a same-size edit in the same clock tick would keep the mtime).
- A Hub bundle is opened by downloading ``bundle.json`` alone (:func:`open_hub`); the files of a
  component are downloaded (``hf_hub_download``, one file at a time, pinned to the manifest's
  commit) and verified when the component is first used (:class:`HubFiles`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from saescope import __version__
from saescope.core import formats
from saescope.core.bundle_manifest import MANIFEST, BundleError, load_manifest
from saescope.core.fileio import atomic_write_text, sha256_file
from saescope.core.hub_errors import hub_message
from saescope.core.paths import cache_dir

FORMAT = formats.BUNDLE.name
MARKER = ".saescope-verified.json"
MARKER_FORMAT = "saescope-verified"
RACY_NS = 100_000_000  # 0.1 s: well above the coarse clock tick that stamps mtimes
HASHED = {"files": 0, "bytes": 0}
"""Files and bytes this process hashed for bundles (tests and benchmarks read it)."""


def hash_file(path: Path) -> str:
    """sha256 of one bundle file, counted in :data:`HASHED`."""
    HASHED["files"] += 1
    HASHED["bytes"] += path.stat().st_size
    return sha256_file(path)


def bundle_files(folder: Path) -> list[Path]:
    """The files ``bundle.json`` lists: everything but itself, the marker, temporary files and
    huggingface_hub's ``.cache`` folder (relative parts only: a bundle may live under ~/.cache)."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if (
            p.is_file()
            and rel.as_posix() not in (MANIFEST, MARKER)
            and not p.name.endswith(".tmp")
            and ".cache" not in rel.parts
        ):
            out.append(p)
    return sorted(out)


# ------------------------------------------------------------------------------ marker
class VerifiedMarker:
    """What was hashed in one folder, keyed by each file's stat (see the module docstring)."""

    def __init__(self, folder: Path, in_folder: bool = True):
        self.folder = Path(folder)
        key = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:32]
        self._user = cache_dir("verified") / f"{key}.json"
        self._local = self.folder / MARKER if in_folder else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        for path in (self._local, self._user):
            if path is not None and path.is_file():
                self.entries = self._read(path)
                break

    def _read(self, path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged marker only costs a re-hash
        if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}

    def lookup(self, rel: str, st: os.stat_result) -> str | None:
        """The sha256 recorded for ``rel`` if its stat is unchanged and not racy, else None."""
        e = self.entries.get(rel)
        if not isinstance(e, dict):
            return None
        same = (e.get("bytes"), e.get("mtime_ns"), e.get("ino")) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
        )
        if not same or int(e.get("hashed_ns", 0)) - st.st_mtime_ns <= RACY_NS:
            return None
        return e.get("sha256")

    def record(self, rel: str, st: os.stat_result, sha256: str, hashed_ns: int) -> None:
        self.entries[rel] = {
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ino": st.st_ino,
            "sha256": sha256,
            "hashed_ns": hashed_ns,
        }
        self.dirty = True

    def sha256(self, rel: str, path: Path, st: os.stat_result) -> str:
        """The file's sha256: from the marker when its stat is unchanged, else hashed now."""
        sha = self.lookup(rel, st)
        if sha is None:
            hashed_ns = time.time_ns()
            sha = hash_file(path)
            self.record(rel, st, sha, hashed_ns)
        return sha

    def save(self) -> None:
        """Write the marker (in the folder, else in the user cache when that is read-only)."""
        if not self.dirty:
            return
        text = json.dumps(
            {
                "format": MARKER_FORMAT,
                "folder": str(self.folder.resolve()),
                "library_version": __version__,
                "files": self.entries,
            }
        )
        for path in (self._local, self._user):
            if path is None:
                continue
            try:
                atomic_write_text(path, text, fsync=False)
            except OSError:
                continue
            self.dirty = False
            return


# ------------------------------------------------------------------------------ manifest
def write_manifest(folder: str | os.PathLike, info: dict[str, Any]) -> dict:
    """Checksum every file under ``folder`` and write ``bundle.json`` (atomically).

    Files whose stat matches the verified marker are not hashed again (adding a probe to a
    10 GB bundle re-hashes only the probe); the marker is updated with what was hashed.
    """
    folder = Path(folder)
    marker = VerifiedMarker(folder)
    files = {}
    for p in bundle_files(folder):
        rel = p.relative_to(folder).as_posix()
        st = p.stat()
        files[rel] = {"bytes": st.st_size, "sha256": marker.sha256(rel, p, st)}
    marker.save()
    manifest = {
        **formats.BUNDLE.header(),
        "library_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
        "files": files,
    }
    atomic_write_text(
        folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True), fsync=False
    )
    return manifest


def update_manifest(folder: str | os.PathLike, change) -> dict:
    """Re-checksum ``folder`` after adding files, with ``change(info)`` applied to its metadata.

    Used to add components (matches, probes, OOD calibration) to an existing bundle.
    """
    manifest = read_manifest(folder)
    info = {
        k: v
        for k, v in manifest.items()
        if k not in ("files", "format", "format_version", "library_version", "created")
    }
    change(info)
    return write_manifest(folder, info)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The checked ``bundle.json`` of ``folder`` (:class:`BundleError` if not a readable bundle)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a saescope bundle: no {MANIFEST}")
    manifest = load_manifest(path)
    manifest.setdefault("files", {})
    return manifest


def check_files(
    folder: Path,
    manifest: dict,
    rels: Iterable[str],
    checksums: bool = True,
    marker: VerifiedMarker | None = None,
) -> None:
    """Raise :class:`BundleError` naming every listed file in ``rels`` that is missing, of the
    wrong size or (``checksums``) of the wrong sha256; sha256 comes from ``marker`` when the
    file's stat is unchanged."""
    marker = marker if marker is not None else VerifiedMarker(folder)
    missing, wrong_size, corrupt = [], [], []
    for rel in rels:
        meta = manifest["files"][rel]
        p = folder / rel
        try:
            st = p.stat()
        except OSError:
            missing.append(rel)
            continue
        if not p.is_file():
            missing.append(rel)
        elif st.st_size != meta["bytes"]:
            wrong_size.append(f"{rel} ({st.st_size} of {meta['bytes']} bytes)")
        elif checksums and marker.sha256(rel, p, st) != meta["sha256"]:
            corrupt.append(rel)
    marker.save()
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if wrong_size:
        problems.append("truncated or wrong size: " + ", ".join(wrong_size))
    if corrupt:
        problems.append("checksum mismatch: " + ", ".join(corrupt))
    if problems:
        raise BundleError(
            f"bundle {folder} is incomplete or corrupt ({'; '.join(problems)}); "
            "re-download it or rebuild it"
        )


def verify_bundle(
    folder: str | os.PathLike, checksums: bool = True, trust_marker: bool = True
) -> dict:
    """Check that every file the manifest lists is present with the right size (and sha256).

    ``trust_marker=False`` re-hashes every file (before an upload, say); otherwise files whose
    stat is unchanged since they were last hashed are not read.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    marker = VerifiedMarker(folder)
    if not trust_marker:
        marker.entries = {}
    check_files(folder, manifest, list(manifest["files"]), checksums, marker)
    return manifest


def component_files(manifest: dict, path: str) -> list[str]:
    """The manifest's files that make up the component stored at ``path``.

    A component is a folder (``sae``: every file under it) or a file with its sidecars, the
    files beside it that share its stem (``indices/features.faiss`` and ``.faiss.json``;
    ``thumbnails.safetensors`` and ``thumbnails.json``; ``probes/digits`` and ``digits.*``).
    """
    p = PurePosixPath(path)
    base = str(p)
    stem = str(p.with_suffix("")) if p.suffix else base
    return [
        rel
        for rel in manifest["files"]
        if rel == base or rel.startswith(base + "/") or rel.startswith(stem + ".")
    ]


# ------------------------------------------------------------------------------ the Hub
@dataclass
class HubFiles:
    """Per-file downloads from one commit of a Hub bundle repo (huggingface_hub cache)."""

    repo_id: str
    commit: str
    token: str | None = None

    def download(self, rel: str) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    self.repo_id, rel, revision=self.commit, token=self.token, repo_type="model"
                )
            )
        except Exception as err:
            raise BundleError(
                f"could not fetch {rel} of bundle {self.repo_id!r} from the Hugging Face Hub "
                f"(offline and not in the cache?): {err}"
            ) from err

    def download_all(self) -> Path:
        """The whole snapshot (bundles whose manifest lists no files: before per-file loading)."""
        from huggingface_hub import snapshot_download

        try:
            return Path(
                snapshot_download(
                    self.repo_id, revision=self.commit, token=self.token, repo_type="model"
                )
            )
        except Exception as err:
            raise BundleError(f"could not fetch bundle {self.repo_id!r}: {err}") from err


def open_hub(
    repo_id: str, revision: str | None = None, token: str | None = None
) -> tuple[Path, HubFiles]:
    """Download (or find in the cache) ``bundle.json`` of a Hub repo: its snapshot folder, and
    a :class:`HubFiles` pinned to that snapshot's commit for the rest."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
    )

    try:
        path = Path(
            hf_hub_download(repo_id, MANIFEST, revision=revision, token=token, repo_type="model")
        )
    except LocalEntryNotFoundError as err:  # offline (or unreachable) and not in the cache
        raise BundleError(
            hub_message(err, "bundle", repo_id, revision)
            or f"could not fetch bundle {repo_id!r} from the Hugging Face Hub "
            f"(offline and not in the cache?): {err}"
        ) from err
    except HFValidationError as err:
        raise BundleError(f"bundle {repo_id!r} is neither a folder nor a Hub repo id") from err
    except EntryNotFoundError as err:
        raise BundleError(f"Hub repo {repo_id!r} is not a saescope bundle: no {MANIFEST}") from err
    except Exception as err:
        raise BundleError(
            hub_message(err, "bundle", repo_id, revision)
            or f"could not fetch bundle {repo_id!r} from the Hugging Face Hub "
            f"(offline, private, or no such repo?): {err}"
        ) from err
    return path.parent, HubFiles(repo_id, path.parent.name, token)


__all__ = [
    "BundleError",
    "HASHED",
    "HubFiles",
    "MANIFEST",
    "MARKER",
    "RACY_NS",
    "VerifiedMarker",
    "bundle_files",
    "check_files",
    "component_files",
    "hash_file",
    "open_hub",
    "read_manifest",
    "update_manifest",
    "verify_bundle",
    "write_manifest",
]
