"""Writing an activation store: create or resume one, commit shards atomically, mark it complete.

Why resumable: extraction of a large source takes hours; a killed run must continue where it
stopped and produce byte-for-byte the store an uninterrupted run would have.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from saescope.core.fileio import atomic_write, atomic_write_json, is_temp_path, sha256_file
from saescope.core.store.format import (
    DTYPES,
    FORMAT,
    IDENTITY_KEYS,
    MANIFEST,
    StoreError,
    identity,
    ids_file,
    now,
    read_manifest,
    shard_file,
)


class StoreWriter:
    """Creates or resumes one store and commits shards atomically.

    Holds an exclusive ``flock`` on ``.lock`` so two extractions cannot write one store; the
    kernel releases it if the process is killed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        manifest: dict,
        *,
        resume: bool = True,
        verify: str = "checksum",
    ):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self._lock_fh.close()
            raise StoreError(f"another extraction is writing to {self.path}") from err
        self.repaired: list[str] = []
        try:
            existing = (self.path / MANIFEST).is_file()
            if existing and resume:
                self.manifest = self._resume(manifest, verify)
            else:
                self._clear()
                self.manifest = manifest
                self._save()
        except BaseException:
            self.close()
            raise

    # state
    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def next_source_index(self) -> int:
        return int(self.manifest["next_source_index"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def _clear(self) -> None:
        """Remove this store's own files (never anything else in the folder)."""
        mpath = self.path / MANIFEST
        if mpath.is_file():
            try:
                ours = json.loads(mpath.read_text()).get("format") == FORMAT
            except (OSError, ValueError, AttributeError):
                ours = True  # a half-written manifest of ours; nothing else writes that name here
            if not ours:
                raise StoreError(
                    f"{mpath} belongs to something other than an activation store; "
                    "refusing to overwrite it: choose another output folder"
                )
        for p in self.path.iterdir():
            n = p.name
            if (
                n == MANIFEST
                or (n.startswith("shard_") and n.endswith((".npy", ".ids.json")))
                or is_temp_path(p)
            ):
                p.unlink()

    def _resume(self, wanted: dict, verify: str) -> dict:
        manifest = read_manifest(self.path)
        have, want = identity(manifest), identity(wanted)
        diff = [k for k in IDENTITY_KEYS if have[k] != want[k]]
        if diff:
            lines = "; ".join(
                f"{k}: store has {have[k]!r}, this run wants {want[k]!r}" for k in diff
            )
            raise StoreError(
                f"cannot resume into {self.path}: it was made with different "
                f"settings ({lines}). Use --overwrite (resume=False) to start afresh, "
                "or choose another output folder."
            )
        for p in self.path.glob(".*.tmp"):  # half-written files of a killed run
            p.unlink()
        good = 0
        for i, shard in enumerate(manifest["shards"]):
            problem = self._check_shard(shard, manifest, verify)
            if problem:
                self.repaired.append(f"{shard['file']}: {problem}; it and later shards are redone")
                break
            good = i + 1
        listed = {s["file"] for s in manifest["shards"][:good]} | {
            s["ids_file"] for s in manifest["shards"][:good]
        }
        for p in self.path.glob("shard_*"):  # orphans: renamed but never listed (killed in between)
            if p.name not in listed:
                p.unlink()
        self.manifest = manifest
        if good < len(manifest["shards"]):
            self.truncate(good)
        return self.manifest

    def _check_shard(self, shard: dict, manifest: dict, verify: str) -> str | None:
        for key in ("file", "ids_file"):
            p = self.path / shard[key]
            if not p.is_file():
                return f"{shard[key]} is missing"
        p = self.path / shard["file"]
        if p.stat().st_size != shard["bytes"]:
            return f"size {p.stat().st_size} != recorded {shard['bytes']}"
        if verify == "checksum" and sha256_file(p) != shard["sha256"]:
            return "checksum mismatch"
        if (
            verify == "checksum"
            and sha256_file(self.path / shard["ids_file"]) != shard["ids_sha256"]
        ):
            return "ids file checksum mismatch"
        return None

    def truncate(self, n_shards: int) -> None:
        """Keep only the first ``n_shards`` shards (lines up the stores of several layers)."""
        m = self.manifest
        drop = m["shards"][n_shards:]
        m["shards"] = m["shards"][:n_shards]
        stop = m["shards"][-1]["source_stop"] if m["shards"] else 0
        m["next_source_index"] = stop
        m["skipped"] = [s for s in m["skipped"] if s["index"] < stop]
        m["n_images"] = sum(s["n_images"] for s in m["shards"])
        m["n_tokens"] = m["n_images"] * m["tokens_per_image"]
        m["complete"] = False
        self._save()
        for s in drop:
            for key in ("file", "ids_file"):
                (self.path / s[key]).unlink(missing_ok=True)

    def committed_ids(self) -> Iterator[tuple[int, str]]:
        """(source index, image id) of every committed image, for checking the source matches."""
        for shard in self.manifest["shards"]:
            rec = json.loads((self.path / shard["ids_file"]).read_text())
            yield from zip(rec["source_indices"], rec["ids"])

    def commit_shard(
        self,
        array: np.ndarray,
        ids: Sequence[str],
        source_indices: Sequence[int],
        labels: Sequence[int | None] | None,
        skipped: Sequence[dict],
        source_stop: int,
    ) -> dict:
        """Write one shard (+ its ids) atomically, then list it in the manifest."""
        m = self.manifest
        want = (len(ids), m["tokens_per_image"], m["d_model"])
        if tuple(array.shape) != want or array.dtype != DTYPES[m["dtype"]]:
            raise StoreError(
                f"shard array {array.shape} {array.dtype} does not match the store "
                f"({want} {m['dtype']})"
            )
        i = self.n_shards
        name, ids_name = shard_file(i), ids_file(i)
        array = np.ascontiguousarray(array)
        nbytes, sha = atomic_write(
            self.path / name, lambda fh: np.lib.format.write_array(fh, array, allow_pickle=False)
        )
        rec = {
            "ids": list(ids),
            "source_indices": [int(s) for s in source_indices],
            "labels": None
            if labels is None or all(y is None for y in labels)
            else [None if y is None else int(y) for y in labels],
        }
        _, ids_sha = atomic_write(
            self.path / ids_name, lambda fh: fh.write(json.dumps(rec).encode())
        )
        first = m["n_images"]
        source_start = int(source_indices[0]) if len(source_indices) else int(source_stop)
        m["shards"].append(
            {
                "file": name,
                "ids_file": ids_name,
                "n_images": len(ids),
                "first_image": first,
                "source_start": source_start,
                "source_stop": int(source_stop),
                "bytes": nbytes,
                "sha256": sha,
                "ids_sha256": ids_sha,
            }
        )
        self._advance(skipped, source_stop)
        m["n_images"] = first + len(ids)
        m["n_tokens"] = m["n_images"] * m["tokens_per_image"]
        self._save()
        return m["shards"][-1]

    def finish(self, skipped: Sequence[dict], source_stop: int) -> None:
        """Mark the store complete (after the last shard), recording trailing skipped images."""
        self._advance(skipped, source_stop)
        self.manifest["complete"] = True
        self._save()

    def _advance(self, skipped: Sequence[dict], source_stop: int) -> None:
        self.manifest["skipped"].extend(dict(s) for s in skipped)
        self.manifest["next_source_index"] = int(source_stop)

    def _save(self) -> None:
        self.manifest["updated_at"] = now()
        atomic_write_json(self.path / MANIFEST, self.manifest, indent=1)

    def close(self) -> None:
        if not self._lock_fh.closed:
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            finally:
                self._lock_fh.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["StoreWriter"]
