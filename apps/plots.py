"""Matplotlib plots drawn to images: a feature's activation histogram and the feature scatter.

Both render off-screen (Agg) into PIL images, so the apps show them in ``gr.Image`` panels and
can map a click on the scatter back to the feature under it.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def fig_to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def histogram_image(
    hist: np.ndarray | None, edges: np.ndarray | None, feature: int, size=(420, 200)
) -> Image.Image | None:
    """The feature's activation histogram (log-spaced bins) as a small bar chart."""
    if hist is None or edges is None or np.asarray(hist).sum() == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    nz = np.nonzero(hist)[0]
    lo, hi = max(nz[0] - 1, 0), min(nz[-1] + 2, len(hist))
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax.bar(
        edges[lo:hi],
        hist[lo:hi],
        width=np.diff(edges)[lo:hi],
        align="edge",
        color="#f97316",
        edgecolor="white",
        linewidth=0.4,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("activation (when firing)", fontsize=8)
    ax.set_ylabel("patches", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"Activation histogram of feature {feature}", fontsize=9)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    fig.tight_layout()
    return fig_to_image(fig)


class FeatureScatter:
    """Every feature as a point (log frequency vs log mean activation when firing).

    The plot is drawn once per filter; clicking the image picks the nearest feature (the pixel
    positions of all points are kept for that).
    """

    def __init__(self, frequency: np.ndarray, mean_active: np.ndarray, size=(460, 330)):
        self.freq = np.asarray(frequency, np.float64)
        self.mean = np.asarray(mean_active, np.float64)
        self.alive = self.freq > 0
        self.size = size
        self.x = np.log10(np.where(self.alive, self.freq, np.nan))
        self.y = np.log10(np.where(self.alive & (self.mean > 0), self.mean, np.nan))
        self._px: np.ndarray | None = None
        self._image: Image.Image | None = None
        self._key: Any = None

    def bounds(self) -> tuple[float, float, float, float]:
        """(min, max) of log10 frequency and log10 mean activation over live features."""
        x = self.x[np.isfinite(self.x)]
        y = self.y[np.isfinite(self.y)]
        if not len(x):
            return (-6.0, 0.0, -3.0, 3.0)
        return (
            float(np.floor(x.min() * 10) / 10),
            float(np.ceil(x.max() * 10) / 10),
            float(np.floor(y.min() * 10) / 10),
            float(np.ceil(y.max() * 10) / 10),
        )

    def in_range(self, fmin: float, fmax: float, amin: float, amax: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (self.x >= fmin) & (self.x <= fmax) & (self.y >= amin) & (self.y <= amax)

    def render(self, selected: np.ndarray | None = None, current: int | None = None) -> Image.Image:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        key = None if selected is None else selected.tobytes()
        if self._image is None or key != self._key:
            fig, ax = plt.subplots(figsize=(self.size[0] / 100, self.size[1] / 100), dpi=100)
            ok = np.isfinite(self.x) & np.isfinite(self.y)
            sel = ok if selected is None else ok & selected
            ax.scatter(self.x[ok & ~sel], self.y[ok & ~sel], s=3, c="#cbd5e1", linewidths=0)
            ax.scatter(self.x[sel], self.y[sel], s=4, c="#2563eb", linewidths=0, alpha=0.7)
            ax.set_xlabel("log10 firing frequency (fraction of patches)", fontsize=8)
            ax.set_ylabel("log10 mean activation when firing", fontsize=8)
            ax.tick_params(labelsize=7)
            dead = int((~self.alive).sum())
            ax.set_title(
                f"{int(ok.sum())} live features"
                + (f", {dead} never fired" if dead else "")
                + " — click a point",
                fontsize=9,
            )
            for s in ("top", "right"):
                ax.spines[s].set_visible(False)
            fig.tight_layout()
            fig.canvas.draw()
            xy = np.column_stack([np.nan_to_num(self.x, nan=-1e9), np.nan_to_num(self.y, nan=-1e9)])
            px = ax.transData.transform(xy)
            h = fig.canvas.get_width_height()[1]
            px[:, 1] = h - px[:, 1]  # image rows count from the top
            px[~ok] = np.nan
            self._px = px
            self._image = fig_to_image(fig)
            self._key = key
        img = self._image
        if current is not None and self._px is not None and np.isfinite(self._px[current]).all():
            from PIL import ImageDraw

            img = img.copy()
            d = ImageDraw.Draw(img)
            x, y = self._px[current]
            d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=(234, 88, 12), width=3)
        return img

    def nearest(self, x: float, y: float, among: np.ndarray | None = None) -> int | None:
        if self._px is None:
            self.render()
        px = self._px
        d = (px[:, 0] - x) ** 2 + (px[:, 1] - y) ** 2
        d = np.where(np.isfinite(d), d, np.inf)
        if among is not None and among.any():
            d = np.where(among, d, np.inf)
        i = int(np.argmin(d))
        return i if np.isfinite(d[i]) else None


__all__ = ["fig_to_image", "histogram_image", "FeatureScatter"]
