"""The exemplars format: top-k images per SAE feature with patch maps, and feature statistics.

Why in core: the apps and the bundle read exemplars; only ``saescope.train.exemplars`` builds
them. Folder format (``format_version`` 1)::

    exemplars.safetensors     indices [F, k] int64 (image index, -1 = empty slot), values [F, k]
                              float32 (max patch activation), maps [F, k, n_patches] float16 --
                              or maps uint8 + map_scales [F, k] float32 (map = maps * scale)
    feature_stats.safetensors frequency, mean, mean_active, max [F] float32 (frequency, means in
                              float64 sums), histogram [F, n_bins] int64, bin_edges [n_bins + 1]
    exemplars.json            format, format_version, k, grid, n_patches, map_dtype, n_images,
                              n_tokens, token_kinds, model_id, layer, images (index, id,
                              source_index of every referenced image), source (the store's source
                              description: spec, start/stop), store, sae (name, config)

Image indices are store indices (or source indices when built from images); ``source`` + the
recorded ``source_index`` re-load the pixels (:meth:`Exemplars.load_image`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
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


class Exemplar(NamedTuple):
    """One exemplar of a feature (a tuple: ``image_index, image_id, value, patch_map``)."""

    image_index: int
    image_id: str
    value: float
    patch_map: np.ndarray  # [rows, cols] float32


@dataclass
class Exemplars:
    """Top-k exemplars and statistics of every feature of one SAE (see the module docstring)."""

    indices: torch.Tensor  # [F, k] int64, -1 = empty
    values: torch.Tensor  # [F, k] float32
    maps: torch.Tensor  # [F, k, n_patches] float16
    stats: dict[str, torch.Tensor]
    grid: tuple[int, int]
    images: dict[int, tuple[str, int | None]]  # image index -> (image id, source index)
    meta: dict[str, Any] = field(default_factory=dict)
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
        for j in range(self.k if n is None else min(n, self.k)):
            index = int(self.indices[f, j])
            if index < 0:
                break
            image_id = self.images.get(index, (str(index), None))[0]
            patch_map = self.maps[f, j].float().numpy().reshape(rows, cols)
            out.append(Exemplar(index, image_id, float(self.values[f, j]), patch_map))
        return out

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

    def save(self, folder: str | os.PathLike, map_dtype: str = "float16") -> Path:
        """Write the three files atomically (temp + rename); ``map_dtype`` float16 or uint8."""
        if map_dtype not in MAP_DTYPES:
            raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {map_dtype!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"indices": self.indices.contiguous(), "values": self.values.contiguous()}
        if map_dtype == "uint8":
            maps = self.maps.float()
            scales = maps.amax(-1) / 255.0
            q = (maps / scales.clamp_min(1e-30)[..., None]).round_().clamp_(0, 255)
            tensors.update(maps=q.to(torch.uint8).contiguous(), map_scales=scales.contiguous())
        else:
            tensors["maps"] = self.maps.half().contiguous()
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
        folder = Path(folder)
        paths = [folder / n for n in (META_FILE, EXEMPLARS_FILE, STATS_FILE)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ExemplarError(f"{folder} is not an exemplars folder (missing {missing})")
        try:
            meta = json.loads(paths[0].read_text())
            tensors, stats = load_file(str(paths[1])), load_file(str(paths[2]))
        except Exception as err:
            raise ExemplarError(f"{folder}: unreadable exemplar files ({err})") from err
        if meta.get("format") != FORMAT:
            raise ExemplarError(f"{paths[0]} is not an exemplars manifest")
        formats.EXEMPLARS.check(
            meta, folder, error=ExemplarError, check_name=False, default_version=FORMAT_VERSION
        )
        maps = tensors["maps"]
        if meta.get("map_dtype") == "uint8":
            maps = (maps.float() * tensors["map_scales"][..., None]).half()
        imgs = meta.pop("images")
        images = {
            int(i): (str(n), None if s is None else int(s))
            for i, n, s in zip(imgs["index"], imgs["id"], imgs["source_index"])
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
        return cls(
            tensors["indices"].long(), tensors["values"].float(), maps, stats, grid, images, meta
        )


__all__ = [
    "Exemplar",
    "Exemplars",
    "ExemplarError",
    "histogram_edges",
    "FORMAT",
    "FORMAT_VERSION",
    "EXEMPLARS_FILE",
    "STATS_FILE",
    "META_FILE",
    "MAP_DTYPES",
]
