"""Heat-map rendering: alignment with the model's crop, sizes, legend, hot spots, odd maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from saescope.core.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from saescope.core.heatmap import (
    colormap_lut,
    crop_box,
    crop_for_preprocess,
    exemplar_grid,
    overlay,
    render_heatmap,
)

DINO = Preprocess((224, 224), 256, IMAGENET_MEAN, IMAGENET_STD)
SQUARE = Preprocess((224, 224), 224, IMAGENET_MEAN, IMAGENET_STD)
RECT = Preprocess((112, 168), None, (0.5,) * 3, (0.5,) * 3)  # crop only, non-square


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def grey(w: int, h: int, level: int = 128) -> Image.Image:
    return Image.new("RGB", (w, h), (level, level, level))


@pytest.mark.parametrize("pre", [DINO, SQUARE, RECT])
@pytest.mark.parametrize("size", [(451, 300), (300, 451), (224, 224), (100, 60), (1000, 90)])
def test_crop_is_what_the_model_sees(pre: Preprocess, size: tuple[int, int]) -> None:
    image = photo(*size)
    crop = crop_for_preprocess(image, pre)
    assert crop.size == (pre.crop_size[1], pre.crop_size[0])
    pixels_only = Preprocess(pre.crop_size, None, pre.mean, pre.std)  # no geometry
    np.testing.assert_array_equal(pixels_only(crop).numpy(), pre(image).numpy())


def test_crop_box_locates_the_crop_in_the_original() -> None:
    image = photo(451, 300)
    left, top, right, bottom = crop_box(image.size, SQUARE)
    assert top == 0 and bottom == 300 and right - left == pytest.approx(300, abs=1)
    assert left == pytest.approx((451 - 300) / 2, abs=1.5)
    back = image.crop(tuple(round(v) for v in (left, top, right, bottom))).resize(
        (224, 224), Image.BICUBIC
    )
    diff = np.abs(np.asarray(back, float) - np.asarray(crop_for_preprocess(image, SQUARE), float))
    assert diff.mean() < 40  # same region (random pixels, different resampling order)


def test_output_keeps_image_size_and_aspect_and_adds_legend() -> None:
    image = photo(300, 200)
    m = np.random.default_rng(1).random((4, 6))
    out = render_heatmap(image, m)
    assert out.mode == "RGB" and out.height == 200 and out.width > 300
    plain = render_heatmap(image, m, legend=False)
    assert plain.size == (300, 200)
    assert np.array_equal(np.asarray(out)[:, :300], np.asarray(plain))
    legend = np.asarray(out)[:, 300:].reshape(-1, 3).astype(int)
    lut = colormap_lut("inferno").astype(int)
    for colour in (lut[255], lut[128], lut[0]):  # the colour bar spans the scale
        assert (np.abs(legend - colour).sum(1) <= 3).sum() >= 5
    assert (legend.sum(1) < 150).sum() > 20  # dark label text / outline


def test_hot_region_where_the_map_is_high() -> None:
    m = np.zeros((4, 4))
    m[0, 0] = 5.0
    out = np.asarray(render_heatmap(grey(160, 160), m, legend=False, smooth=False), float)
    hot, cold = out[5:35, 5:35].mean((0, 1)), out[125:155, 125:155].mean((0, 1))
    lut = colormap_lut("inferno").astype(float)
    np.testing.assert_allclose(hot, 128 * 0.45 + lut[255] * 0.55, atol=1.5)
    np.testing.assert_allclose(cold, 128 * 0.45 + lut[0] * 0.55, atol=1.5)
    assert hot.sum() > cold.sum() + 150
    # smooth upsampling keeps the peak where the patch is
    smooth = np.asarray(render_heatmap(grey(160, 160), m, legend=False), float).sum(2)
    peak = np.unravel_index(smooth.argmax(), smooth.shape)
    assert peak[0] < 40 and peak[1] < 40


def test_vmax_fixes_the_scale() -> None:
    m = np.full((2, 2), 1.0)
    a = np.asarray(render_heatmap(grey(20, 20), m, vmax=2.0, legend=False), float)
    b = np.asarray(render_heatmap(grey(20, 20), m, legend=False), float)
    assert a.sum() < b.sum()  # 1.0 is mid-scale against vmax 2, top of scale by default


@pytest.mark.parametrize("value", [0.0, 3.0, -1.0])
def test_constant_maps_render(value: float) -> None:
    out = render_heatmap(grey(64, 48), np.full((3, 4), value))
    assert out.height == 48
    heat = np.asarray(out)[:, :64].reshape(-1, 3)
    assert (heat == heat[0]).all()  # uniform overlay, no NaN artefacts


def test_nan_is_uncoloured_and_negative_clips() -> None:
    m = np.array([[np.nan, 1.0], [-4.0, 0.0]])
    image = grey(40, 40, 90)
    out = np.asarray(render_heatmap(image, m, legend=False, smooth=False)).astype(int)
    assert (out[:20, :20] == 90).all()  # NaN patch: the image itself
    assert np.array_equal(out[25:, 5], out[25:, 30])  # -4 renders like 0 (the bottom of the scale)
    assert out[5, 30].sum() > out[30, 30].sum()
    allnan = render_heatmap(image, np.full((2, 2), np.nan), legend=False)
    assert np.array_equal(np.asarray(allnan), np.asarray(image))


def test_bad_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="rows, cols"):
        render_heatmap(grey(10, 10), np.zeros(4))
    with pytest.raises(ValueError, match="alpha"):
        render_heatmap(grey(10, 10), np.zeros((2, 2)), alpha=2)
    with pytest.raises(ValueError, match="colormap"):
        render_heatmap(grey(10, 10), np.zeros((2, 2)), cmap="nope")


def test_exemplar_grid_layout_and_shared_scale() -> None:
    items = [
        (photo(224, 224, i), np.random.default_rng(i).random((16, 16)) * (i + 1), f"img {i}")
        for i in range(5)
    ]
    items.append((photo(300, 100), np.ones((16, 16))))  # a wide image, no caption
    out = exemplar_grid(items, cols=3, thumb=64)
    rows = 2
    assert out.height == rows * (64 + 4 + 12 + 4) + 4 or out.height >= rows * 68
    no_legend = exemplar_grid(items, cols=3, thumb=64, legend=False)
    assert out.width > no_legend.width == 3 * (64 + 4) + 4
    one = exemplar_grid(items[:1], cols=4, thumb=32, legend=False)
    assert one.width == 32 + 8
    # same map, different vmax: the shared scale makes the weaker tile darker
    m = np.ones((4, 4))
    tiles = np.asarray(
        exemplar_grid([(grey(64, 64), m), (grey(64, 64), 4 * m)], cols=2, thumb=64, legend=False),
        float,
    )
    assert tiles[4:68, 4:68].sum() < tiles[4:68, 72:136].sum()
    with pytest.raises(ValueError, match="at least one"):
        exemplar_grid([], cols=2)


def test_overlay_matches_image_size_for_any_grid() -> None:
    for grid in [(1, 1), (16, 16), (7, 3)]:
        assert overlay(photo(123, 77), np.zeros(grid)).size == (123, 77)
