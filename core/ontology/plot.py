"""The hierarchy figure: the WordNet nodes above the label synsets, features on their LCHs.

Why a spanning-tree layout: WordNet is a DAG, but a figure reads best as a tree with depth on x;
each node is drawn under its deepest parent, one column to its left.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from saescope.core.ontology.report import shorten
from saescope.core.ontology.result import Hierarchy, OntologyResult


def _layout(h: Hierarchy) -> dict[int, tuple[float, float]]:
    """x = depth; y from a depth-first order of a spanning tree (each node under its deepest
    parent, which sits exactly one column to the left), internal nodes centred on children."""
    children: dict[int, list[int]] = {o: [] for o in h.nodes}
    roots = []
    for o, s in h.nodes.items():
        parents = [p for p in s.parents() if p.offset in h.nodes]
        if not parents:
            roots.append(o)
            continue
        best = max(parents, key=lambda p: (p.max_depth, -p.offset))
        children[best.offset].append(o)
    for kids in children.values():
        kids.sort(key=lambda o: h.nodes[o].name)
    pos: dict[int, tuple[float, float]] = {}
    counter = [0.0]

    def place(o: int) -> float:
        kids = children[o]
        if not kids:
            y = counter[0]
            counter[0] += 1
        else:
            y = float(np.mean([place(k) for k in kids]))
        pos[o] = (float(h.nodes[o].max_depth), y)
        return y

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for r in sorted(roots):
            place(r)
    finally:
        sys.setrecursionlimit(limit)
    return pos


def plot_hierarchy(
    result: OntologyResult, path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw the hierarchy induced by the label synsets, features placed on their LCH nodes.

    x = depth, one row per leaf; node area and colour = number of features whose LCH is that
    node (grey = none); label synsets have a black ring and their label names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    h = result.hierarchy
    pos = _layout(h)
    counts = result.lch_counts
    names = result.mapping.label_names
    n_rows = max(1.0, max((y for _, y in pos.values()), default=0) + 1)
    max_d = max((x for x, _ in pos.values()), default=0)
    height = min(60.0, max(5.0, 0.26 * n_rows + 1.5))
    width = min(24.0, max(10.0, 1.2 * (max_d + 1) + 4))
    fig, ax = plt.subplots(figsize=(width, height))
    for p, c in h.edges:
        (x0, y0), (x1, y1) = pos[p], pos[c]
        ax.plot([x0, x1], [y0, y1], color="0.75", lw=0.7, zorder=1)
    offs = list(h.nodes)
    xs = np.array([pos[o][0] for o in offs])
    ys = np.array([pos[o][1] for o in offs])
    cnt = np.array([counts.get(o, 0) for o in offs], dtype=float)
    bare = cnt == 0
    ax.scatter(xs[bare], ys[bare], s=14, c="0.8", zorder=2, linewidths=0)
    sc = None
    if (~bare).any():
        vmax = max(2.0, cnt.max())
        sc = ax.scatter(
            xs[~bare],
            ys[~bare],
            s=30 + 60 * np.sqrt(cnt[~bare]),
            c=cnt[~bare],
            cmap="viridis",
            norm=LogNorm(vmin=1, vmax=vmax),
            zorder=3,
            edgecolors="white",
            linewidths=0.5,
        )
    cls = np.array([o in h.classes for o in offs])
    ax.scatter(
        xs[cls], ys[cls], s=60, facecolors="none", edgecolors="black", linewidths=1.0, zorder=4
    )
    fs = 7 if n_rows < 80 else 5
    for o, x, y, c in zip(offs, xs, ys, cnt):
        syn = h.nodes[o]
        if o in h.classes:
            labs = ", ".join(shorten(names[i].split(":")[-1], 18) for i in h.classes[o])
            text = f"{labs} ({syn.name})" + (f" [{int(c)}]" if c else "")
            pad = 6 + (np.sqrt(30 + 60 * np.sqrt(c)) / 2 if c else 4)  # clear of the marker
            ax.annotate(
                text,
                (x, y),
                xytext=(pad, 0),
                textcoords="offset points",
                va="center",
                fontsize=fs,
                zorder=5,
            )
        elif c:
            ax.annotate(
                f"{syn.name} [{int(c)}]",
                (x, y),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=fs,
                color="#1f3b73",
                zorder=5,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7),
            )
    if sc is not None:
        fig.colorbar(sc, ax=ax, fraction=0.025, pad=0.01, label="features with this LCH")
    s = result.summary()
    ax.set_xlabel("depth in WordNet (max_depth: edges to entity.n.01)")
    ax.set_yticks([])
    ax.set_xlim(-0.5, max_d + 3.5)
    ax.set_ylim(n_rows, -1)
    ax.set_title(
        (title + "\n" if title else "")
        + f"{s['n_analysed']} features placed on their lowest common hypernym; "
        f"{s['nodes_covered']}/{s['hierarchy_nodes']} nodes covered",
        fontsize=10,
    )
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["plot_hierarchy"]
