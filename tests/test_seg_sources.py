"""Segmentation sources and the mask crop: labels must land on the pixels the model sees."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from saescope.core.backbones.base import Preprocess
from saescope.core.sources import IGNORE, MaskFolderSource, open_segmentation_source


def test_digit_scenes_are_deterministic_and_labels_follow_the_ink():
    src = open_segmentation_source("builtin:digit-scenes?n=20&size=112&seed=3")
    assert len(src) == 20 and src.class_names == ["background"] + [str(i) for i in range(10)]
    again = open_segmentation_source("builtin:digit-scenes?n=20&size=112&seed=3")
    for i in (0, 7, 19):
        img, mask = np.asarray(src.load(i)), src.mask(i)
        assert img.shape == (112, 112, 3) and mask.shape == (112, 112)
        assert np.array_equal(img, np.asarray(again.load(i))) and np.array_equal(
            mask, again.mask(i)
        )
        assert src.image_id(i) == again.image_id(i)
        grey = img[..., 0]
        assert (mask > 0).any() and (mask == 0).any()
        assert grey[mask > 0].mean() > 3 * max(grey[mask == 0].mean(), 1)  # labelled pixels are ink
    other = open_segmentation_source("builtin:digit-scenes?n=20&size=112&seed=4")
    assert not np.array_equal(src.mask(0), other.mask(0))
    assert len(open_segmentation_source("builtin:digit-scenes?n=20", max_images=5)) == 5
    assert open_segmentation_source("builtin:digit-scenes?n=20", max_images=5).mask(4).shape == (
        224,
        224,
    )


def test_bad_specs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown built-in segmentation source"):
        open_segmentation_source("builtin:nope")
    with pytest.raises(ValueError, match="max_objects"):
        open_segmentation_source("builtin:digit-scenes?max_objects=99")
    with pytest.raises(FileNotFoundError, match="images/ and masks/"):
        open_segmentation_source(str(tmp_path / "missing"))
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="images/ and masks/"):
        open_segmentation_source(str(tmp_path))


@settings(max_examples=25, deadline=None)
@given(st.integers(40, 300), st.integers(40, 300), st.sampled_from([None, 64, 80]))
def test_crop_mask_cuts_exactly_like_crop(w, h, short):
    """Paint label k as grey level 40k in blocks; after cropping, the image's colours and the
    cropped labels agree wherever the image is not blurred by resampling (block interiors)."""
    p = Preprocess((56, 56), short, (0, 0, 0), (1, 1, 1), resample=Image.NEAREST)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = (yy * 3 // h) * 2 + (xx * 2 // w)  # 6 blocks
    image = Image.fromarray((labels * 40).astype(np.uint8)).convert("RGB")
    cropped = np.asarray(p.crop(image))[..., 0].astype(int)
    mask = p.crop_mask(labels)
    assert mask.shape == cropped.shape == (56, 56)
    assert np.array_equal(cropped, mask * 40)


def test_crop_mask_rejects_bad_masks():
    p = Preprocess((28, 28), 32, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="2-D"):
        p.crop_mask(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        p.crop_mask(np.full((4, 4), -2))


def test_mask_folder_source(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("sky\ngrass\n")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(
            tmp_path / "images" / f"im{i}.jpg"
        )
        m = np.zeros((30, 40), np.uint8)
        m[15:] = 1
        m[0, 0] = 255
        Image.fromarray(m).save(tmp_path / "masks" / f"im{i}.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(
        tmp_path / "images" / "nomask.jpg"
    )
    src = open_segmentation_source(str(tmp_path))
    assert (
        isinstance(src, MaskFolderSource) and len(src) == 3 and src.class_names == ["sky", "grass"]
    )
    mask = src.mask(1)
    assert mask[0, 0] == IGNORE and mask[20, 5] == 1 and mask[5, 5] == 0
    (tmp_path / "masks" / "im2.png").write_bytes(b"garbage")
    from saescope.core.images import ImageError

    with pytest.raises(ImageError, match="unreadable mask"):
        src.mask(2)


def test_hf_segmentation_dataset_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)) for _ in range(4)]
    masks = []
    for _ in range(4):
        m = np.zeros((24, 24), np.uint8)
        m[:, 12:] = 2  # ADE20K style: 0 = other
        m[:12, :12] = 1
        masks.append(Image.fromarray(m))
    ds = datasets.Dataset.from_dict(
        {"image": images, "annotation": masks},
        features=datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()}),
    )
    ds.save_to_disk(str(tmp_path / "seg"))
    src = open_segmentation_source(f"hf:{tmp_path / 'seg'}?reduce_labels=1")
    assert len(src) == 4 and src.mask_column == "annotation"
    mask = src.mask(0)
    assert mask[0, 0] == 0 and mask[0, 20] == 1 and mask[20, 0] == IGNORE
    src.finalise_classes(2)
    assert src.class_names == ["class 0", "class 1"]
