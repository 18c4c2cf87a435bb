"""Packed exemplar thumbnails: one safetensors file of JPEG bytes, written streaming, read mapped.

Why one file: thousands of small files make Hub uploads and downloads slow. Why streaming and
memory-mapped: a bundle of the reference shape (an ImageNet SAE: about a million exemplar
images) holds several GB of thumbnails; the writer must not hold them all in memory, and an app
must not read them all at start. Layout of ``thumbnails.safetensors`` (a valid safetensors file)::

    data         uint8 [D]      the JPEG bytes, concatenated (zero-padded to a multiple of 8)
    offsets      int64 [n + 1]  blob i is data[offsets[i]:offsets[i + 1]]
    image_index  int64 [n]      the exemplar image index of blob i

``thumbnails.json`` holds the edge size, the image source spec, the image ids and sizes; it is
read only when an id or the source is asked for.
"""

from __future__ import annotations

import io
import json
import struct
from array import array
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from saescope.core.bundle_files import BundleError
from saescope.core.fileio import atomic_path, atomic_write_text

THUMBS = "thumbnails.safetensors"
THUMBS_META = "thumbnails.json"
_HEADER_BYTES = 1024  # reserved for the safetensors header, written last (padded with spaces)
_DTYPES = {"U8": np.uint8, "I64": np.int64}


def _encode(image: Image.Image | bytes, size: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes and pixel size of one thumbnail; bytes pass through (already encoded)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        blob = bytes(image)
        with Image.open(io.BytesIO(blob)) as im:  # reads the header only
            return blob, im.size
    im = image.convert("RGB")
    im.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), im.size


def pack_thumbnails(
    folder: Path,
    images: Iterable[tuple[int, str, Image.Image | bytes]],
    size: int,
    source_spec: str | None,
    quality: int = 85,
) -> int:
    """JPEG-encode ``(image_index, image_id, image)`` thumbnails into one packed file.

    ``image`` may be JPEG bytes already (stored as they are: re-packing or benchmarks). The
    blobs stream to disk; memory is the offsets and ids, not the pixels.
    """
    folder = Path(folder)
    ends, index, ids, sizes = array("q"), array("q"), [], []
    with atomic_path(folder / THUMBS, fsync=False) as tmp, open(tmp, "wb") as fh:
        fh.write(b"\0" * (8 + _HEADER_BYTES))
        total = 0
        for image_index, image_id, image in images:
            blob, wh = _encode(image, size, quality)
            fh.write(blob)
            total += len(blob)
            ends.append(total)
            index.append(int(image_index))
            ids.append(image_id)
            sizes.append(list(wh))
        pad = -total % 8  # keeps the int64 arrays that follow aligned
        fh.write(b"\0" * pad)
        offsets = np.zeros(len(ends) + 1, np.int64)
        offsets[1:] = np.frombuffer(ends, np.int64) if len(ends) else []
        fh.write(offsets.tobytes())
        fh.write(np.asarray(index, np.int64).tobytes())
        a, b = total + pad, total + pad + offsets.nbytes
        header = {
            "__metadata__": {"format": "saescope-thumbnails"},
            "data": {"dtype": "U8", "shape": [a], "data_offsets": [0, a]},
            "offsets": {"dtype": "I64", "shape": [len(offsets)], "data_offsets": [a, b]},
            "image_index": {
                "dtype": "I64",
                "shape": [len(index)],
                "data_offsets": [b, b + 8 * len(index)],
            },
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > _HEADER_BYTES:  # ~300 bytes in practice; never write over the data
            raise RuntimeError(f"thumbnail header of {len(text)} bytes > {_HEADER_BYTES}")
        fh.seek(0)
        fh.write(struct.pack("<Q", _HEADER_BYTES) + text.ljust(_HEADER_BYTES, b" "))
    atomic_write_text(
        folder / THUMBS_META,
        json.dumps({"size": size, "source": source_spec, "image_ids": ids, "sizes": sizes}),
        fsync=False,
    )
    return len(ends)


def _read_header(path: Path) -> tuple[int, dict]:
    """(offset of the data buffer, tensor table) of a safetensors file."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        try:
            header = json.loads(fh.read(n))
        except ValueError as err:
            raise BundleError(f"{path} has a damaged safetensors header ({err})") from err
    return 8 + n, header


class Thumbnails:
    """Random access to the packed exemplar thumbnails of a bundle (memory-mapped JPEG bytes)."""

    def __init__(
        self,
        data: np.ndarray,
        offsets: np.ndarray,
        image_index: np.ndarray,
        meta_path: Path | None = None,
    ):
        self.data, self.offsets = data, offsets
        self.image_index = np.asarray(image_index, np.int64)
        self._order = np.argsort(self.image_index, kind="stable")
        self._sorted = self.image_index[self._order]
        self._meta_path = meta_path

    @classmethod
    def load(cls, folder: Path) -> Thumbnails:
        path = Path(folder) / THUMBS
        base, header = _read_header(path)
        arrays = {}
        for name in ("data", "offsets", "image_index"):
            info = header.get(name)
            if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
                raise BundleError(f"{path} is not a thumbnails file (no {name} tensor)")
            dtype = _DTYPES[info["dtype"]]
            a, b = info["data_offsets"]
            count = (b - a) // np.dtype(dtype).itemsize
            if name == "data":
                arrays[name] = (
                    np.memmap(path, dtype, "r", offset=base + a, shape=(count,))
                    if count
                    else np.zeros(0, dtype)
                )
            else:
                arrays[name] = np.fromfile(path, dtype, count=count, offset=base + a)
        return cls(arrays["data"], arrays["offsets"], arrays["image_index"], folder / THUMBS_META)

    @cached_property
    def _meta(self) -> dict:
        if self._meta_path is None or not self._meta_path.is_file():
            return {}
        return json.loads(self._meta_path.read_text())

    @property
    def image_ids(self) -> list[str]:
        return self._meta.get("image_ids", [])

    @property
    def source(self) -> str | None:
        return self._meta.get("source")

    def _position(self, image_index: int) -> int | None:
        i = int(image_index)
        j = int(np.searchsorted(self._sorted, i))
        if j < len(self._sorted) and self._sorted[j] == i:
            return int(self._order[j])
        return None

    def __contains__(self, image_index: int) -> bool:
        return self._position(image_index) is not None

    def __len__(self) -> int:
        return len(self.image_index)

    def blob(self, image_index: int) -> bytes:
        """The JPEG bytes of one thumbnail."""
        n = self._position(image_index)
        if n is None:
            raise KeyError(f"image {image_index} has no thumbnail in this bundle")
        return self.data[self.offsets[n] : self.offsets[n + 1]].tobytes()

    def get(self, image_index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.blob(image_index))).convert("RGB")

    def image_id(self, image_index: int) -> str:
        n = self._position(image_index)
        if n is None:
            raise KeyError(f"image {image_index} has no thumbnail in this bundle")
        return self.image_ids[n]


__all__ = ["THUMBS", "THUMBS_META", "Thumbnails", "pack_thumbnails"]
