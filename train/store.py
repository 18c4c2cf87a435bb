"""The activation store: backbone tokens of one layer, on disk, streamed without loading it all.

Layout of a store folder::

    manifest.json              format, model identity, layer, token kinds, layout, dtype, shards,
                               skipped images, complete flag (rewritten atomically per shard)
    shard_00000.npy            [n_images, tokens_per_image, d_model] float16/float32 (.npy, mmap-able)
    shard_00000.ids.json       image ids, source indices and labels of the shard's rows

Why this shape: ``.npy`` is the simplest format that numpy can memory-map with no pickle; shards
are written once, to a temp file that is fsynced and renamed, and only then listed in the manifest,
so a crash at any instant leaves a store that resumes into a byte-identical result.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds

FORMAT = "saescope.activation_store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES: dict[str, np.dtype] = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
# what must match for a run to resume into an existing store
IDENTITY_KEYS = ("model_id", "revision", "preprocess", "layer", "token_kinds", "dtype", "d_model",
                 "layout", "tokens_per_image", "shard_images")


class StoreError(ValueError):
    """An activation store is missing, damaged, or incompatible with the request."""


def shard_file(i: int) -> str:
    return f"shard_{i:05d}.npy"


def ids_file(i: int) -> str:
    return f"shard_{i:05d}.ids.json"


def check_dtype(dtype: str) -> np.dtype:
    if str(dtype) not in DTYPES:
        raise StoreError(f"unsupported store dtype {dtype!r}: use one of {sorted(DTYPES)} "
                         "(numpy has no bfloat16)")
    return DTYPES[str(dtype)]


# -- atomic file helpers ----------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
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
    """File wrapper that hashes and counts what is written (one pass over the shard bytes)."""

    def __init__(self, fh):
        self.fh, self.sha, self.n = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self.sha.update(mv)
        self.n += len(mv)
        return self.fh.write(mv)


def _atomic_write(path: Path, write) -> tuple[int, str]:
    """Write via ``write(fileobj)`` to a hidden temp file, fsync, rename; return (bytes, sha256)."""
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as fh:
        hw = _HashingWriter(fh)
        write(hw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return hw.n, hw.sha.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> tuple[int, str]:
    data = json.dumps(obj, indent=1).encode()
    out = _atomic_write(path, lambda fh: fh.write(data))
    _fsync_dir(path.parent)
    return out


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(block)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            sha.update(view[:n])
    return sha.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_manifest(path: Path) -> dict:
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
        raise StoreError(f"{mpath} is not an activation-store manifest (format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise StoreError(f"{path}: unknown activation-store format version {version!r}; this "
                         f"saescope reads version {FORMAT_VERSION}"
                         + (" (the store was made by a newer saescope: upgrade)" if newer else ""))
    return manifest


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
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


def new_manifest(*, model: dict, layer: int, layer_requested: int, kinds: Sequence[str | TokenKind],
                 layout: TokenLayout, dtype: str, shard_images: int, source: dict | None = None,
                 label_names: list[str] | None = None) -> dict:
    """A fresh manifest (no shards yet) for the given backbone description and selection."""
    kinds = parse_kinds(kinds)
    check_dtype(dtype)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
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
        "created_at": _now(),
        "updated_at": _now(),
    }


# -- writing --------------------------------------------------------------------------------

class StoreWriter:
    """Creates or resumes one store and commits shards atomically.

    Holds an exclusive ``flock`` on ``.lock`` so two extractions cannot write one store; the
    kernel releases it if the process is killed.
    """

    def __init__(self, path: str | os.PathLike, manifest: dict, *, resume: bool = True,
                 verify: str = "checksum"):
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
                raise StoreError(f"{mpath} belongs to something other than an activation store; "
                                 "refusing to overwrite it: choose another output folder")
        for p in self.path.iterdir():
            n = p.name
            if n == MANIFEST or (n.startswith("shard_") and n.endswith((".npy", ".ids.json"))) or \
                    (n.startswith(".") and n.endswith(".tmp")):
                p.unlink()

    def _resume(self, wanted: dict, verify: str) -> dict:
        manifest = _read_manifest(self.path)
        have, want = identity(manifest), identity(wanted)
        diff = [k for k in IDENTITY_KEYS if have[k] != want[k]]
        if diff:
            lines = "; ".join(f"{k}: store has {have[k]!r}, this run wants {want[k]!r}"
                              for k in diff)
            raise StoreError(f"cannot resume into {self.path}: it was made with different "
                             f"settings ({lines}). Use --overwrite (resume=False) to start afresh, "
                             "or choose another output folder.")
        for p in self.path.glob(".*.tmp"):  # half-written files of a killed run
            p.unlink()
        good = 0
        for i, shard in enumerate(manifest["shards"]):
            problem = self._check_shard(shard, manifest, verify)
            if problem:
                self.repaired.append(f"{shard['file']}: {problem}; it and later shards are redone")
                break
            good = i + 1
        listed = {s["file"] for s in manifest["shards"][:good]} | \
                 {s["ids_file"] for s in manifest["shards"][:good]}
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
        if verify == "checksum" and file_sha256(p) != shard["sha256"]:
            return "checksum mismatch"
        if verify == "checksum" and file_sha256(self.path / shard["ids_file"]) != shard["ids_sha256"]:
            return "ids file checksum mismatch"
        return None

    def truncate(self, n_shards: int) -> None:
        """Keep only the first ``n_shards`` shards (used to line up the stores of several layers)."""
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

    def commit_shard(self, array: np.ndarray, ids: Sequence[str], source_indices: Sequence[int],
                     labels: Sequence[int | None] | None, skipped: Sequence[dict],
                     source_stop: int) -> dict:
        """Write one shard (+ its ids) atomically, then list it in the manifest."""
        m = self.manifest
        want = (len(ids), m["tokens_per_image"], m["d_model"])
        if tuple(array.shape) != want or array.dtype != DTYPES[m["dtype"]]:
            raise StoreError(f"shard array {array.shape} {array.dtype} does not match the store "
                             f"({want} {m['dtype']})")
        i = self.n_shards
        name, ids_name = shard_file(i), ids_file(i)
        array = np.ascontiguousarray(array)
        nbytes, sha = _atomic_write(self.path / name, lambda fh: np.lib.format.write_array(
            fh, array, allow_pickle=False))
        rec = {"ids": list(ids), "source_indices": [int(s) for s in source_indices],
               "labels": None if labels is None or all(l is None for l in labels)
               else [None if l is None else int(l) for l in labels]}
        _, ids_sha = _atomic_write(self.path / ids_name,
                                   lambda fh: fh.write(json.dumps(rec).encode()))
        first = m["n_images"]
        m["shards"].append({"file": name, "ids_file": ids_name, "n_images": len(ids),
                            "first_image": first, "source_start": int(source_indices[0]) if len(
                                source_indices) else int(source_stop), "source_stop": int(source_stop),
                            "bytes": nbytes, "sha256": sha, "ids_sha256": ids_sha})
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
        self.manifest["updated_at"] = _now()
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def close(self) -> None:
        if not self._lock_fh.closed:
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            finally:
                self._lock_fh.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- reading --------------------------------------------------------------------------------

class _Shard:
    __slots__ = ("path", "n", "offset", "first", "_mmap")

    def __init__(self, path: Path, n: int, offset: int, first: int):
        self.path, self.n, self.offset, self.first, self._mmap = path, n, offset, first, None


class ActivationStore:
    """Read access to a store: validated on open, streamed in shuffled batches, never fully loaded.

    ``tokens``/``sample`` use memory maps; ``iter_batches`` reads contiguous chunks with plain
    reads so that even resident memory stays flat while streaming a store larger than RAM.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = False):
        self.path = Path(path)
        self.manifest = m = _read_manifest(self.path)
        try:
            self.dtype = check_dtype(m["dtype"])
            self.layout = TokenLayout.from_dict(m["layout"])
            self.kinds: tuple[TokenKind, ...] = parse_kinds(m["token_kinds"])
            self.tokens_per_image = int(m["tokens_per_image"])
            self.d_model = int(m["d_model"])
            shards = list(m["shards"])
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{self.path / MANIFEST} is missing or has a bad field ({err})") from err
        self._shards: list[_Shard] = []
        first = 0
        row_bytes = self.tokens_per_image * self.d_model * self.dtype.itemsize
        for s in shards:
            p = self.path / s["file"]
            if not p.is_file():
                raise StoreError(f"{self.path}: shard {s['file']} is missing (the store is damaged; "
                                 "re-run extract with resume to repair it)")
            size = p.stat().st_size
            if size != s["bytes"]:
                raise StoreError(f"{self.path}: shard {s['file']} is truncated or changed "
                                 f"({size} bytes, expected {s['bytes']}); re-run extract to repair")
            try:
                shape, dtype, offset = _npy_header(p)
            except (ValueError, OSError) as err:
                raise StoreError(f"{self.path}: shard {s['file']} has a bad header ({err})") from err
            want = (s["n_images"], self.tokens_per_image, self.d_model)
            if shape != want or dtype != self.dtype or offset + want[0] * row_bytes != size:
                raise StoreError(f"{self.path}: shard {s['file']} holds {shape} {dtype}, the "
                                 f"manifest says {want} {self.dtype}")
            self._shards.append(_Shard(p, int(s["n_images"]), offset, first))
            first += int(s["n_images"])
        self.n_images = first
        self._starts = [s.first for s in self._shards]
        self._ids: list[str] | None = None
        self._labels: list[int | None] | None = None
        if verify:
            self.verify()

    # -- metadata ----------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return self.n_images * self.tokens_per_image

    @property
    def layer(self) -> int:
        return int(self.manifest["layer"])

    @property
    def layer_requested(self) -> int:
        return int(self.manifest.get("layer_requested", self.layer))

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def revision(self) -> str | None:
        return self.manifest.get("revision")

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def skipped(self) -> list[dict]:
        return list(self.manifest.get("skipped", []))

    @property
    def label_names(self) -> list[str] | None:
        return self.manifest.get("label_names")

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return (f"<ActivationStore {self.path}: {self.model_id} layer {self.layer}, "
                f"{self.n_images} images x {self.tokens_per_image} tokens x {self.d_model} "
                f"{self.dtype.name}{'' if self.complete else ', incomplete'}>")

    def _load_ids(self) -> None:
        ids: list[str] = []
        labels: list[int | None] = []
        for s in self.manifest["shards"]:
            rec = json.loads((self.path / s["ids_file"]).read_text())
            ids.extend(rec["ids"])
            labels.extend(rec["labels"] if rec.get("labels") is not None else [None] * len(rec["ids"]))
        self._ids, self._labels = ids, labels

    @property
    def image_ids(self) -> list[str]:
        """Image id of every stored image, in store order."""
        if self._ids is None:
            self._load_ids()
        return list(self._ids)  # type: ignore[arg-type]

    @property
    def labels(self) -> list[int | None]:
        """Label index (into :attr:`label_names`) of every stored image, ``None`` if unlabelled."""
        if self._labels is None:
            self._load_ids()
        return list(self._labels)  # type: ignore[arg-type]

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest (slow: reads the whole store)."""
        for s in self.manifest["shards"]:
            if file_sha256(self.path / s["file"]) != s["sha256"]:
                raise StoreError(f"{self.path}: shard {s['file']} fails its checksum")

    # -- access -------------------------------------------------------------------------------
    def _positions(self, kinds: Sequence[str | TokenKind] | str | None) -> np.ndarray | None:
        """Row positions (within the stored tokens) of ``kinds``; None = all stored tokens."""
        if kinds is None:
            return None
        want = parse_kinds(kinds)
        missing = [k.value for k in want if k not in self.kinds]
        if missing:
            raise StoreError(f"{self.path} holds {[k.value for k in self.kinds]} tokens, not "
                             f"{missing}")
        stored = self.layout.kinds_of(self.kinds)
        pos = np.array([i for i, k in enumerate(stored) if k in want], dtype=np.int64)
        return None if len(pos) == len(stored) else pos

    def _mmap(self, shard: _Shard) -> np.ndarray:
        if shard._mmap is None:
            shard._mmap = np.load(shard.path, mmap_mode="r", allow_pickle=False)
        return shard._mmap

    def _read_rows(self, shard: _Shard, start: int, stop: int, out: np.ndarray | None = None
                   ) -> np.ndarray:
        """Images ``start:stop`` of a shard with one plain read (no page-cache mapping kept)."""
        shape = (stop - start, self.tokens_per_image, self.d_model)
        row = self.tokens_per_image * self.d_model * self.dtype.itemsize
        arr = np.empty(shape, self.dtype) if out is None else out[: shape[0]]
        with open(shard.path, "rb", buffering=0) as fh:
            fh.seek(shard.offset + start * row)
            view = memoryview(arr.reshape(-1).view(np.uint8))
            got = 0
            while got < len(view):
                n = fh.readinto(view[got:])
                if not n:
                    raise StoreError(f"{shard.path} ended early (truncated shard)")
                got += n
        return arr

    def _locate(self, image_index: int) -> tuple[_Shard, int]:
        if not 0 <= image_index < self.n_images:
            raise IndexError(f"image index {image_index} out of range (store has {self.n_images})")
        k = bisect.bisect_right(self._starts, image_index) - 1
        return self._shards[k], image_index - self._shards[k].first

    def tokens(self, image_index: int, kinds: Sequence[str] | str | None = None) -> torch.Tensor:
        """The stored tokens of one image as float32 ``[T, d]`` (restricted to ``kinds``)."""
        shard, row = self._locate(image_index)
        arr = np.array(self._mmap(shard)[row], dtype=np.float32)  # a copy: mmaps are read-only
        pos = self._positions(kinds)
        return torch.from_numpy(np.ascontiguousarray(arr if pos is None else arr[pos]))

    def iter_images(self, batch_images: int = 64, kinds: Sequence[str] | str | None = None,
                    start: int = 0, stop: int | None = None
                    ) -> Iterator[tuple[int, torch.Tensor]]:
        """In store order: ``(first image index, float32 [b, T, d])`` (for exemplar passes)."""
        pos = self._positions(kinds)
        stop = self.n_images if stop is None else min(stop, self.n_images)
        i = max(0, start)
        while i < stop:
            shard, row = self._locate(i)
            n = min(batch_images, shard.n - row, stop - i)
            arr = self._read_rows(shard, row, row + n)
            if pos is not None:
                arr = arr[:, pos]
            yield i, torch.from_numpy(arr.astype(np.float32))
            i += n

    def sample(self, n: int, seed: int = 0, kinds: Sequence[str] | str | None = None
               ) -> torch.Tensor:
        """``min(n, n_tokens)`` tokens drawn uniformly without replacement, float32 ``[n, d]``.

        For estimating normalisation statistics; reads only the sampled rows.
        """
        pos = self._positions(kinds)
        per_image = self.tokens_per_image if pos is None else len(pos)
        total = self.n_images * per_image
        n = min(int(n), total)
        out = np.empty((n, self.d_model), np.float32)
        if n == 0:
            return torch.from_numpy(out)
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(total, size=n, replace=False))
        images, toks = np.divmod(flat, per_image)
        if pos is not None:
            toks = pos[toks]
        done = 0
        for shard in self._shards:
            lo = np.searchsorted(images, shard.first)
            hi = np.searchsorted(images, shard.first + shard.n)
            if hi > lo:
                mm = self._mmap(shard)
                out[done: done + hi - lo] = mm[images[lo:hi] - shard.first, toks[lo:hi]]
                done += hi - lo
        perm = rng.permutation(n)
        return torch.from_numpy(out[perm])

    def iter_batches(self, batch_size: int, shuffle_buffer: int = 2 ** 18, seed: int = 0,
                     loop: bool = False, kinds: Sequence[str] | str | None = None,
                     skip_batches: int = 0, drop_last: bool = False,
                     chunk_tokens: int | None = None) -> Iterator[torch.Tensor]:
        """Shuffled float32 token batches ``[batch_size, d]``, deterministic for ``seed``.

        Chunks of consecutive images, taken from shards in random order, are swapped into random
        slots of a ``shuffle_buffer``-token buffer; the tokens they displace are emitted. Memory
        is bounded by the buffer plus one chunk whatever the store size. ``loop`` streams epochs
        forever (the buffer carries over); otherwise the buffer is drained at the end and the
        last batch may be short (unless ``drop_last``). ``skip_batches`` fast-forwards a resumed
        training run to exactly where it stopped.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        pos = self._positions(kinds)
        per_image = self.tokens_per_image if pos is None else len(pos)
        if self.n_images == 0 or per_image == 0:
            return
        d = self.d_model
        cap = max(1, int(shuffle_buffer))
        chunk_tokens = chunk_tokens or max(per_image, min(cap // 8, 1 << 16))
        chunk_images = max(1, chunk_tokens // per_image)
        chunks = [(k, a, min(a + chunk_images, s.n)) for k, s in enumerate(self._shards)
                  for a in range(0, s.n, chunk_images)]
        raw = np.empty((chunk_images, self.tokens_per_image, d), self.dtype)
        buf = np.empty((cap, d), self.dtype)
        filled = 0
        carry = np.empty((0, d), self.dtype)
        emitted = 0
        epoch = 0

        def emit(x: np.ndarray, final: bool = False) -> Iterator[torch.Tensor]:
            nonlocal carry, emitted
            if len(carry):
                x = np.concatenate([carry, x])
            n_full = len(x) // batch_size
            for b in range(n_full):
                if emitted >= skip_batches:
                    yield torch.from_numpy(x[b * batch_size:(b + 1) * batch_size].astype(np.float32))
                emitted += 1
            carry = x[n_full * batch_size:].copy()
            if final and len(carry) and not drop_last:
                if emitted >= skip_batches:
                    yield torch.from_numpy(carry.astype(np.float32))
                emitted += 1
                carry = carry[:0]

        while True:
            rng = np.random.default_rng([int(seed), epoch])
            for c in rng.permutation(len(chunks)):
                k, a, b = chunks[c]
                x = self._read_rows(self._shards[k], a, b, out=raw)
                if pos is not None:
                    x = x[:, pos]
                x = x.reshape(-1, d)
                if filled < cap:
                    take = min(cap - filled, len(x))
                    buf[filled: filled + take] = x[:take]
                    filled += take
                    x = x[take:]
                    if not len(x):
                        continue
                for a in range(0, len(x), cap):  # pieces: a chunk may exceed a tiny buffer
                    piece = x[a:a + cap]
                    slots = rng.choice(cap, size=len(piece), replace=False)
                    out = buf[slots]
                    buf[slots] = piece
                    yield from emit(out)
            if not loop:  # drain the buffer in random order, a chunk at a time
                perm = rng.permutation(filled)
                step = max(chunk_tokens, batch_size)
                for a in range(0, filled, step):
                    yield from emit(buf[perm[a:a + step]], final=a + step >= filled)
                if not filled:
                    yield from emit(buf[:0], final=True)
                return
            epoch += 1


def open_store(path: str | os.PathLike) -> ActivationStore:
    return ActivationStore(path)


__all__ = ["ActivationStore", "StoreWriter", "StoreError", "new_manifest", "identity", "open_store",
           "FORMAT", "FORMAT_VERSION", "MANIFEST", "DTYPES", "check_dtype", "shard_file", "ids_file",
           "file_sha256", "write_json_atomic"]
