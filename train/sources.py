"""Image sources: deterministic, random-access collections of ``(image_id, image)``.

Why random access and stable ids: extraction resumes at an image *index* after a crash, and the
store records the ids, so the same index must always give the same id and the same pixels (the
built-in augmented views are seeded by their id for that reason). A source never raises for a bad
image: :meth:`ImageSource.get` returns the :class:`~core.images.ImageError` instead, so the
extractor can skip it and list it.

Specs understood by :func:`open_source`:

- ``builtin:photos[?views=N&seed=S&size=PX]`` - the photos that ship with scikit-image and
  scikit-learn, N augmented views each (view 0 is the unaugmented photo);
- ``builtin:digits[?size=PX&resample=nearest|bilinear]`` - scikit-learn's 1,797 labelled digits;
- ``builtin:fashion-mnist[?split=train|test&size=PX&dir=...]`` - from Debian's
  ``dataset-fashion-mnist``;
- ``builtin:lfw[?size=PX]`` - scikit-image's ``lfw_subset`` (100 faces, 100 non-faces);
- ``hf:NAME[:split]`` - a Hugging Face ``datasets`` dataset (Hub name or local path);
- a folder: a ``datasets.save_to_disk`` folder, or else a folder of image files (recursive);
- ``SPEC+SPEC[+...]`` - several sources one after the other (e.g. photos and digits); labels are
  kept only when every part is labelled, with the parts' label names prefixed by the part.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from saescope.core.images import ImageError, ImageInput, array_to_image, load_image

Loaded = Union[Image.Image, ImageError]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".jfif"})
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


class ImageSource(ABC):
    """A fixed, ordered collection of images addressed by index, each with a stable string id."""

    spec: str = ""
    kind: str = ""
    label_names: list[str] | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image_id(self, index: int) -> str:
        """Stable id of image ``index`` (recorded in stores; the same on every run)."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """RGB image ``index``; raises :class:`ImageError` when it cannot be read."""

    def label(self, index: int) -> int | None:
        """Class index of image ``index`` into :attr:`label_names`, or ``None`` when unlabelled."""
        return None

    @property
    def has_labels(self) -> bool:
        return self.label_names is not None

    def get(self, index: int) -> tuple[str, Loaded]:
        """``(id, image)`` or ``(id, ImageError)``: never raises for a bad image."""
        self._check(index)
        image_id = self.image_id(index)
        try:
            return image_id, self.load(index)
        except ImageError as err:
            return image_id, err
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # an unexpected decoder failure is still just one bad image
            return image_id, ImageError(f"{image_id}: unreadable ({type(err).__name__}: {err})")

    def iter(self, start: int = 0) -> Iterator[tuple[str, Loaded]]:
        for i in range(start, len(self)):
            yield self.get(i)

    def __iter__(self) -> Iterator[tuple[str, Loaded]]:
        return self.iter(0)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for a source of {len(self)}")

    def subset(self, start: int = 0, stop: int | None = None,
               max_images: int | None = None) -> "ImageSource":
        """Images ``start`` .. ``stop`` (at most ``max_images`` of them), as a source."""
        n = len(self)
        stop = n if stop is None else min(int(stop), n)
        start = max(0, int(start))
        if max_images is not None:
            stop = min(stop, start + max(0, int(max_images)))
        if start == 0 and stop == n:
            return self
        return SubsetSource(self, start, max(start, stop))

    def describe(self) -> dict[str, Any]:
        """What this source is, for manifests."""
        return {"spec": self.spec, "kind": self.kind, "n_images": len(self),
                "label_names": self.label_names}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}: {len(self)} images>"


class SubsetSource(ImageSource):
    """A contiguous slice of another source (ids unchanged, so stores stay comparable)."""

    def __init__(self, base: ImageSource, start: int, stop: int):
        self.base, self.start, self.stop = base, start, stop
        self.kind, self.label_names = base.kind, base.label_names
        self.spec = base.spec

    def __len__(self) -> int:
        return self.stop - self.start

    def image_id(self, index: int) -> str:
        self._check(index)
        return self.base.image_id(self.start + index)

    def load(self, index: int) -> Image.Image:
        self._check(index)
        return self.base.load(self.start + index)

    def label(self, index: int) -> int | None:
        return self.base.label(self.start + index)

    def describe(self) -> dict[str, Any]:
        d = self.base.describe()
        d.update(n_images=len(self), start=self.start, stop=self.stop)
        return d


class ListSource(ImageSource):
    """Images held in memory (PIL images, arrays, bytes or paths), e.g. uploads or tests."""

    def __init__(self, items: Sequence[tuple[str, ImageInput]], labels: Sequence[int] | None = None,
                 label_names: list[str] | None = None, spec: str = "memory"):
        self.items = list(items)
        self.labels = list(labels) if labels is not None else None
        self.label_names = label_names
        self.spec, self.kind = spec, "memory"

    def __len__(self) -> int:
        return len(self.items)

    def image_id(self, index: int) -> str:
        return str(self.items[index][0])

    def load(self, index: int) -> Image.Image:
        image_id, item = self.items[index]
        if isinstance(item, Image.Image) and item.mode == "RGB":
            return item
        return load_image(item, name=str(image_id))

    def label(self, index: int) -> int | None:
        return None if self.labels is None else int(self.labels[index])


class FolderSource(ImageSource):
    """Image files under a folder (recursive, sorted by relative path; ids = relative paths).

    When every image sits in a first-level sub-folder and there are at least two of them, the
    sub-folder names are the labels (the usual "ImageFolder" layout).
    """

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = tuple(IMAGE_EXTENSIONS),
                 labels: bool | None = None):
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

    def __init__(self, name: str, split: str | None = None, image_column: str | None = None,
                 label_column: str | None = None, config: str | None = None,
                 from_disk: bool | None = None, spec: str | None = None):
        import datasets

        path = Path(name)
        if from_disk is None:
            from_disk = path.is_dir() and any(
                (path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
        if from_disk:
            ds = datasets.load_from_disk(str(path))
            short = path.resolve().name
        else:
            ds = datasets.load_dataset(name, config, split=split) if split else \
                datasets.load_dataset(name, config)
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
                raise ValueError(f"no image column in dataset {name!r} (columns: {list(feats)}); "
                                 "pass image_column=")
            image_column = cands[0]
        elif image_column not in feats:
            raise ValueError(f"image column {image_column!r} not in dataset {name!r}: {list(feats)}")
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


# -- built-in offline sets ------------------------------------------------------------------

def _sk(name: str) -> Callable[[], np.ndarray]:
    def f() -> np.ndarray:
        import skimage.data as data
        return np.asarray(getattr(data, name)())
    return f


def _motorcycle(i: int) -> Callable[[], np.ndarray]:
    def f() -> np.ndarray:
        import skimage.data as data
        return np.asarray(data.stereo_motorcycle()[i])
    return f


def _sklearn_sample(name: str) -> Callable[[], np.ndarray]:
    def f() -> np.ndarray:
        path = _sklearn_file("images", name)
        if path is not None:
            return np.asarray(load_image(path))
        from sklearn.datasets import load_sample_image
        return np.asarray(load_sample_image(name))
    return f


PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    # colour
    "astronaut": _sk("astronaut"), "chelsea": _sk("chelsea"), "coffee": _sk("coffee"),
    "rocket": _sk("rocket"), "motorcycle_left": _motorcycle(0), "motorcycle_right": _motorcycle(1),
    "hubble_deep_field": _sk("hubble_deep_field"), "retina": _sk("retina"),
    "immunohistochemistry": _sk("immunohistochemistry"), "colorwheel": _sk("colorwheel"),
    "logo": _sk("logo"), "china": _sklearn_sample("china.jpg"),
    "flower": _sklearn_sample("flower.jpg"),
    # grey-scale, made RGB
    "camera": _sk("camera"), "coins": _sk("coins"), "moon": _sk("moon"), "brick": _sk("brick"),
    "grass": _sk("grass"), "gravel": _sk("gravel"), "text": _sk("text"), "page": _sk("page"),
    "clock": _sk("clock"), "cell": _sk("cell"), "horse": _sk("horse"),
    "checkerboard": _sk("checkerboard"),
}


def random_resized_crop(image: Image.Image, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """torchvision-style RandomResizedCrop + horizontal flip, in PIL, driven by ``rng``."""
    w, h = image.size
    area = w * h
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw, ch = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # centre crop at the clamped aspect ratio
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    out = image.resize((size, size), Image.BICUBIC, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


class PhotosSource(ImageSource):
    """The packaged photos, ``views`` views each: view 0 as is, others randomly cropped/flipped.

    Ordered view-major (all photos' view 0, then view 1, ...) so that a prefix is diverse. The
    augmentation of id ``photos/NAME/V`` is seeded by ``(seed, crc32(NAME), V)`` alone.
    """

    def __init__(self, views: int = 16, seed: int = 0, size: int = 224,
                 names: Sequence[str] | None = None):
        self.views, self.seed, self.size = int(views), int(seed), int(size)
        if self.views < 1:
            raise ValueError("views must be >= 1")
        self._cache: dict[str, Image.Image] = {}
        self._lock = threading.Lock()
        self.names: list[str] = []
        for name in names or PHOTOS:
            if name not in PHOTOS:
                raise ValueError(f"unknown built-in photo {name!r}; known: {sorted(PHOTOS)}")
            try:
                self._cache[name] = array_to_image(PHOTOS[name]())
                self.names.append(name)
            except Exception:  # not shipped/loadable offline on this install: leave it out
                continue
        if not self.names:
            raise ValueError("no built-in photos could be loaded (is scikit-image installed?)")
        self.label_names = list(self.names)
        self.kind = "builtin:photos"
        self.spec = f"builtin:photos?views={self.views}&seed={self.seed}&size={self.size}"

    def __len__(self) -> int:
        return len(self.names) * self.views

    def _split(self, index: int) -> tuple[str, int]:
        self._check(index)
        return self.names[index % len(self.names)], index // len(self.names)

    def image_id(self, index: int) -> str:
        name, view = self._split(index)
        return f"photos/{name}/{view}"

    def load(self, index: int) -> Image.Image:
        name, view = self._split(index)
        base = self._cache[name]
        if view == 0:
            return base
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode()), view])
        return random_resized_crop(base, rng, self.size)

    def label(self, index: int) -> int | None:
        return index % len(self.names)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(views=self.views, seed=self.seed, size=self.size, photos=self.names)
        return d


class ArraySource(ImageSource):
    """Labelled grey-scale arrays [N, H, W] (digits, Fashion-MNIST, LFW), upscaled to ``size``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, label_names: list[str] | None,
                 prefix: str, spec: str, kind: str, size: int | None = None,
                 resample: str = "nearest", scale: float = 1.0):
        self.images, self.labels = images, labels
        self.label_names, self.prefix, self.spec, self.kind = label_names, prefix, spec, kind
        self.size, self.scale = size, scale
        modes = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
        if resample not in modes:
            raise ValueError(f"resample must be one of {sorted(modes)}, got {resample!r}")
        self.resample = modes[resample]
        self._width = len(str(max(len(images) - 1, 0)))

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, index: int) -> str:
        self._check(index)
        return f"{self.prefix}/{index:0{self._width}d}"

    def load(self, index: int) -> Image.Image:
        self._check(index)
        arr = np.asarray(self.images[index], dtype=np.float64) * self.scale
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        if self.size and grey.size != (self.size, self.size):
            grey = grey.resize((self.size, self.size), self.resample)
        return grey.convert("RGB")

    def label(self, index: int) -> int | None:
        return None if self.labels is None else int(self.labels[index])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(size=self.size)
        return d


def _sklearn_file(*parts: str) -> Path | None:
    """A data file shipped inside scikit-learn, found without importing it (that takes ~1 s)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent.joinpath("datasets", *parts)
    return path if path.is_file() else None


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    path = _sklearn_file("data", "digits.csv.gz")
    if path is not None:
        data = np.loadtxt(path, delimiter=",", dtype=np.float64)
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def digits_source(size: int = 112, resample: str = "nearest") -> ArraySource:
    images, target = _load_digits()
    return ArraySource(images, target, [str(i) for i in range(10)], "digits",
                       f"builtin:digits?size={int(size)}&resample={resample}", "builtin:digits",
                       size=int(size), resample=resample, scale=255.0 / 16.0)


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST-style idx(.gz) file -> array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated idx file ({arr.size} values, expected {shape})")
    return arr.reshape(shape)


def fashion_mnist_source(split: str = "train", size: int | None = None,
                         dir: str | None = None, resample: str = "bilinear") -> ArraySource:
    root = Path(dir or os.environ.get("SAESCOPE_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion-mnist split must be train or test, got {split!r}")

    def find(kind: str) -> Path:
        for pattern in (f"{prefix}-{kind}-idx*-ubyte.gz", f"{prefix}-{kind}-idx*-ubyte",
                        f"*{prefix}*{kind}*idx*"):
            hits = sorted(root.glob(pattern))
            if hits:
                return hits[0]
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (no {prefix}-{kind}-idx*-ubyte.gz): install it with "
            "`apt-get install dataset-fashion-mnist`, or set SAESCOPE_FASHION_MNIST_DIR")

    images, labels = _read_idx(find("images")), _read_idx(find("labels"))
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST in {root}: {len(images)} images but {len(labels)} labels")
    spec = f"builtin:fashion-mnist?split={split}" + (f"&size={size}" if size else "")
    return ArraySource(images, labels, list(FASHION_MNIST_CLASSES), f"fashion-mnist/{split}", spec,
                       "builtin:fashion-mnist", size=int(size) if size else None, resample=resample)


def lfw_source(size: int | None = None, resample: str = "bilinear") -> ArraySource:
    import skimage.data as data

    try:
        faces = np.asarray(data.lfw_subset())
    except Exception as err:
        raise ValueError(f"scikit-image's lfw_subset does not load offline here ({err})") from err
    labels = np.array([0] * 100 + [1] * (len(faces) - 100)) if len(faces) >= 100 else None
    scale = 255.0 if faces.max() <= 1.0 else 1.0
    spec = "builtin:lfw" + (f"?size={size}" if size else "")
    return ArraySource(faces, labels, ["face", "non-face"] if labels is not None else None, "lfw",
                       spec, "builtin:lfw", size=int(size) if size else None, resample=resample,
                       scale=scale)


BUILTINS: dict[str, Callable[..., ImageSource]] = {
    "photos": PhotosSource,
    "digits": digits_source,
    "fashion-mnist": fashion_mnist_source,
    "lfw": lfw_source,
}

_INT_PARAMS = {"views", "seed", "size"}
_LIMIT_KEYS = ("max_images", "start", "stop")


def _parse_params(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        key = key.replace("-", "_")
        if key in _INT_PARAMS or key in _LIMIT_KEYS:
            try:
                out[key] = int(value)
            except ValueError as err:
                raise ValueError(f"source parameter {key} must be an integer, got {value!r}") from err
        else:
            out[key] = value
    return out


class ConcatSource(ImageSource):
    """Several sources one after the other; ids are the parts' ids (they are already unique)."""

    def __init__(self, parts: Sequence[ImageSource], spec: str):
        if not parts:
            raise ValueError("a concatenated source needs at least one part")
        self.parts = list(parts)
        self.spec, self.kind = spec, "concat"
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])
        if all(p.label_names for p in self.parts):
            self.label_names = [f"{p.kind}:{n}" for p in self.parts for n in p.label_names]
            self._label_offsets = np.cumsum([0] + [len(p.label_names) for p in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _part(self, index: int) -> tuple[int, int]:
        self._check(index)
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return k, index - int(self._starts[k])

    def image_id(self, index: int) -> str:
        k, i = self._part(index)
        return self.parts[k].image_id(i)

    def load(self, index: int) -> Image.Image:
        k, i = self._part(index)
        return self.parts[k].load(i)

    def label(self, index: int) -> int | None:
        if self.label_names is None:
            return None
        k, i = self._part(index)
        lab = self.parts[k].label(i)
        return None if lab is None else int(self._label_offsets[k]) + lab

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["parts"] = [p.describe() for p in self.parts]
        return d


def _split_concat(text: str) -> list[str] | None:
    """``a+b`` -> ``[a, b]`` when every part looks like a spec (a '+' in a folder name is kept)."""
    if "+" not in text or Path(text).expanduser().exists():
        return None
    parts = [p.strip() for p in text.split("+")]
    if all(p.startswith(("builtin:", "hf:")) or Path(p).expanduser().exists() for p in parts):
        return parts
    return None


def open_source(spec: str | os.PathLike | ImageSource, *, max_images: int | None = None,
                start: int = 0, stop: int | None = None, **kw: Any) -> ImageSource:
    """Open a source from its spec (see the module docstring); limits apply last.

    ``max_images``/``start``/``stop`` may also be given in a builtin's query string.
    """
    if isinstance(spec, ImageSource):
        return spec.subset(start, stop, max_images)
    text = str(spec)
    parts = _split_concat(text)
    if parts is not None:
        source: ImageSource = ConcatSource([open_source(p) for p in parts], spec=text)
    elif text.startswith("builtin:"):
        name, _, query = text[len("builtin:"):].partition("?")
        if name not in BUILTINS:
            raise ValueError(f"unknown built-in source {name!r}; known: "
                             + ", ".join(f"builtin:{k}" for k in BUILTINS))
        params = {**_parse_params(query), **kw}
        limits = {k: params.pop(k) for k in _LIMIT_KEYS if k in params}
        try:
            source = BUILTINS[name](**params)
        except TypeError as err:
            raise ValueError(f"bad parameters for builtin:{name}: {err}") from err
        start = limits.get("start", start)
        stop = limits.get("stop", stop)
        max_images = limits.get("max_images", max_images)
    elif text.startswith("hf:"):
        name, _, split = text[3:].partition(":")
        source = HFSource(name, split=kw.pop("split", None) or split or None, spec=text, **kw)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"image source {text!r} not found: give a folder, hf:NAME[:split] or one of "
                + ", ".join(f"builtin:{k}" for k in BUILTINS))
        if path.is_file():
            raise ValueError(f"image source {text!r} is a file; give a folder of images")
        if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            source = HFSource(str(path), from_disk=True, spec=text, **kw)
        else:
            source = FolderSource(path, **kw)
    return source.subset(start, stop, max_images)


__all__ = ["ImageSource", "SubsetSource", "ListSource", "FolderSource", "HFSource", "ConcatSource",
           "PhotosSource", "ArraySource", "digits_source", "fashion_mnist_source", "lfw_source",
           "open_source", "random_resized_crop", "Loaded", "IMAGE_EXTENSIONS"]
