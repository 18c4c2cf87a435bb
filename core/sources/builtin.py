"""Built-in offline image sets: packaged photos (augmented views), digits, Fashion-MNIST, LFW.

Why: the whole pipeline must run with no network; these ship with scikit-image, scikit-learn
and a Debian package. Augmented views are seeded by their id alone, so a resumed extraction
sees the same pixels.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from saescope.core.images import array_to_image, load_image
from saescope.core.sources.base import ImageSource

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


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
    "astronaut": _sk("astronaut"),
    "chelsea": _sk("chelsea"),
    "coffee": _sk("coffee"),
    "rocket": _sk("rocket"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "hubble_deep_field": _sk("hubble_deep_field"),
    "retina": _sk("retina"),
    "immunohistochemistry": _sk("immunohistochemistry"),
    "colorwheel": _sk("colorwheel"),
    "logo": _sk("logo"),
    "china": _sklearn_sample("china.jpg"),
    "flower": _sklearn_sample("flower.jpg"),
    # grey-scale, made RGB
    "camera": _sk("camera"),
    "coins": _sk("coins"),
    "moon": _sk("moon"),
    "brick": _sk("brick"),
    "grass": _sk("grass"),
    "gravel": _sk("gravel"),
    "text": _sk("text"),
    "page": _sk("page"),
    "clock": _sk("clock"),
    "cell": _sk("cell"),
    "horse": _sk("horse"),
    "checkerboard": _sk("checkerboard"),
}


def random_resized_crop(
    image: Image.Image,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
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

    def __init__(
        self, views: int = 16, seed: int = 0, size: int = 224, names: Sequence[str] | None = None
    ):
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

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        label_names: list[str] | None,
        prefix: str,
        spec: str,
        kind: str,
        size: int | None = None,
        resample: str = "nearest",
        scale: float = 1.0,
    ):
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
    return ArraySource(
        images,
        target,
        [str(i) for i in range(10)],
        "digits",
        f"builtin:digits?size={int(size)}&resample={resample}",
        "builtin:digits",
        size=int(size),
        resample=resample,
        scale=255.0 / 16.0,
    )


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST-style idx(.gz) file -> array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated idx file ({arr.size} values, expected {shape})")
    return arr.reshape(shape)


def fashion_mnist_source(
    split: str = "train",
    size: int | None = None,
    dir: str | None = None,
    resample: str = "bilinear",
) -> ArraySource:
    root = Path(dir or os.environ.get("SAESCOPE_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion-mnist split must be train or test, got {split!r}")

    def find(kind: str) -> Path:
        for pattern in (
            f"{prefix}-{kind}-idx*-ubyte.gz",
            f"{prefix}-{kind}-idx*-ubyte",
            f"*{prefix}*{kind}*idx*",
        ):
            hits = sorted(root.glob(pattern))
            if hits:
                return hits[0]
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (no {prefix}-{kind}-idx*-ubyte.gz): "
            "install it with "
            "`apt-get install dataset-fashion-mnist`, or set SAESCOPE_FASHION_MNIST_DIR"
        )

    images, labels = _read_idx(find("images")), _read_idx(find("labels"))
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST in {root}: {len(images)} images but {len(labels)} labels")
    spec = f"builtin:fashion-mnist?split={split}" + (f"&size={size}" if size else "")
    return ArraySource(
        images,
        labels,
        list(FASHION_MNIST_CLASSES),
        f"fashion-mnist/{split}",
        spec,
        "builtin:fashion-mnist",
        size=int(size) if size else None,
        resample=resample,
    )


def lfw_source(size: int | None = None, resample: str = "bilinear") -> ArraySource:
    import skimage.data as data

    try:
        faces = np.asarray(data.lfw_subset())
    except Exception as err:
        raise ValueError(f"scikit-image's lfw_subset does not load offline here ({err})") from err
    labels = np.array([0] * 100 + [1] * (len(faces) - 100)) if len(faces) >= 100 else None
    scale = 255.0 if faces.max() <= 1.0 else 1.0
    spec = "builtin:lfw" + (f"?size={size}" if size else "")
    return ArraySource(
        faces,
        labels,
        ["face", "non-face"] if labels is not None else None,
        "lfw",
        spec,
        "builtin:lfw",
        size=int(size) if size else None,
        resample=resample,
        scale=scale,
    )


BUILTINS: dict[str, Callable[..., ImageSource]] = {
    "photos": PhotosSource,
    "digits": digits_source,
    "fashion-mnist": fashion_mnist_source,
    "lfw": lfw_source,
}

__all__ = [
    "PHOTOS",
    "BUILTINS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "PhotosSource",
    "ArraySource",
    "digits_source",
    "fashion_mnist_source",
    "lfw_source",
    "random_resized_crop",
]
