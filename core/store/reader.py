"""Reading an activation store: validated on open, streamed in shuffled batches, never loaded."""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from saescope.core.fileio import sha256_file
from saescope.core.store.format import MANIFEST, StoreError, check_dtype, npy_header, read_manifest
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds


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
        self.manifest = m = read_manifest(self.path)
        try:
            self.dtype = check_dtype(m["dtype"])
            self.layout = TokenLayout.from_dict(m["layout"])
            self.kinds: tuple[TokenKind, ...] = parse_kinds(m["token_kinds"])
            self.tokens_per_image = int(m["tokens_per_image"])
            self.d_model = int(m["d_model"])
            shards = list(m["shards"])
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(
                f"{self.path / MANIFEST} is missing or has a bad field ({err})"
            ) from err
        self._shards: list[_Shard] = []
        first = 0
        row_bytes = self.tokens_per_image * self.d_model * self.dtype.itemsize
        for s in shards:
            p = self.path / s["file"]
            if not p.is_file():
                raise StoreError(
                    f"{self.path}: shard {s['file']} is missing (the store is "
                    "damaged; re-run extract with resume to repair it)"
                )
            size = p.stat().st_size
            if size != s["bytes"]:
                raise StoreError(
                    f"{self.path}: shard {s['file']} is truncated or changed "
                    f"({size} bytes, expected {s['bytes']}); re-run extract to repair"
                )
            try:
                shape, dtype, offset = npy_header(p)
            except (ValueError, OSError) as err:
                raise StoreError(
                    f"{self.path}: shard {s['file']} has a bad header ({err})"
                ) from err
            want = (s["n_images"], self.tokens_per_image, self.d_model)
            if shape != want or dtype != self.dtype or offset + want[0] * row_bytes != size:
                raise StoreError(
                    f"{self.path}: shard {s['file']} holds {shape} {dtype}, the "
                    f"manifest says {want} {self.dtype}"
                )
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
        return (
            f"<ActivationStore {self.path}: {self.model_id} layer {self.layer}, "
            f"{self.n_images} images x {self.tokens_per_image} tokens x {self.d_model} "
            f"{self.dtype.name}{'' if self.complete else ', incomplete'}>"
        )

    def _load_ids(self) -> None:
        ids: list[str] = []
        labels: list[int | None] = []
        for s in self.manifest["shards"]:
            rec = json.loads((self.path / s["ids_file"]).read_text())
            ids.extend(rec["ids"])
            labels.extend(
                rec["labels"] if rec.get("labels") is not None else [None] * len(rec["ids"])
            )
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
            if sha256_file(self.path / s["file"]) != s["sha256"]:
                raise StoreError(f"{self.path}: shard {s['file']} fails its checksum")

    # -- access -------------------------------------------------------------------------------
    def _positions(self, kinds: Sequence[str | TokenKind] | str | None) -> np.ndarray | None:
        """Row positions (within the stored tokens) of ``kinds``; None = all stored tokens."""
        if kinds is None:
            return None
        want = parse_kinds(kinds)
        missing = [k.value for k in want if k not in self.kinds]
        if missing:
            raise StoreError(
                f"{self.path} holds {[k.value for k in self.kinds]} tokens, not {missing}"
            )
        stored = self.layout.kinds_of(self.kinds)
        pos = np.array([i for i, k in enumerate(stored) if k in want], dtype=np.int64)
        return None if len(pos) == len(stored) else pos

    def _mmap(self, shard: _Shard) -> np.ndarray:
        if shard._mmap is None:
            shard._mmap = np.load(shard.path, mmap_mode="r", allow_pickle=False)
        return shard._mmap

    def _read_rows(
        self, shard: _Shard, start: int, stop: int, out: np.ndarray | None = None
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

    def iter_images(
        self,
        batch_images: int = 64,
        kinds: Sequence[str] | str | None = None,
        start: int = 0,
        stop: int | None = None,
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

    def sample(
        self, n: int, seed: int = 0, kinds: Sequence[str] | str | None = None
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
                out[done : done + hi - lo] = mm[images[lo:hi] - shard.first, toks[lo:hi]]
                done += hi - lo
        perm = rng.permutation(n)
        return torch.from_numpy(out[perm])

    def iter_batches(
        self,
        batch_size: int,
        shuffle_buffer: int = 2**18,
        seed: int = 0,
        loop: bool = False,
        kinds: Sequence[str] | str | None = None,
        skip_batches: int = 0,
        drop_last: bool = False,
        chunk_tokens: int | None = None,
    ) -> Iterator[torch.Tensor]:
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
        chunks = [
            (k, a, min(a + chunk_images, s.n))
            for k, s in enumerate(self._shards)
            for a in range(0, s.n, chunk_images)
        ]
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
                    batch = x[b * batch_size : (b + 1) * batch_size]
                    yield torch.from_numpy(batch.astype(np.float32))
                emitted += 1
            carry = x[n_full * batch_size :].copy()
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
                    buf[filled : filled + take] = x[:take]
                    filled += take
                    x = x[take:]
                    if not len(x):
                        continue
                for a in range(0, len(x), cap):  # pieces: a chunk may exceed a tiny buffer
                    piece = x[a : a + cap]
                    slots = rng.choice(cap, size=len(piece), replace=False)
                    out = buf[slots]
                    buf[slots] = piece
                    yield from emit(out)
            if not loop:  # drain the buffer in random order, a chunk at a time
                perm = rng.permutation(filled)
                step = max(chunk_tokens, batch_size)
                for a in range(0, filled, step):
                    yield from emit(buf[perm[a : a + step]], final=a + step >= filled)
                if not filled:
                    yield from emit(buf[:0], final=True)
                return
            epoch += 1


def open_store(path: str | os.PathLike) -> ActivationStore:
    return ActivationStore(path)


__all__ = ["ActivationStore", "open_store"]
