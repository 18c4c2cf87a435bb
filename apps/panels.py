"""Pictures the apps show: feature cards, exemplar tiles, head outputs before/after an edit.

Pure PIL/numpy (no gradio), so the rendering is unit-tested and timed on its own. Exemplar tiles
are cached: they depend only on the bundle and the feature.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from apps import adapter

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


def exemplar_tiles(bundle, preprocess, feature: int, n: int = 16, size: int = GALLERY_TILE
                   ) -> list[tuple[Image.Image, str]]:
    """The feature's top exemplars with their patch heat-maps, ``[(tile, caption)]``."""
    out = []
    rows = adapter.top_exemplars(bundle, feature, n)
    if not rows:
        return out
    vmax = max(v for _, _, v, _ in rows) or None
    for rank, (index, image_id, value, pmap) in enumerate(rows):
        def make(index=index, pmap=pmap):
            thumb = adapter.thumbnail(bundle, index)
            if thumb is None:
                return None
            view = adapter.model_view(thumb, preprocess, 1).resize((size, size), Image.BICUBIC)
            return adapter.render_heatmap(view, pmap, vmax=vmax)

        tile = TILES.get((str(bundle.path), int(feature), rank, size, n), make)
        if tile is not None:
            out.append((tile, f"{value:.2f}"))
    return out


def short_id(image_id: str, n: int = 22) -> str:
    s = str(image_id)
    return s if len(s) <= n else "…" + s[-(n - 1):]


def feature_card(view: Image.Image, fmap: np.ndarray, tiles: Sequence[Image.Image], feature: int,
                 score: float, unit: int = 72) -> Image.Image:
    """One top feature of a selection, square: its heat-map on the user's image (2 x 2 units,
    top left) framed by up to five of its top dataset images (right column, bottom row)."""
    big = unit * 2
    heat = adapter.render_heatmap(view.resize((big, big), Image.BICUBIC), fmap)
    gap = 3
    size = unit * 3 + gap
    card = Image.new("RGB", (size, size), (255, 255, 255))
    card.paste(heat, (0, 0))
    slots = [(big + gap, 0), (big + gap, unit), (big + gap, big + gap), (0, big + gap),
             (unit, big + gap)]
    for t, xy in zip(list(tiles)[:5], slots):
        card.paste(t.resize((unit, unit), Image.BICUBIC), xy)
    for xy in slots[len(list(tiles)[:5]):]:
        ImageDraw.Draw(card).rectangle([xy[0], xy[1], xy[0] + unit - 1, xy[1] + unit - 1],
                                       fill=(241, 245, 249))
    d = ImageDraw.Draw(card)
    label = f"#{feature}"
    font = _font(13)
    box = d.textbbox((0, 0), label, font=font)
    d.rectangle([0, 0, box[2] + 10, box[3] + 8], fill=(15, 23, 42))
    d.text((5, 3), label, fill=(255, 255, 255), font=font)
    return card


def probability_overlay(view: Image.Image, prob: np.ndarray, threshold: float = 0.5
                        ) -> Image.Image:
    """A [H, W] probability map over the image: salient parts keep their colours, the rest is
    darkened, and the ``threshold`` contour (the mask boundary) is drawn in orange."""
    w, h = view.size
    p = np.asarray(Image.fromarray(np.clip(prob, 0, 1).astype(np.float32), "F")
                   .resize((w, h), Image.BILINEAR))
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

    edge = np.asarray(Image.fromarray(edge.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    out[edge] = (249, 115, 22)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def change_overlay(view: Image.Image, before: np.ndarray, after: np.ndarray,
                   threshold: float = 0.01) -> tuple[Image.Image, dict]:
    """Where the head's output changed: red = up, blue = down, grey = unchanged (< threshold).

    The colour strength is relative to the largest change (at least 0.05), so that small but
    real effects stay visible; the returned numbers give the absolute scale."""
    w, h = view.size
    diff = np.asarray(after, np.float32) - np.asarray(before, np.float32)
    d = np.asarray(Image.fromarray(diff.astype(np.float32), "F").resize((w, h), Image.BILINEAR))
    base = np.asarray(view.convert("L").convert("RGB"), np.float32) * 0.45 + 120
    mag = np.clip(np.abs(d) / max(0.05, float(np.abs(d).max())), 0, 1)[..., None]
    colour = np.where(d[..., None] > 0, np.array([220, 38, 38], np.float32), np.array([37, 99, 235], np.float32))
    changed = np.abs(d) > threshold
    a = np.where(changed[..., None], 0.35 + 0.65 * mag, 0.0)
    out = base * (1 - a) + colour * a
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    frac = float((np.abs(diff) > threshold).mean())
    info = {"changed_fraction": frac, "max_change": float(np.abs(diff).max()) if diff.size else 0.0,
            "mean_before": float(np.mean(before)), "mean_after": float(np.mean(after)),
            "threshold": threshold}
    if before.ndim == 2:
        info["mask_agreement"] = float(((before > 0.5) == (after > 0.5)).mean())
    return img, info


def error_map(view: Image.Image, patch_error: np.ndarray) -> Image.Image:
    """Per-patch relative reconstruction error of the SAE over the image (bright = worse)."""
    return adapter.render_heatmap(view, np.clip(patch_error, 0, 1), vmax=1.0, cmap="viridis", dim=0.3)


def class_table(before: np.ndarray, after: np.ndarray | None, labels: Sequence[str] | None = None,
                k: int = 5) -> str:
    """Markdown: the head's top classes before and after the edits."""
    idx = np.argsort(-before)[:k]
    name = (lambda i: labels[i] if labels and i < len(labels) else f"class {i}")
    rows = ["| class | before | after |", "|---|---|---|"]
    for i in idx:
        a = "" if after is None else f"{after[i]:.1%}"
        rows.append(f"| {name(int(i))} | {before[i]:.1%} | {a} |")
    return "\n".join(rows)


__all__ = ["TILES", "change_overlay", "class_table", "error_map", "exemplar_tiles", "feature_card",
           "probability_overlay", "short_id"]
