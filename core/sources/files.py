"""Image sources on disk: a folder of image files, or a Hugging Face ``datasets`` dataset."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from saescope.core.hub_errors import hub_access, missing_local
from saescope.core.images import ImageError, load_image
from saescope.core.sources.base import ImageSource

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jfif",
    }
)
# files that mark a ``datasets.save_to_disk`` folder
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class FolderSource(ImageSource):
    """Image files under a folder (recursive, sorted by relative path; ids = relative paths).

    When every image sits in a first-level sub-folder and there are at least two of them, the
    sub-folder names are the labels (the usual "ImageFolder" layout).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        extensions: Sequence[str] = tuple(IMAGE_EXTENSIONS),
        labels: bool | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith(".") and Path(name).suffix.lower() in exts:
                    found.append((Path(dirpath) / name).relative_to(self.root).as_posix())
        self.paths = sorted(found)
        self.spec, self.kind = str(root), "folder"
        classes = sorted({p.split("/", 1)[0] for p in self.paths if "/" in p})
        in_subdirs = bool(self.paths) and all("/" in p for p in self.paths)
        use = (in_subdirs and len(classes) >= 2) if labels is None else labels
        if use and not in_subdirs:
            raise ValueError(f"labels from sub-folders need every image of {root} in a sub-folder")
        self.label_names = classes if use else None
        self._class_index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.paths)

    def image_id(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int) -> Image.Image:
        return load_image(self.root / self.paths[index], name=self.paths[index])

    def label(self, index: int) -> int | None:
        if self.label_names is None:
            return None
        return self._class_index[self.paths[index].split("/", 1)[0]]


class HFSource(ImageSource):
    """A ``datasets`` dataset; images are decoded by :func:`load_image`, not by ``datasets``.

    Why: ``datasets`` raises on a corrupt image in the middle of iteration; decoding ourselves
    turns it into a skipped, listed image and applies the same safety checks as everywhere else.
    """

    def __init__(
        self,
        name: str,
        split: str | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        config: str | None = None,
        from_disk: bool | None = None,
        spec: str | None = None,
    ):
        import datasets

        path = Path(name)
        if from_disk is None:
            from_disk = path.is_dir() and any((path / f).exists() for f in DATASET_MARKERS)
        if from_disk:
            ds = datasets.load_from_disk(str(path))
            short = path.resolve().name
        else:
            missing = missing_local("data set", name)
            if missing is not None:
                raise missing
            with hub_access("data set", name):
                ds = (
                    datasets.load_dataset(name, config, split=split)
                    if split
                    else datasets.load_dataset(name, config)
                )
            short = name
        if isinstance(ds, (datasets.DatasetDict, dict)):
            splits = list(ds.keys())
            if split is None:
                split = "train" if "train" in splits else splits[0]
            if split not in ds:
                raise ValueError(f"split {split!r} not in dataset {name!r}: it has {splits}")
            ds = ds[split]
        split = split or (str(ds.split) if getattr(ds, "split", None) else "all")
        feats = ds.features
        if image_column is None:
            cands = [c for c, f in feats.items() if isinstance(f, datasets.Image)]
            cands = cands or [c for c in ("image", "img", "pixel_values", "picture") if c in feats]
            if not cands:
                raise ValueError(
                    f"no image column in dataset {name!r} (columns: {list(feats)}); "
                    "pass image_column="
                )
            image_column = cands[0]
        elif image_column not in feats:
            raise ValueError(
                f"image column {image_column!r} not in dataset {name!r}: {list(feats)}"
            )
        if isinstance(feats[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        if label_column is None:
            cl = [c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)]
            label_column = cl[0] if cl else ("label" if "label" in feats else None)
        if label_column is not None and label_column not in feats:
            raise ValueError(f"label column {label_column!r} not in dataset {name!r}")
        self.label_names = None
        self._labels: list[int] | None = None
        if label_column is not None:
            f = feats[label_column]
            if isinstance(f, datasets.ClassLabel):
                self.label_names = list(f.names)
                self._labels = [int(v) for v in ds[label_column]]
            else:  # plain values: map their sorted distinct values to names
                values = list(ds[label_column])
                try:
                    names = sorted({str(v) for v in values}, key=lambda s: (len(s), s))
                except TypeError:
                    names = None
                if names is not None and len(names) <= 10_000:
                    idx = {n: i for i, n in enumerate(names)}
                    self.label_names = names
                    self._labels = [idx[str(v)] for v in values]
        self.ds, self.split, self.short = ds, split, short
        self.image_column, self.label_column = image_column, label_column
        self.spec = spec or f"hf:{name}" + (f":{split}" if split else "")
        self.kind = "datasets"
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ds)

    def image_id(self, index: int) -> str:
        self._check(index)
        return f"{self.short}/{self.split}/{index}"

    def load(self, index: int) -> Image.Image:
        self._check(index)
        with self._lock:
            value = self.ds[index][self.image_column]
        name = self.image_id(index)
        if isinstance(value, dict):
            if value.get("bytes"):
                return load_image(value["bytes"], name=name)
            if value.get("path"):
                return load_image(value["path"], name=name)
            raise ImageError(f"{name}: the dataset row holds no image data")
        if value is None:
            raise ImageError(f"{name}: the dataset row holds no image")
        if isinstance(value, (list, tuple)):
            value = np.asarray(value)
        return load_image(value, name=name)

    def label(self, index: int) -> int | None:
        return None if self._labels is None else self._labels[index]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(split=self.split, image_column=self.image_column, label_column=self.label_column)
        return d


__all__ = ["FolderSource", "HFSource", "IMAGE_EXTENSIONS", "DATASET_MARKERS"]
