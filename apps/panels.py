"""Pictures the apps show: feature cards, exemplar tiles, head outputs before/after an edit.

Pure PIL/numpy (no gradio), so the rendering is unit-tested and timed on its own. Exemplar tiles
are cached: they depend only on the bundle and the feature.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from saescope.apps import adapter
from saescope.apps.text import feature_caption
from saescope.core.heatmap import model_view, render_spotlight

TILE = 112  # exemplar tile size in cards and galleries
GALLERY_TILE = 176


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow
        return ImageFont.load_default()


class TileCache:
    """LRU of rendered exemplar tiles keyed by (bundle path, feature, rank, size)."""

    def __init__(self, max_items: int = 2048):
        self.items: OrderedDict = OrderedDict()
        self.max_items = max_items
        self.lock = threading.Lock()

    def get(self, key, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.max_items:
                self.items.popitem(last=False)
        return value


TILES = TileCache()


def exemplar_tiles(
    bundle, preprocess, feature: int, n: int = 16, size: int = GALLERY_TILE
) -> list[tuple[Image.Image, str]]:
    """The feature's top exemplars with their patch heat-maps, ``[(tile, caption)]``."""
    out = []
    rows = adapter.top_exemplars(bundle, feature, n)
    if not rows:
        return out
    vmax = max(v for _, _, v, _ in rows) or None
    for rank, (index, _image_id, value, pmap) in enumerate(rows):

        def make(index=index, pmap=pmap):
            thumb = adapter.thumbnail(bundle, index)
            if thumb is None:
                return None
            view = model_view(thumb, preprocess, 1).resize((size, size), Image.BICUBIC)
            return render_spotlight(view, pmap, vmax=vmax)

        tile = TILES.get((str(bundle.path), int(feature), rank, size, n), make)
        if tile is not None:
            out.append((tile, f"{value:.2f}"))
    return out


def short_id(image_id: str, n: int = 22) -> str:
    s = str(image_id)
    return s if len(s) <= n else "…" + s[-(n - 1) :]


def feature_card(
    view: Image.Image,
    fmap: np.ndarray,
    tiles: Sequence[Image.Image],
    feature: int,
    score: float,
    unit: int = 72,
) -> Image.Image:
    """One top feature of a selection, square: its heat-map on the user's image (2 x 2 units,
    top left) framed by up to five of its top dataset images (right column, bottom row)."""
    big = unit * 2
    heat = render_spotlight(view.resize((big, big), Image.BICUBIC), fmap)
    gap = 3
    size = unit * 3 + gap
    card = Image.new("RGB", (size, size), (255, 255, 255))
    card.paste(heat, (0, 0))
    slots = [
        (big + gap, 0),
        (big + gap, unit),
        (big + gap, big + gap),
        (0, big + gap),
        (unit, big + gap),
    ]
    for t, xy in zip(list(tiles)[:5], slots):
        card.paste(t.resize((unit, unit), Image.BICUBIC), xy)
    for xy in slots[len(list(tiles)[:5]) :]:
        ImageDraw.Draw(card).rectangle(
            [xy[0], xy[1], xy[0] + unit - 1, xy[1] + unit - 1], fill=(241, 245, 249)
        )
    d = ImageDraw.Draw(card)
    label = f"#{feature}"
    font = _font(13)
    box = d.textbbox((0, 0), label, font=font)
    d.rectangle([0, 0, box[2] + 10, box[3] + 8], fill=(15, 23, 42))
    d.text((5, 3), label, fill=(255, 255, 255), font=font)
    return card


def top_feature_cards(eng, an, sel: set, n: int) -> tuple[list[tuple[Image.Image, str]], list[int]]:
    """The ``n`` top features of selection ``sel`` of analysed image ``an`` as gallery cards
    (:func:`feature_card`, caption: id and short label · mean activation · share of the
    selection where it fires), and their ids."""
    feats = eng.top_features(an, sel, n)
    cards = []
    for f, score, n_fire in feats:
        tiles = [t for t, _ in exemplar_tiles(eng.bundle, eng.backbone.preprocess, f, 5, TILE)]
        card = feature_card(an.view, an.feature_map(f), tiles, f, score)
        where = f"{n_fire / (len(sel) if sel else an.n_patches):.0%}"  # of the selection
        name = eng.bundle.feature_name(f)
        cards.append((card, feature_caption(f, name, f"{score:.2f}", where)))
    return cards, [f for f, _, _ in feats]


def probability_overlay(view: Image.Image, prob: np.ndarray, threshold: float = 0.5) -> Image.Image:
    """A [H, W] probability map over the image: salient parts keep their colours, the rest is
    darkened, and the ``threshold`` contour (the mask boundary) is drawn in orange."""
    w, h = view.size
    p = np.asarray(
        Image.fromarray(np.clip(prob, 0, 1).astype(np.float32), "F").resize((w, h), Image.BILINEAR)
    )
    base = np.asarray(view.convert("RGB"), np.float32)
    shade = (0.18 + 0.82 * p)[..., None]
    tint = np.array([30, 41, 80], np.float32)
    out = base * shade + tint * (1 - shade) * 0.6
    mask = p > threshold
    edge = np.zeros_like(mask)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge = np.asarray(Image.fromarray(edge.astype(np.uint8) * 255).resize((w, h)).convert("L")) > 0
    from PIL import ImageFilter

    edge = (
        np.asarray(Image.fromarray(edge.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3)))
        > 0
    )
    out[edge] = (249, 115, 22)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def change_overlay(
    view: Image.Image, before: np.ndarray, after: np.ndarray, threshold: float = 0.01
) -> tuple[Image.Image, dict]:
    """Where the head's output changed: red = up, blue = down, grey = unchanged (< threshold).

    The colour strength is relative to the largest change (at least 0.05), so that small but
    real effects stay visible; the returned numbers give the absolute scale."""
    w, h = view.size
    diff = np.asarray(after, np.float32) - np.asarray(before, np.float32)
    d = np.asarray(Image.fromarray(diff.astype(np.float32), "F").resize((w, h), Image.BILINEAR))
    base = np.asarray(view.convert("L").convert("RGB"), np.float32) * 0.45 + 120
    mag = np.clip(np.abs(d) / max(0.05, float(np.abs(d).max())), 0, 1)[..., None]
    colour = np.where(
        d[..., None] > 0, np.array([220, 38, 38], np.float32), np.array([37, 99, 235], np.float32)
    )
    changed = np.abs(d) > threshold
    a = np.where(changed[..., None], 0.35 + 0.65 * mag, 0.0)
    out = base * (1 - a) + colour * a
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    frac = float((np.abs(diff) > threshold).mean())
    info = {
        "changed_fraction": frac,
        "max_change": float(np.abs(diff).max()) if diff.size else 0.0,
        "mean_before": float(np.mean(before)),
        "mean_after": float(np.mean(after)),
        "threshold": threshold,
    }
    if before.ndim == 2:
        info["mask_agreement"] = float(((before > 0.5) == (after > 0.5)).mean())
    return img, info


def error_map(view: Image.Image, patch_error: np.ndarray) -> Image.Image:
    """Per-patch relative reconstruction error of the SAE over the image (bright = worse)."""
    return render_spotlight(view, np.clip(patch_error, 0, 1), vmax=1.0, cmap="viridis", dim=0.3)


def class_table(
    before: np.ndarray, after: np.ndarray | None, labels: Sequence[str] | None = None, k: int = 5
) -> str:
    """Markdown: the head's top classes before and after the edits."""
    idx = np.argsort(-before)[:k]

    def name(i):
        return labels[i] if labels and i < len(labels) else f"class {i}"

    rows = ["| class | before | after |", "|---|---|---|"]
    for i in idx:
        a = "" if after is None else f"{after[i]:.1%}"
        rows.append(f"| {name(int(i))} | {before[i]:.1%} | {a} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------ multi-class heads
# Class colours: background (class 0 of a segmentation probe, or "not salient") is drawn as the
# image itself; the other classes get distinct, saturated colours (tab10, then tab20's lighter
# half), the same colour for a class in every panel and in the legend.
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (127, 127, 127),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
    (158, 218, 229),
    (199, 199, 199),
]
BACKGROUND_NAMES = ("background", "not salient", "other", "unlabelled")


def background_class(names: Sequence[str]) -> int | None:
    """Index of the class drawn as 'no overlay' (a class named background), or None."""
    for i, n in enumerate(names):
        if str(n).lower() in BACKGROUND_NAMES:
            return i
    return None


def class_colours(names: Sequence[str]) -> np.ndarray:
    """[C, 3] uint8 colours; the background class (if any) is dark slate."""
    bg = background_class(names)
    out, k = [], 0
    for i in range(len(names)):
        if i == bg:
            out.append((30, 41, 59))
        else:
            out.append(_PALETTE[k % len(_PALETTE)])
            k += 1
    return np.asarray(out, np.uint8)


def as_class_probs(out: np.ndarray) -> np.ndarray:
    """A head's segmentation output as [C, H, W] class probabilities: a one-channel map
    (saliency, [H, W]) becomes the two classes (1 - p, p)."""
    out = np.asarray(out, np.float32)
    if out.ndim == 2:
        return np.stack([1.0 - out, out])
    if out.ndim != 3:
        raise ValueError(f"expected a [H, W] or [C, H, W] segmentation, got shape {out.shape}")
    return out


def class_map(probs: np.ndarray) -> np.ndarray:
    """[C, H, W] probabilities -> [H, W] predicted class (argmax)."""
    return np.asarray(probs).argmax(0)


def _labels_to(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(labels.astype(np.uint8), "L")
    return np.asarray(img.resize(size, Image.NEAREST)) if img.size != size else np.asarray(img)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge


def segmentation_overlay(
    view: Image.Image, probs: np.ndarray, names: Sequence[str], alpha: float = 0.6
) -> Image.Image:
    """The predicted class of every pixel over the image: class colours (see the legend),
    background left as the photo (dimmed), white lines between regions."""
    w, h = view.size
    labels = _labels_to(class_map(probs), (w, h))
    colours = class_colours(names).astype(np.float32)
    base = np.asarray(view.convert("RGB"), np.float32)
    bg = background_class(names)
    a = np.full(labels.shape, alpha, np.float32)
    if bg is not None:
        a[labels == bg] = 0.0
        base = np.where((labels == bg)[..., None], base * 0.55, base)
    out = base * (1 - a[..., None]) + colours[labels] * a[..., None]
    out[_boundaries(labels)] = (255, 255, 255)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def class_change_overlay(
    view: Image.Image, before: np.ndarray, after: np.ndarray, names: Sequence[str]
) -> tuple[Image.Image, dict]:
    """Pixels whose predicted class changed, in the colour of their *new* class with a magenta
    outline; unchanged pixels greyed out. Also returns the numbers behind the picture."""
    lb, la = class_map(before), class_map(after)
    changed = lb != la
    n = len(names)
    frac_b = np.bincount(lb.ravel(), minlength=n) / lb.size
    frac_a = np.bincount(la.ravel(), minlength=n) / la.size
    pairs = np.bincount((lb[changed] * n + la[changed]).ravel(), minlength=n * n) / lb.size
    top = [
        (int(i // n), int(i % n), float(pairs[i])) for i in np.argsort(-pairs)[:4] if pairs[i] > 0
    ]
    w, h = view.size
    ch = _labels_to(changed.astype(np.uint8), (w, h)).astype(bool)
    la_up = _labels_to(la, (w, h))
    grey = np.asarray(view.convert("L").convert("RGB"), np.float32) * 0.45 + 110
    colours = class_colours(names).astype(np.float32)
    out = np.where(ch[..., None], colours[la_up] * 0.85 + 255 * 0.15, grey)
    from PIL import ImageFilter

    ring = (
        np.asarray(Image.fromarray(ch.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
    )
    out[ring & ~ch] = (236, 72, 153)
    info = {
        "changed_fraction": float(changed.mean()),
        "n_changed": int(changed.sum()),
        "n_pixels": int(changed.size),
        "fraction_before": frac_b.tolist(),
        "fraction_after": frac_a.tolist(),
        "transitions": top,
        "max_prob_change": float(np.abs(np.asarray(after) - np.asarray(before)).max()),
    }
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)), info


def legend_html(
    names: Sequence[str],
    before: Sequence[float] | None = None,
    after: Sequence[float] | None = None,
    only_present: bool = False,
) -> str:
    """Colour chips for the classes, with the share of pixels of each before (and after)."""
    colours = class_colours(names)
    chips = []
    for i, name in enumerate(names):
        b = None if before is None else float(before[i])
        a = None if after is None else float(after[i])
        if only_present and not ((b or 0) > 0 or (a or 0) > 0):
            continue
        share = ""
        if b is not None:
            share = f" {b:.0%}" if a is None or abs(a - b) < 5e-4 else f" {b:.0%}→{a:.0%}"
        r, g, bl = (int(v) for v in colours[i])
        chips.append(
            f'<span class="seg-chip"><span class="seg-swatch" style="background:'
            f'rgb({r},{g},{bl})"></span>{html.escape(str(name))}'
            f'<span class="seg-share">{share}</span></span>'
        )
    return f'<div class="seg-legend">{"".join(chips)}</div>'


def probability_bars(
    before: np.ndarray,
    after: np.ndarray | None,
    names: Sequence[str],
    size: tuple[int, int] = (520, 300),
) -> Image.Image:
    """Class probabilities before (grey) and after the edits (blue), one row per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = np.asarray(before, np.float64)
    n = len(before)
    y = np.arange(n)[::-1]
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    hgt = 0.38 if after is not None else 0.7
    ax.barh(
        y + (hgt / 2 if after is not None else 0),
        before,
        height=hgt,
        color="#94a3b8",
        label="before",
    )
    if after is not None:
        after = np.asarray(after, np.float64)
        ax.barh(y - hgt / 2, after, height=hgt, color="#2563eb", label="after the edits")
        for yy, v in zip(y, after):
            if v >= 0.005:
                ax.text(
                    min(v + 0.01, 0.9),
                    yy - hgt / 2,
                    f"{v:.0%}",
                    va="center",
                    fontsize=7,
                    color="#1e3a8a",
                )
    ax.set_yticks(y)
    ax.set_yticklabels([str(c) for c in names], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    fig.tight_layout()
    from saescope.apps.plots import fig_to_image

    return fig_to_image(fig)


def metrics_line(info: dict) -> str:
    """One line on how good a head is on held-out data (what the app steers against)."""
    m = info.get("metrics") or {}
    if not m:
        if info.get("binary"):
            return "the backbone's own frozen head (no held-out labels in this bundle)"
        return "no held-out metrics stored with this head"
    parts = []
    if m.get("test_accuracy") is not None:
        what = "pixel accuracy" if m.get("pixel_accuracy") is not None else "accuracy"
        v = m.get("pixel_accuracy") if m.get("pixel_accuracy") is not None else m["test_accuracy"]
        parts.append(f"held-out {what} **{v:.2f}**")
        if m.get("pixel_accuracy") is not None:
            parts.append(f"patch accuracy {m['test_accuracy']:.2f}")
    if m.get("test_miou") is not None:
        parts.append(f"patch mIoU **{m['test_miou']:.2f}**")
    if m.get("test_balanced_accuracy") is not None:
        parts.append(f"balanced accuracy {m['test_balanced_accuracy']:.2f}")
    if m.get("chance_accuracy") is not None:
        parts.append(f"chance {m['chance_accuracy']:.2f}")
    if m.get("n_test_images"):
        parts.append(f"on {m['n_test_images']} unseen images")
    return ", ".join(parts)


__all__ = [
    "TILES",
    "as_class_probs",
    "background_class",
    "change_overlay",
    "class_change_overlay",
    "class_colours",
    "class_map",
    "class_table",
    "error_map",
    "exemplar_tiles",
    "feature_card",
    "legend_html",
    "metrics_line",
    "probability_bars",
    "probability_overlay",
    "segmentation_overlay",
    "short_id",
]
