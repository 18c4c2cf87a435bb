"""Segmentation sources: images with a per-pixel label map, for segmentation probes.

A :class:`SegmentationSource` is an :class:`~saescope.core.sources.base.ImageSource` (stable ids,
random access, bad images returned as errors) that also gives ``mask(index)``: an int64
``[H, W]`` map of class indices into :attr:`class_names` at the image's own resolution, ``-1``
where a pixel has no label. Specs understood by :func:`open_segmentation_source`:

- ``builtin:digit-scenes[?n=N&size=PX&seed=S&max_objects=K]`` - offline: 1..K scikit-learn digits
  pasted at random sizes and places on a dark canvas; pixel label = the digit's class where its
  ink is, ``background`` elsewhere (11 classes). Deterministic per index.
- ``builtin:fashion-scenes[...]`` - the same with Fashion-MNIST items (Debian package).
- ``hf:NAME[:split][?mask_column=C&ignore_label=L&reduce_labels=1]`` - a ``datasets`` dataset with
  an image column and a mask column (e.g. ADE20K's ``scene_parse_150``: ``annotation``, with
  ``reduce_labels=1`` turning "0 = other" into ignore); class names from the dataset's
  ``id2label``-style metadata when present, else ``class N``.
- a folder with ``images/`` and ``masks/`` (same file stems; masks are single-channel PNGs of class
  indices, 255 = ignore) and optionally ``classes.txt`` (one name per line).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from saescope.core.images import ImageError, load_image
from saescope.core.sources.base import ImageSource, SubsetSource
from saescope.core.sources.builtin import ArraySource, digits_source, fashion_mnist_source
from saescope.core.sources.files import IMAGE_EXTENSIONS, HFSource
from saescope.core.sources.spec import parse_params

IGNORE = -1


class SegmentationSource(ImageSource):
    """An image source whose images come with per-pixel class labels."""

    class_names: list[str] = []

    def mask(self, index: int) -> np.ndarray:
        """int64 [H, W] class indices (``-1`` = unlabelled), the size of image ``index``."""
        raise NotImplementedError

    def subset(
        self, start: int = 0, stop: int | None = None, max_images: int | None = None
    ) -> SegmentationSource:
        stop = len(self) if stop is None else min(stop, len(self))
        if max_images is not None:
            stop = min(stop, start + max_images)
        if start == 0 and stop == len(self):
            return self
        return _SegSubset(self, start, stop)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "class_names": self.class_names}


class _SegSubset(SubsetSource, SegmentationSource):
    def __init__(self, base: SegmentationSource, start: int, stop: int):
        SubsetSource.__init__(self, base, start, stop)
        self.class_names = base.class_names

    def mask(self, index: int) -> np.ndarray:
        self._check(index)
        return self.base.mask(self.start + index)  # type: ignore[attr-defined]


class SceneSource(SegmentationSource):
    """1..K small labelled grey images pasted onto a dark canvas; labels follow their ink.

    Why synthetic scenes: no real segmentation set ships offline, and this one has an exactly
    known answer for every pixel, several objects (and classes) per image, and a background.
    """

    def __init__(
        self,
        items: ArraySource,
        n: int = 1000,
        size: int = 224,
        seed: int = 0,
        max_objects: int = 3,
        min_scale: float = 0.25,
        max_scale: float = 0.45,
        ink_threshold: float = 0.3,
        name: str = "digit-scenes",
    ):
        if items.label_names is None or items.labels is None:
            raise ValueError("scenes need labelled items")
        if not 1 <= max_objects <= 8:
            raise ValueError(f"max_objects must be 1..8, got {max_objects}")
        if size < 32:
            raise ValueError(f"scene size must be at least 32 px, got {size}")
        self.items, self.n, self.size, self.seed = items, int(n), int(size), int(seed)
        self.max_objects, self.min_scale, self.max_scale = int(max_objects), min_scale, max_scale
        self.ink_threshold = ink_threshold
        self.class_names = ["background"] + [str(c) for c in items.label_names]
        self.label_names = None  # an image has several classes: no single image label
        self.spec = (
            f"builtin:{name}?n={self.n}&size={self.size}&seed={self.seed}"
            f"&max_objects={self.max_objects}"
        )
        self.kind = f"builtin:{name}"
        self._name = name
        self._width = len(str(max(self.n - 1, 0)))

    def __len__(self) -> int:
        return self.n

    def image_id(self, index: int) -> str:
        self._check(index)
        return f"{self._name}/{index:0{self._width}d}"

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        canvas = np.zeros((self.size, self.size), np.float32)
        labels = np.zeros((self.size, self.size), np.int64)
        boxes: list[tuple[int, int, int]] = []
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            side = int(rng.uniform(self.min_scale, self.max_scale) * self.size)
            for _try in range(20):  # non-overlapping boxes, so every pixel has one owner
                y, x = (int(v) for v in rng.integers(0, self.size - side + 1, 2))
                if all(
                    y + side <= by or by + bs <= y or x + side <= bx or bx + bs <= x
                    for by, bx, bs in boxes
                ):
                    break
            else:
                continue
            boxes.append((y, x, side))
            item = int(rng.integers(len(self.items)))
            arr = np.asarray(self.items.images[item], np.float32) * self.items.scale / 255.0
            patch = (
                np.asarray(
                    Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "L").resize(
                        (side, side), Image.BILINEAR
                    ),
                    np.float32,
                )
                / 255.0
            )
            ink = patch > self.ink_threshold
            canvas[y : y + side, x : x + side] = np.maximum(
                canvas[y : y + side, x : x + side], patch
            )
            labels[y : y + side, x : x + side][ink] = int(self.items.labels[item]) + 1
        return canvas, labels

    def load(self, index: int) -> Image.Image:
        self._check(index)
        canvas, _ = self._render(index)
        return Image.fromarray((canvas * 255).astype(np.uint8), "L").convert("RGB")

    def mask(self, index: int) -> np.ndarray:
        self._check(index)
        return self._render(index)[1]


class HFSegmentationSource(HFSource, SegmentationSource):
    """A ``datasets`` segmentation set: an image column plus a mask column of class indices."""

    def __init__(
        self,
        name: str,
        mask_column: str | None = None,
        ignore_label: int | None = 255,
        reduce_labels: bool = False,
        class_names: Sequence[str] | None = None,
        **kw: Any,
    ):
        HFSource.__init__(self, name, label_column=None, **kw)
        feats = self.ds.features
        if mask_column is None:
            cands = [
                c
                for c in ("annotation", "mask", "label", "segmentation", "semantic_map", "seg_map")
                if c in feats and c != self.image_column
            ]
            if not cands:
                raise ValueError(
                    f"no mask column in dataset {name!r} (columns: {list(feats)}); "
                    "pass mask_column="
                )
            mask_column = cands[0]
        if mask_column not in feats:
            raise ValueError(f"mask column {mask_column!r} not in dataset {name!r}: {list(feats)}")
        import datasets

        if isinstance(feats[mask_column], datasets.Image):
            self.ds = self.ds.cast_column(mask_column, datasets.Image(decode=False))
        self.mask_column, self.ignore_label = mask_column, ignore_label
        self.reduce_labels = reduce_labels
        self.label_names = None
        if class_names is None:
            info = getattr(self.ds.info, "description", "") or ""
            try:  # an id2label JSON in the description or features metadata, when present
                meta = json.loads(info)
                class_names = [meta["id2label"][str(i)] for i in range(len(meta["id2label"]))]
            except (ValueError, KeyError, TypeError):
                class_names = None
        self._names = list(class_names) if class_names is not None else None
        self.class_names = self._names or []

    def mask(self, index: int) -> np.ndarray:
        self._check(index)
        with self._lock:
            value = self.ds[index][self.mask_column]
        name = self.image_id(index) + " (mask)"
        if isinstance(value, dict):
            raw = value.get("bytes") or value.get("path")
            if raw is None:
                raise ImageError(f"{name}: the dataset row holds no mask")
            arr = _read_mask_image(raw if isinstance(raw, str) else io.BytesIO(raw), name)
        else:
            arr = np.asarray(value)
        return _normalise_mask(arr, self.ignore_label, self.reduce_labels, name)

    def finalise_classes(self, n_seen: int) -> None:
        """Name classes ``class N`` when the dataset carries no names (``n_seen`` = max id + 1)."""
        if not self._names:
            self.class_names = [f"class {i}" for i in range(n_seen)]


class MaskFolderSource(SegmentationSource):
    """``root/images/*`` with ``root/masks/<stem>.png`` (class indices; 255 = ignore)."""

    def __init__(self, root: str | os.PathLike, ignore_label: int | None = 255):
        self.root = Path(root)
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise ValueError(f"{root}: a segmentation folder needs images/ and masks/ sub-folders")
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
        self.files = sorted(
            p
            for p in img_dir.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem in masks
        )
        if not self.files:
            raise ValueError(f"{root}: no image in images/ has a mask of the same stem in masks/")
        self.masks = {p.stem: masks[p.stem] for p in self.files}
        self.ignore_label = ignore_label
        names_file = self.root / "classes.txt"
        self.class_names = (
            [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
            if names_file.is_file()
            else []
        )
        self.spec, self.kind, self.label_names = str(root), "segmentation-folder", None

    def __len__(self) -> int:
        return len(self.files)

    def image_id(self, index: int) -> str:
        self._check(index)
        return self.files[index].relative_to(self.root).as_posix()

    def load(self, index: int) -> Image.Image:
        self._check(index)
        return load_image(self.files[index])

    def mask(self, index: int) -> np.ndarray:
        self._check(index)
        path = self.masks[self.files[index].stem]
        return _normalise_mask(
            _read_mask_image(path, str(path)), self.ignore_label, False, str(path)
        )

    def finalise_classes(self, n_seen: int) -> None:
        if not self.class_names:
            self.class_names = [f"class {i}" for i in range(n_seen)]


def _read_mask_image(src, name: str) -> np.ndarray:
    """A label image (path or file object) as an array of class indices, palette kept as is."""
    try:
        with Image.open(src) as im:
            return np.asarray(im if im.mode in ("L", "I", "P", "I;16") else im.convert("L"))
    except (OSError, ValueError) as err:
        raise ImageError(f"{name}: unreadable mask ({err})") from err


def _normalise_mask(
    arr: np.ndarray, ignore_label: int | None, reduce_labels: bool, name: str
) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ImageError(f"{name}: a mask must be 2-D, got shape {arr.shape}")
    out = arr.astype(np.int64)
    ignore = out == ignore_label if ignore_label is not None else np.zeros(out.shape, bool)
    if reduce_labels:  # "0 = other/unlabelled" datasets (ADE20K): 0 -> ignore, k -> k - 1
        ignore |= out == 0
        out = out - 1
    out[ignore] = IGNORE
    return out


def _scenes(items_factory, name: str):
    def make(
        n: int = 1000,
        size: int = 224,
        seed: int = 0,
        max_objects: int = 3,
        item_size: int | None = None,
    ) -> SceneSource:
        return SceneSource(
            items_factory(),
            n=int(n),
            size=int(size),
            seed=int(seed),
            max_objects=int(max_objects),
            name=name,
        )

    return make


SEG_BUILTINS = {
    "digit-scenes": _scenes(digits_source, "digit-scenes"),
    "fashion-scenes": _scenes(fashion_mnist_source, "fashion-scenes"),
}


def open_segmentation_source(
    spec: str | os.PathLike | SegmentationSource, *, max_images: int | None = None, **kw: Any
) -> SegmentationSource:
    """Open a segmentation source from its spec (see the module docstring)."""
    if isinstance(spec, SegmentationSource):
        return spec.subset(max_images=max_images)
    text = str(spec)
    name, _, query = text.partition("?")
    params = {**parse_params(query), **kw}
    max_images = params.pop("max_images", max_images)
    if "ignore_label" in params:
        params["ignore_label"] = (
            None if str(params["ignore_label"]).lower() == "none" else int(params["ignore_label"])
        )
    if name.startswith("builtin:"):
        key = name[len("builtin:") :]
        if key not in SEG_BUILTINS:
            raise ValueError(
                f"unknown built-in segmentation source {key!r}; known: "
                + ", ".join(f"builtin:{k}" for k in SEG_BUILTINS)
            )
        try:
            source: SegmentationSource = SEG_BUILTINS[key](**params)
        except TypeError as err:
            raise ValueError(f"bad parameters for builtin:{key}: {err}") from err
    elif name.startswith("hf:"):
        ds, _, split = name[3:].partition(":")
        if "reduce_labels" in params:
            params["reduce_labels"] = str(params["reduce_labels"]).lower() in ("1", "true", "yes")
        source = HFSegmentationSource(ds, split=split or None, spec=text, **params)
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"segmentation source {text!r} not found: give a folder with "
                "images/ and masks/, hf:NAME[:split] or one of "
                + ", ".join(f"builtin:{k}" for k in SEG_BUILTINS)
            )
        source = MaskFolderSource(path, **params)
    return source.subset(max_images=int(max_images) if max_images is not None else None)


__all__ = [
    "IGNORE",
    "SEG_BUILTINS",
    "HFSegmentationSource",
    "MaskFolderSource",
    "SceneSource",
    "SegmentationSource",
    "open_segmentation_source",
]
