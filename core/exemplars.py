"""The exemplars format: top-k images per SAE feature with patch maps, and feature statistics.

Why in core: the apps and the bundle read exemplars; only ``saescope.train.exemplars`` builds
them. Folder format (``format_version`` 1)::

    exemplars.safetensors     indices [F, k] int64 (image index, -1 = empty slot), values [F, k]
                              float32 (max patch activation), maps [F, k, n_patches] float16 --
                              or maps uint8 + map_scales [F, k] float32 (map = maps * scale)
    feature_stats.safetensors frequency, mean, mean_active, max [F] float32 (frequency, means in
                              float64 sums), histogram [F, n_bins] int64, bin_edges [n_bins + 1]
    exemplars.json            format, format_version, k, grid, n_patches, map_dtype, n_images,
                              n_tokens, token_kinds, model_id, layer, per_source, images (index,
                              id, source_index, origin of every referenced image), source (the
                              store's source description: spec, start/stop), store, sae (name,
                              config)

Image indices are store indices (or source indices when built from images); ``source`` + the
recorded ``source_index`` re-load the pixels (:meth:`Exemplars.load_image`). ``origin`` is the
source index of the *original* image an image is a view of (its first view in the source; the
image itself for sources without augmented views, see :func:`source_origins`): ``per_source``
(``null`` = unlimited) caps how many exemplars of one feature share an origin.

Why the maps are read lazily: at the reference scale (24,576 features x 128 exemplars x 256
patches) they are 0.8 GB in uint8, 1.6 GB in float16, while a page shows one feature.
:meth:`Exemplars.load` keeps indices, values and statistics in RAM (``O(F x k)``) and reads one
feature's maps from the file on demand (:class:`ExemplarMaps`).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from saescope.core import formats
from saescope.core.fileio import atomic_path, atomic_write_text

FORMAT = formats.EXEMPLARS.name
FORMAT_VERSION = formats.EXEMPLARS.version
EXEMPLARS_FILE = "exemplars.safetensors"
STATS_FILE = "feature_stats.safetensors"
META_FILE = "exemplars.json"
MAP_DTYPES = ("float16", "uint8")


class ExemplarError(ValueError):
    """Exemplars that cannot be built (SAE/store mismatch) or read (damaged/unknown folder)."""


def histogram_edges(lo: float = 1e-3, hi: float = 1e3, per_decade: int = 10) -> torch.Tensor:
    """Log-spaced bin edges shared by every feature (float32).

    The end bins are open: activations below ``lo`` count in the first bin, those at or above
    ``hi`` in the last, so each feature's histogram sums to its number of firing tokens.
    """
    if not 0 < lo < hi:
        raise ValueError(f"histogram needs 0 < lo < hi, got {lo}, {hi}")
    n = max(1, int(round(np.log10(hi / lo) * per_decade)))
    return torch.logspace(np.log10(lo), np.log10(hi), n + 1, dtype=torch.float64).float()


def _origin_rep(desc: dict, b: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Smallest index >= ``lo`` of the same original image as ``b``.

    ``b`` and ``lo`` index the source ``desc`` describes before its own slice (a concat's
    offsets count its parts' sliced lengths). The view-major photo rule is shift-invariant, so a
    photos slice's start does not matter; a concat's does (it picks the part).
    """
    kind, parts = desc.get("kind"), desc.get("parts")
    if kind == "builtin:photos" and desc.get("photos") and int(desc.get("views") or 1) > 1:
        n = len(desc["photos"])  # view-major: image b is photo b % n
        return lo + (b - lo) % n
    if kind == "concat" and parts:
        offsets = np.cumsum([0] + [int(p.get("n_images") or 0) for p in parts])
        which = np.searchsorted(offsets, b, side="right") - 1
        out = b.copy()
        for j, part in enumerate(parts):
            sel = which == j
            if sel.any():  # (a part's own slice start shifts b and lo alike: no effect)
                local_lo = np.maximum(lo[sel] - offsets[j], 0)
                out[sel] = _origin_rep(part, b[sel] - offsets[j], local_lo) + offsets[j]
        return out
    return b


def source_origins(description: dict | None, source_indices) -> np.ndarray:
    """The origin of each image of a source: the index of the first image that shows the same
    original picture (int64, same shape as ``source_indices``).

    Why from the description: augmented views of one photo count as one source image when
    exemplars are diversified, and the store records only each image's source index and the
    source's description (``ImageSource.describe``). ``builtin:photos`` is view-major (photo
    ``i % n_photos``), concatenations and slices are followed; any other source has one image
    per original, so an image is its own origin. Origins are source indices, so
    :meth:`Exemplars.load_image` and the source's ids apply to them.
    """
    idx = np.asarray(source_indices, dtype=np.int64)
    desc = description or {}
    start = int(desc.get("start") or 0)
    base = idx + start
    return _origin_rep(desc, base, np.full_like(base, start)) - start


_SAFETENSORS_DTYPES = {"F16": np.float16, "U8": np.uint8}


def _tensor_offset(path: Path, name: str) -> tuple[int, tuple[int, ...], str]:
    """(absolute byte offset, shape, dtype) of tensor ``name`` in a safetensors file.

    The layout: an 8-byte little-endian header length, a JSON header with each tensor's dtype,
    shape and ``data_offsets`` (relative to the end of the header), then the raw bytes.
    """
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    entry = header[name]
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise ExemplarError(f"{path}: {name} has unsupported dtype {entry['dtype']}")
    return 8 + n + int(entry["data_offsets"][0]), tuple(entry["shape"]), entry["dtype"]


class ExemplarMaps:
    """The ``[F, k, n_patches]`` patch maps of a saved exemplars folder, read one feature at a
    time (``maps[f]`` -> float16 ``[k, n_patches]``; ``maps[f, j]`` -> ``[n_patches]``).

    Why: the whole array is 0.8-1.6 GB at the reference scale; a feature is ``k x n_patches``
    values at a known offset, so a page reads ~64 KB. The file stays open (a replaced file does
    not change what this reads); reads are serialised by a lock, so threads may share it.
    """

    dtype = torch.float16

    def __init__(self, path: str | os.PathLike, scales: torch.Tensor | None = None):
        self.path = Path(path)
        self._offset, shape, st_dtype = _tensor_offset(self.path, "maps")
        if len(shape) != 3:
            raise ExemplarError(f"{self.path}: maps must be [F, k, n_patches], got {shape}")
        self.shape = torch.Size(shape)
        self._np_dtype = np.dtype(_SAFETENSORS_DTYPES[st_dtype])
        if (self._np_dtype == np.uint8) != (scales is not None):
            raise ExemplarError(f"{self.path}: uint8 maps need map_scales (and only they)")
        self._scales = scales
        self._row = shape[1] * shape[2] * self._np_dtype.itemsize
        self._fh = open(self.path, "rb", buffering=0)  # kept open: lives with the object
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.shape[0])

    def _read(self, first: int, n: int) -> torch.Tensor:
        buf = bytearray(n * self._row)
        with self._lock:
            self._fh.seek(self._offset + first * self._row)
            got = self._fh.readinto(buf)
        if got != len(buf):
            raise ExemplarError(f"{self.path}: truncated maps (feature {first})")
        arr = np.frombuffer(buf, dtype=self._np_dtype).reshape(n, *self.shape[1:])
        t = torch.from_numpy(arr)
        if self._scales is not None:
            t = (t.float() * self._scales[first : first + n, :, None]).half()
        return t

    def feature(self, feature: int) -> torch.Tensor:
        """float16 ``[k, n_patches]`` maps of one feature (a fresh tensor)."""
        f = int(feature)
        if not 0 <= f < len(self):
            raise IndexError(f"feature {feature} out of range for {len(self)} features")
        return self._read(f, 1)[0]

    def __getitem__(self, item) -> torch.Tensor:
        if isinstance(item, tuple):
            return self.feature(item[0])[item[1:]]
        return self.feature(item)

    def to_tensor(self, block: int = 1024) -> torch.Tensor:
        """All maps as one float16 tensor (``F x k x n_patches x 2`` bytes: for re-saving)."""
        out = torch.empty(self.shape, dtype=torch.float16)
        for a in range(0, len(self), block):
            n = min(block, len(self) - a)
            out[a : a + n] = self._read(a, n)
        return out

    def close(self) -> None:
        self._fh.close()

    def __getstate__(self) -> dict:  # copies and pickles re-open the file
        return {"path": self.path, "scales": self._scales}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["scales"])

    def __repr__(self) -> str:
        return f"<ExemplarMaps {tuple(self.shape)} {self._np_dtype.name} in {self.path}>"


class Exemplar(NamedTuple):
    """One exemplar of a feature (a tuple: ``image_index, image_id, value, patch_map, origin``;
    ``origin``: the source index of the original image, None when unknown)."""

    image_index: int
    image_id: str
    value: float
    patch_map: np.ndarray  # [rows, cols] float32
    origin: int | None = None


@dataclass
class Exemplars:
    """Top-k exemplars and statistics of every feature of one SAE (see the module docstring)."""

    indices: torch.Tensor  # [F, k] int64, -1 = empty
    values: torch.Tensor  # [F, k] float32
    # [F, k, n_patches] float16 when built; read per feature from the file when loaded
    maps: torch.Tensor | ExemplarMaps
    stats: dict[str, torch.Tensor]
    grid: tuple[int, int]
    images: dict[int, tuple[str, int | None]]  # image index -> (image id, source index)
    meta: dict[str, Any] = field(default_factory=dict)
    # image index -> origin (source index of the original image; see source_origins)
    origins: dict[int, int | None] = field(default_factory=dict)
    _source: Any = field(default=None, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def check_feature(self, feature: int) -> int:
        """A valid feature id, or a clear error naming the range."""
        if isinstance(feature, bool):
            raise ValueError(f"feature id must be an integer, got {feature!r}")
        try:
            f = int(feature)
        except (TypeError, ValueError) as err:
            raise ValueError(f"feature id must be an integer, got {feature!r}") from err
        if f != feature or not 0 <= f < self.n_features:
            raise ValueError(
                f"unknown feature {feature!r}: these exemplars cover features "
                f"0..{self.n_features - 1}"
            )
        return f

    def top(self, feature: int, n: int | None = None) -> list[Exemplar]:
        """The feature's exemplars, best first (empty slots left out)."""
        f = self.check_feature(feature)
        out: list[Exemplar] = []
        rows, cols = self.grid
        count = self.k if n is None else max(0, min(int(n), self.k))
        if count == 0 or int(self.indices[f, 0]) < 0:
            return out
        maps = self.feature_maps(f).float().numpy()
        for j in range(count):
            index = int(self.indices[f, j])
            if index < 0:
                break
            image_id = self.images.get(index, (str(index), None))[0]
            patch_map = maps[j].reshape(rows, cols)
            value = float(self.values[f, j])
            out.append(Exemplar(index, image_id, value, patch_map, self.origins.get(index)))
        return out

    def feature_maps(self, feature: int) -> torch.Tensor:
        """float16 ``[k, n_patches]`` patch maps of one feature (read from disk when loaded)."""
        f = self.check_feature(feature)
        if isinstance(self.maps, ExemplarMaps):
            return self.maps.feature(f)
        return self.maps[f]

    def maps_tensor(self) -> torch.Tensor:
        """Every map as one float16 ``[F, k, n_patches]`` tensor (reads all of a loaded file)."""
        if isinstance(self.maps, ExemplarMaps):
            return self.maps.to_tensor()
        return self.maps.half()

    def origin(self, image_index: int) -> int | None:
        """Source index of the original image behind an exemplar image (None when unknown)."""
        return self.origins.get(int(image_index))

    def feature_stats(self, feature: int) -> dict[str, Any]:
        """Frequency, means, max and histogram of one feature as plain Python values."""
        f = self.check_feature(feature)
        d: dict[str, Any] = {
            k: float(self.stats[k][f]) for k in ("frequency", "mean", "mean_active", "max")
        }
        d["histogram"] = self.stats["histogram"][f].tolist()
        d["bin_edges"] = self.stats["bin_edges"].tolist()
        return d

    def open_source(self):
        """The image source the indices refer to (as recorded), opened once and cached."""
        if self._source is None:
            from saescope.core.sources import open_source

            src = self.meta.get("source") or {}
            if not src.get("spec"):
                raise ExemplarError("these exemplars record no image source to load pixels from")
            self._source = open_source(
                src["spec"], start=int(src.get("start") or 0), stop=src.get("stop")
            )
        return self._source

    def load_image(self, image_index: int):
        """The PIL image behind an exemplar's ``image_index`` (re-loaded from the source)."""
        if int(image_index) not in self.images:
            raise ValueError(f"image {image_index} is not one of the exemplar images")
        image_id, source_index = self.images[int(image_index)]
        source = self.open_source()
        if (
            source_index is None
            or not 0 <= source_index < len(source)
            or source.image_id(source_index) != image_id
        ):
            raise ExemplarError(
                f"image {image_id!r} is not at source index {source_index} of "
                f"{source.spec!r} any more (the source changed)"
            )
        return source.load(source_index)

    def _map_blocks(self, block: int = 1024):
        """(first feature, float16 maps of ``block`` features), reading a loaded file lazily."""
        for a in range(0, self.n_features, block):
            n = min(block, self.n_features - a)
            if isinstance(self.maps, ExemplarMaps):
                yield a, self.maps._read(a, n)
            else:
                yield a, self.maps[a : a + n]

    def save(self, folder: str | os.PathLike, map_dtype: str = "float16") -> Path:
        """Write the three files atomically (temp + rename); ``map_dtype`` float16 or uint8.

        uint8 maps are quantised a block of features at a time (no float32 copy of all maps).
        """
        if map_dtype not in MAP_DTYPES:
            raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {map_dtype!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"indices": self.indices.contiguous(), "values": self.values.contiguous()}
        if map_dtype == "uint8":
            q = torch.empty(self.n_features, self.k, self.grid[0] * self.grid[1], dtype=torch.uint8)
            scales = torch.empty(self.n_features, self.k)
            for a, block in self._map_blocks():
                m = block.float()
                sc = m.amax(-1) / 255.0
                m.div_(sc.clamp_min(1e-30)[..., None]).round_().clamp_(0, 255)
                q[a : a + len(m)], scales[a : a + len(m)] = m.to(torch.uint8), sc
            tensors.update(maps=q, map_scales=scales)
        else:
            tensors["maps"] = self.maps_tensor().contiguous()
        idx = sorted(self.images)
        meta = {
            **self.meta,
            **formats.EXEMPLARS.header(),
            "k": self.k,
            "n_features": self.n_features,
            "grid": list(self.grid),
            "n_patches": self.grid[0] * self.grid[1],
            "map_dtype": map_dtype,
            "images": {
                "index": idx,
                "id": [self.images[i][0] for i in idx],
                "source_index": [self.images[i][1] for i in idx],
                "origin": [self.origins.get(i) for i in idx],
            },
        }
        with atomic_path(folder / EXEMPLARS_FILE, fsync=False) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "map_dtype": map_dtype})
        stats = {k: v.contiguous() for k, v in self.stats.items()}
        with atomic_path(folder / STATS_FILE, fsync=False) as tmp:
            save_file(stats, str(tmp), metadata={"format": FORMAT})
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1), fsync=False)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Exemplars:
        """Open a folder: indices, values, statistics and image table in RAM, the maps read per
        feature on demand (:class:`ExemplarMaps`; :meth:`maps_tensor` reads them all)."""
        folder = Path(folder)
        paths = [folder / n for n in (META_FILE, EXEMPLARS_FILE, STATS_FILE)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ExemplarError(f"{folder} is not an exemplars folder (missing {missing})")
        try:
            meta = json.loads(paths[0].read_text())
            with safe_open(str(paths[1]), framework="pt") as fh:
                names = set(fh.keys())
                tensors = {
                    n: fh.get_tensor(n) for n in ("indices", "values", "map_scales") if n in names
                }
            if "maps" not in names:
                raise ExemplarError("no maps tensor")
            stats = load_file(str(paths[2]))
        except Exception as err:
            raise ExemplarError(f"{folder}: unreadable exemplar files ({err})") from err
        if meta.get("format") != FORMAT:
            raise ExemplarError(f"{paths[0]} is not an exemplars manifest")
        formats.EXEMPLARS.check(
            meta, folder, error=ExemplarError, check_name=False, default_version=FORMAT_VERSION
        )
        uint8 = meta.get("map_dtype") == "uint8"
        maps = ExemplarMaps(paths[1], tensors["map_scales"].float() if uint8 else None)
        indices = tensors["indices"].long()
        if tuple(maps.shape[:2]) != tuple(indices.shape):
            raise ExemplarError(f"{folder}: maps {tuple(maps.shape)} do not match {indices.shape}")
        imgs = meta.pop("images")
        images = {
            int(i): (str(n), None if s is None else int(s))
            for i, n, s in zip(imgs["index"], imgs["id"], imgs["source_index"])
        }
        origins = {
            int(i): None if o is None else int(o)
            for i, o in zip(imgs["index"], imgs.get("origin") or [None] * len(imgs["index"]))
        }
        grid = (int(meta["grid"][0]), int(meta["grid"][1]))
        for key in (
            "format",
            "format_version",
            "k",
            "n_features",
            "grid",
            "n_patches",
            "map_dtype",
        ):
            meta.pop(key, None)
        values = tensors["values"].float()
        return cls(indices, values, maps, stats, grid, images, meta, origins)


__all__ = [
    "Exemplar",
    "ExemplarMaps",
    "Exemplars",
    "ExemplarError",
    "histogram_edges",
    "source_origins",
    "FORMAT",
    "FORMAT_VERSION",
    "EXEMPLARS_FILE",
    "STATS_FILE",
    "META_FILE",
    "MAP_DTYPES",
]
