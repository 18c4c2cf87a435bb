"""core.sources: deterministic ids and pixels, labels, bad images reported not raised."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saescope.core.images import ImageError
from saescope.core.sources import (
    FolderSource,
    HFSource,
    ImageSource,
    ListSource,
    PhotosSource,
    open_source,
)


@pytest.fixture(scope="module")
def photos() -> PhotosSource:
    return open_source("builtin:photos?views=3&size=64")  # type: ignore[return-value]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# -- built-in photos ------------------------------------------------------------------------


def test_photos_views_and_ids(photos):
    assert isinstance(photos, PhotosSource)
    names = photos.names
    assert {"astronaut", "chelsea", "coffee", "camera", "china", "flower"} <= set(names)
    assert len(photos) == 3 * len(names)
    ids = [photos.image_id(i) for i in range(len(photos))]
    assert len(set(ids)) == len(ids)
    assert ids[0] == f"photos/{names[0]}/0" and ids[len(names)] == f"photos/{names[0]}/1"
    assert photos.label_names == names and photos.label(len(names) + 2) == 2


def test_photos_deterministic_per_id(photos):
    other = open_source("builtin:photos?views=5&size=64")
    for i in (0, 30, len(photos) - 1):
        a_id, a = photos.get(i)
        b_id, b = other.get(i)
        assert a_id == b_id
        assert np.array_equal(_pixels(a), _pixels(b))
        assert np.array_equal(_pixels(a), _pixels(photos.get(i)[1]))


def test_photos_views_differ_and_are_rgb(photos):
    n = len(photos.names)
    v0, v1, v2 = (photos.get(k * n)[1] for k in range(3))
    assert v0.size == (512, 512)  # astronaut, unaugmented
    assert v1.size == v2.size == (64, 64) and v1.mode == "RGB"
    assert not np.array_equal(_pixels(v1), _pixels(v2))
    for i in range(len(photos)):  # every photo, incl. grey and RGBA ones, loads as RGB
        image = photos.get(i)[1]
        assert isinstance(image, Image.Image) and image.mode == "RGB"


def test_photos_seed_changes_views():
    a = open_source("builtin:photos?views=2&size=32&seed=1")
    b = open_source("builtin:photos?views=2&size=32&seed=2")
    n = len(a.names)  # type: ignore[attr-defined]
    assert not np.array_equal(_pixels(a.get(n)[1]), _pixels(b.get(n)[1]))
    assert np.array_equal(_pixels(a.get(0)[1]), _pixels(b.get(0)[1]))


def test_limits(photos):
    sub = open_source("builtin:photos?views=3&size=64", max_images=7)
    assert len(sub) == 7 and sub.image_id(6) == photos.image_id(6)
    sub = open_source("builtin:photos?views=3&size=64&start=5&stop=9")
    assert [sub.image_id(i) for i in range(len(sub))] == [photos.image_id(i) for i in range(5, 9)]
    sub2 = open_source(photos, start=5, stop=9)
    assert sub2.image_id(0) == photos.image_id(5) and sub2.label(0) == photos.label(5)
    with pytest.raises(IndexError):
        sub.image_id(4)


# -- digits, fashion-mnist, lfw --------------------------------------------------------------


def test_digits():
    d = open_source("builtin:digits")
    assert len(d) == 1797 and d.label_names == [str(i) for i in range(10)]
    image_id, image = d.get(5)
    assert image_id == "digits/0005" and image.size == (112, 112) and image.mode == "RGB"
    assert d.label(5) == 5
    small = open_source("builtin:digits?size=16&resample=bilinear")
    assert small.get(0)[1].size == (16, 16)
    with pytest.raises(ValueError, match="resample"):
        open_source("builtin:digits?resample=lanczos9")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("SAESCOPE_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        open_source(f"builtin:fashion-mnist?dir={tmp_path}")


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (6, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(6) % 10)
    src = open_source(f"builtin:fashion-mnist?split=test&dir={tmp_path}&size=56")
    assert len(src) == 6 and src.label(3) == 3 and src.label_names[3] == "Dress"
    image_id, image = src.get(2)
    assert image_id == "fashion-mnist/test/2" and image.size == (56, 56)


def test_lfw():
    src = open_source("builtin:lfw")
    assert len(src) == 200 and src.label_names == ["face", "non-face"]
    assert src.label(0) == 0 and src.label(150) == 1
    assert src.get(0)[1].mode == "RGB"


def test_unknown_builtin_and_bad_params():
    with pytest.raises(ValueError, match="unknown built-in source"):
        open_source("builtin:nope")
    with pytest.raises(ValueError, match="integer"):
        open_source("builtin:photos?views=many")
    with pytest.raises(ValueError, match="bad parameters"):
        open_source("builtin:digits?colour=red")
    with pytest.raises(FileNotFoundError, match="not found"):
        open_source("/no/such/folder")


# -- folders --------------------------------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for sub in ("cats", "dogs"):
        (root / sub / "deep").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(root / "cats" / "b.png")
    Image.new("L", (20, 30)).save(root / "cats" / "a.JPG")
    Image.new("RGBA", (20, 20)).save(root / "dogs" / "deep" / "c.png")
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / ".hidden.png").write_bytes(b"x")
    return root


def test_folder_source(tmp_path):
    src = open_source(_folder(tmp_path))
    assert isinstance(src, FolderSource)
    ids = [src.image_id(i) for i in range(len(src))]
    assert ids == ["cats/a.JPG", "cats/b.png", "dogs/broken.jpg", "dogs/deep/c.png"]
    assert src.label_names == ["cats", "dogs"]
    assert [src.label(i) for i in range(4)] == [0, 0, 1, 1]
    items = list(src)
    assert isinstance(items[2][1], ImageError) and "broken.jpg" in str(items[2][1])
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" for _, im in items[:2] + items[3:])
    assert items[0][1].size == (20, 30)


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        Image.new("RGB", (10, 10)).save(tmp_path / f"{i}.png")
    src = open_source(tmp_path)
    assert src.label_names is None and src.label(0) is None and len(src) == 3


# -- datasets -------------------------------------------------------------------------------


def _dataset(tmp_path: Path, as_dict: bool) -> Path:
    import datasets

    images = [Image.new("RGB", (20 + i, 20), (i * 40, 0, 0)) for i in range(4)]
    rows = {"picture": images + [{"bytes": b"garbage", "path": None}], "kind": [0, 1, 0, 1, 1]}
    feats = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["red", "blue"])}
    )
    ds = datasets.Dataset.from_dict(rows, features=feats)
    path = tmp_path / ("dsdict" if as_dict else "ds")
    (
        datasets.DatasetDict({"train": ds, "test": ds.select([0, 4])}) if as_dict else ds
    ).save_to_disk(str(path))
    return path


def test_saved_dataset_autodetects_columns(tmp_path):
    path = _dataset(tmp_path, as_dict=False)
    src = open_source(path)
    assert isinstance(src, HFSource)
    assert src.image_column == "picture" and src.label_column == "kind"
    assert len(src) == 5 and src.label_names == ["red", "blue"] and src.label(1) == 1
    assert src.image_id(2) == "ds/all/2"
    image_id, image = src.get(3)
    assert image.size == (23, 20) and image.mode == "RGB"
    bad_id, err = src.get(4)
    assert isinstance(err, ImageError) and bad_id in str(err)


def test_dataset_dict_splits(tmp_path):
    path = _dataset(tmp_path, as_dict=True)
    train = open_source(path)
    assert len(train) == 5 and train.image_id(0) == "dsdict/train/0"
    test = open_source(f"hf:{path}:test")
    assert len(test) == 2 and test.image_id(1) == "dsdict/test/1"
    assert isinstance(test.get(1)[1], ImageError)
    with pytest.raises(ValueError, match="split 'valid'"):
        open_source(f"hf:{path}:valid")
    limited = open_source(path, max_images=2)
    assert len(limited) == 2


def test_list_source_and_get_never_raises():
    class Exploding(ListSource):
        def load(self, index):
            raise RuntimeError("decoder crashed")

    src = Exploding([("x", Image.new("RGB", (10, 10)))])
    image_id, err = src.get(0)
    assert image_id == "x" and isinstance(err, ImageError) and "decoder crashed" in str(err)
    ok = ListSource([("a", Image.new("L", (10, 10))), ("b", b"junk")], labels=[1, 0])
    assert ok.get(0)[1].mode == "RGB" and isinstance(ok.get(1)[1], ImageError)
    assert isinstance(ok, ImageSource) and ok.label(0) == 1
