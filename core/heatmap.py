"""Patch activations drawn over the pixels the model actually saw, with a value-scale legend.

Why :func:`crop_for_preprocess`: a backbone resizes the short side and centre-crops, so the patch
grid covers that crop, not the uploaded image. Drawing a grid over the full image would shift
every heat-map; drawing it over the crop (kept at its real aspect ratio) lines up patch (r, c)
with the pixels that produced it.

Colours come from matplotlib colormaps turned into a 256-entry LUT (no figure, no backend);
everything else is numpy + PIL, so rendering is fast enough for apps and works headless.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from saescope.core.backbones.base import Preprocess

LEGEND_BG = (255, 255, 255)
TEXT = (20, 20, 20)


def _resized_size(size: tuple[int, int], preprocess: Preprocess) -> tuple[int, int]:
    """Image size after Preprocess' short-side resize and its upscale-to-fit rule."""
    w, h = size
    if preprocess.resize_shortest_edge:
        s = preprocess.resize_shortest_edge / min(w, h)
        w, h = max(1, round(w * s)), max(1, round(h * s))
    ch, cw = preprocess.crop_size
    if (w, h) != (cw, ch) and (w < cw or h < ch):
        s = max(cw / w, ch / h)
        w, h = max(cw, round(w * s)), max(ch, round(h * s))
    return w, h


def crop_for_preprocess(image: Image.Image, preprocess: Preprocess) -> Image.Image:
    """The RGB crop the model sees (:meth:`Preprocess.crop`): normalising the crop's pixels gives
    exactly ``preprocess(image)``."""
    return preprocess.crop(image)


def crop_box(size: tuple[int, int], preprocess: Preprocess) -> tuple[float, float, float, float]:
    """Where the model's crop lies in the original image: (left, top, right, bottom) in pixels.

    For drawing on the uploaded image itself (e.g. an outline of what the model saw).
    """
    w0, h0 = size
    w, h = _resized_size(size, preprocess)
    ch, cw = preprocess.crop_size
    left, top = (w - cw) // 2, (h - ch) // 2
    sx, sy = w0 / w, h0 / h
    return left * sx, top * sy, (left + cw) * sx, (top + ch) * sy


def model_view(image: Image.Image, preprocess: Preprocess, scale: int = 2) -> Image.Image:
    """The crop the model sees, at ``scale`` x the model's input size, for display.

    Cut from the original pixels (:func:`crop_for_preprocess`), then resized, so it stays sharp
    where the model's own input would be blurry.
    """
    ch, cw = preprocess.crop_size
    view = crop_for_preprocess(image, preprocess)
    return view.resize((cw * scale, ch * scale), Image.BICUBIC)


@cache
def _lut(cmap: str) -> np.ndarray:
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError as err:
        raise ValueError(f"unknown colormap {cmap!r}") from err
    lut = (cm(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    lut.setflags(write=False)  # shared by every caller
    return lut


def colormap_lut(cmap: str = "inferno") -> np.ndarray:
    """[256, 3] uint8 colours of a matplotlib colormap (computed once per name, read-only)."""
    return _lut(cmap)


def value_range(
    maps: Sequence[np.ndarray] | np.ndarray, vmin: float = 0.0, vmax: float | None = None
) -> tuple[float, float]:
    """(vmin, vmax) for a colour scale: vmax defaults to the largest finite value.

    A scale that would be empty (all-NaN, constant at vmin, or vmax <= vmin) becomes
    ``(vmin, vmin + 1)`` so that rendering never divides by zero.
    """
    if vmax is None:
        arrays = [maps] if isinstance(maps, np.ndarray) else list(maps)
        finite = [np.asarray(m, np.float64)[np.isfinite(m)] for m in arrays]
        finite = [f for f in finite if f.size]
        vmax = max(float(f.max()) for f in finite) if finite else vmin
    if not np.isfinite(vmax) or vmax <= vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=max(6, size))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def overlay(
    image: Image.Image,
    patch_map: np.ndarray,
    vmin: float = 0.0,
    vmax: float | None = None,
    cmap: str = "inferno",
    alpha: float = 0.55,
    smooth: bool = True,
) -> Image.Image:
    """The image with the patch grid's colours blended in (no legend), same size as ``image``.

    NaN patches are left uncoloured; values outside [vmin, vmax] are clipped (negatives show as
    the coldest colour with the default vmin of 0).
    """
    grid = np.asarray(patch_map, dtype=np.float32)
    if grid.ndim != 2 or 0 in grid.shape:
        raise ValueError(
            f"patch_map must be a non-empty [rows, cols] array, got shape {grid.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    vmin, vmax = value_range(grid, vmin, vmax)
    image = image.convert("RGB")
    w, h = image.size
    valid = np.isfinite(grid)
    norm = np.clip((np.where(valid, grid, vmin) - vmin) / (vmax - vmin), 0.0, 1.0)
    resample = Image.BILINEAR if smooth else Image.NEAREST
    up = np.asarray(Image.fromarray(norm.astype(np.float32)).resize((w, h), resample))
    mask = np.asarray(Image.fromarray(valid.astype(np.uint8) * 255).resize((w, h), Image.NEAREST))
    colours = colormap_lut(cmap)[np.clip(np.rint(up * 255), 0, 255).astype(np.uint8)]
    a = (mask[..., None] > 0) * np.float32(alpha)
    out = np.asarray(image, np.float32) * (1 - a) + colours.astype(np.float32) * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def colorbar(
    height: int,
    vmin: float,
    vmax: float,
    cmap: str = "inferno",
    label: str | None = "activation",
    width: int | None = None,
) -> Image.Image:
    """A vertical colour bar, ``height`` pixels tall: high values on top, min/mid/max labels."""
    fs = int(np.clip(height / 16, 8, 14))
    font = _font(fs)
    texts = [_fmt(vmax), _fmt((vmin + vmax) / 2), _fmt(vmin)]
    text_w = max(int(font.getlength(t)) for t in texts)
    bar_w = max(6, fs)
    width = width or bar_w + text_w + 3 * max(2, fs // 3) + (fs + 2 if label else 0)
    panel = Image.new("RGB", (width, height), LEGEND_BG)
    pad = max(2, fs // 3)
    top, bottom = pad + fs // 2, height - pad - fs // 2
    if bottom - top < 4:
        top, bottom = 0, height
    lut = colormap_lut(cmap)
    ramp = lut[np.linspace(255, 0, bottom - top).round().astype(int)]  # top = vmax
    x0 = pad
    panel.paste(Image.fromarray(np.repeat(ramp[:, None], bar_w, axis=1)), (x0, top))
    draw = ImageDraw.Draw(panel)
    draw.rectangle([x0 - 1, top - 1, x0 + bar_w, bottom], outline=TEXT)
    for t, y in zip(texts, (top, (top + bottom) // 2, bottom)):
        draw.line([x0 + bar_w, y, x0 + bar_w + pad, y], fill=TEXT)
        draw.text((x0 + bar_w + pad + 1, y), t, fill=TEXT, font=font, anchor="lm")
    if label:
        tw = int(font.getlength(label))
        txt = Image.new("RGB", (tw + 2, fs + 2), LEGEND_BG)
        ImageDraw.Draw(txt).text((1, 0), label, fill=TEXT, font=font)
        txt = txt.rotate(90, expand=True)
        if txt.height <= height:
            panel.paste(txt, (width - txt.width - 1, (height - txt.height) // 2))
    return panel


def render_heatmap(
    image: Image.Image,
    patch_map: np.ndarray,
    vmax: float | None = None,
    cmap: str = "inferno",
    alpha: float = 0.55,
    legend: bool = True,
    vmin: float = 0.0,
    smooth: bool = True,
    label: str | None = "activation",
) -> Image.Image:
    """Patch activations over ``image`` (the model's crop), with a colour bar on the right.

    The [rows, cols] grid is stretched over the whole image, so pass the crop the model saw
    (:func:`crop_for_preprocess`) to keep patches aligned; the image keeps its own size and
    aspect ratio. ``vmax`` fixes the top of the scale (e.g. to compare several maps); NaN patches
    stay uncoloured, negative values clip to ``vmin``.
    """
    lo, hi = value_range(np.asarray(patch_map, np.float32), vmin, vmax)
    heat = overlay(image, patch_map, lo, hi, cmap, alpha, smooth)
    if not legend:
        return heat
    return with_colorbar(heat, hi, lo, cmap, label)


def with_colorbar(
    image: Image.Image,
    vmax: float,
    vmin: float = 0.0,
    cmap: str = "inferno",
    label: str | None = "activation",
) -> Image.Image:
    """``image`` with a vertical :func:`colorbar` of its own height on its right.

    An empty scale (``vmax <= vmin``) is drawn as ``(vmin, vmin + 1)``.
    """
    bar = colorbar(image.height, vmin, vmax if vmax > vmin else vmin + 1.0, cmap, label)
    out = Image.new("RGB", (image.width + bar.width, image.height), LEGEND_BG)
    out.paste(image, (0, 0))
    out.paste(bar, (image.width, 0))
    return out


def render_spotlight(
    image: Image.Image,
    patch_map: np.ndarray,
    vmax: float | None = None,
    cmap: str = "inferno",
    alpha: float = 0.75,
    dim: float = 0.55,
) -> Image.Image:
    """``patch_map [rows, cols]`` over ``image``: activations in colour, the rest dimmed.

    The apps' style: where a feature is silent the picture darkens (by ``dim``) and colour
    fades in with the square root of the activation, so weak activations stay visible but
    faint. ``vmax`` fixes the colour scale (e.g. a feature's max over the dataset) so that maps
    are comparable; by default the map's own maximum. NaN patches count as silent. No legend
    (add one with :func:`with_colorbar`).
    """
    pm = np.nan_to_num(np.asarray(patch_map, np.float32), nan=0.0)
    top = float(vmax) if vmax else float(pm.max())
    norm = np.clip(pm / top, 0.0, 1.0) if top > 0 else np.zeros_like(pm)
    w, h = image.size
    up = Image.fromarray((norm * 255).astype(np.uint8), "L").resize((w, h), Image.BILINEAR)
    v = np.asarray(up, np.float32)[..., None] / 255.0
    colour = colormap_lut(cmap)[(v[..., 0] * 255).astype(np.uint8)].astype(np.float32)
    base = np.asarray(image.convert("RGB"), np.float32)
    a = alpha * np.sqrt(v)  # weak activations stay visible but faint
    out = base * (1 - dim * (1 - v)) * (1 - a) + colour * a
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _fit(image: Image.Image, box: int) -> Image.Image:
    """Resize to fit a box x box square, keeping the aspect ratio."""
    w, h = image.size
    s = box / max(w, h)
    return image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def exemplar_grid(
    images_and_maps: Sequence[tuple],
    cols: int = 4,
    thumb: int = 128,
    vmax: float | None = None,
    cmap: str = "inferno",
    alpha: float = 0.55,
    legend: bool = True,
    pad: int = 4,
) -> Image.Image:
    """Thumbnails of exemplars with their heat-maps, on one shared colour scale.

    ``images_and_maps``: ``(image, patch_map)`` or ``(image, patch_map, caption)`` items (images
    as the model's crops). ``vmax`` defaults to the largest value of all maps, so tiles compare.
    """
    items = list(images_and_maps)
    if not items:
        raise ValueError("exemplar_grid needs at least one (image, patch_map) item")
    if cols < 1 or thumb < 8:
        raise ValueError(f"need cols >= 1 and thumb >= 8, got cols={cols}, thumb={thumb}")
    lo, hi = value_range([np.asarray(it[1], np.float32) for it in items], 0.0, vmax)
    captions = any(len(it) > 2 and it[2] for it in items)
    fs = int(np.clip(thumb / 10, 8, 13))
    font = _font(fs)
    cap_h = fs + 4 if captions else 0
    cols = min(cols, len(items))
    rows = -(-len(items) // cols)
    tile_w, tile_h = thumb + pad, thumb + cap_h + pad
    grid_w, grid_h = cols * tile_w + pad, rows * tile_h + pad
    canvas = Image.new("RGB", (grid_w, grid_h), LEGEND_BG)
    draw = ImageDraw.Draw(canvas)
    for i, it in enumerate(items):
        image, patch_map = it[0], it[1]
        tile = _fit(overlay(image, patch_map, lo, hi, cmap, alpha), thumb)
        x = pad + (i % cols) * tile_w + (thumb - tile.width) // 2
        y = pad + (i // cols) * tile_h + (thumb - tile.height) // 2
        canvas.paste(tile, (x, y))
        if len(it) > 2 and it[2]:
            text = str(it[2])
            while len(text) > 1 and font.getlength(text) > thumb:
                text = text[:-2] + "…"
            draw.text(
                (pad + (i % cols) * tile_w + thumb // 2, pad + (i // cols) * tile_h + thumb + 2),
                text,
                fill=TEXT,
                font=font,
                anchor="mt",
            )
    if not legend:
        return canvas
    bar = colorbar(min(grid_h, max(thumb, 96)), lo, hi, cmap)
    out = Image.new("RGB", (grid_w + bar.width, grid_h), LEGEND_BG)
    out.paste(canvas, (0, 0))
    out.paste(bar, (grid_w, (grid_h - bar.height) // 2))
    return out


__all__ = [
    "crop_for_preprocess",
    "crop_box",
    "model_view",
    "render_heatmap",
    "render_spotlight",
    "with_colorbar",
    "overlay",
    "colorbar",
    "exemplar_grid",
    "colormap_lut",
    "value_range",
]
