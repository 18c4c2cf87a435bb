"""PNG plots of training results (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fvu_vs_l0(rows: Sequence[dict], path: str | Path) -> Path:
    """FVU against L0 for every SAE of a sweep, one series per architecture.

    Why: it is the sparsity frontier a sweep is run to find.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    by_arch: dict[str, list[dict]] = {}
    for r in rows:
        by_arch.setdefault(r["architecture"], []).append(r)
    for arch, rs in sorted(by_arch.items()):
        rs = sorted(rs, key=lambda r: r["l0"])
        ax.plot([r["l0"] for r in rs], [r["fvu"] for r in rs], "o-", label=arch)
        for r in rs:
            ax.annotate(
                r["name"],
                (r["l0"], r["fvu"]),
                fontsize=6,
                alpha=0.7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU (fraction of variance unexplained)")
    ax.set_title("Sparsity / reconstruction frontier")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_feature_frequency(freq: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Histogram of log10 firing frequency per latent; dead latents counted separately."""
    plt = _plt()
    freq = np.asarray(freq, dtype=np.float64)
    dead = int((freq <= 0).sum())
    live = freq[freq > 0]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if live.size:
        ax.hist(np.log10(live), bins=60, color="#4c72b0")
    ax.axvline(-2, color="#c44e52", ls="--", lw=1, label="dense threshold (1%)")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}  ({dead} dead of {freq.size})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
