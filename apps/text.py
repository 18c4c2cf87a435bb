"""Short markdown and HTML snippets the apps show: feature statistics and error boxes."""

from __future__ import annotations

import html


def fmt_freq(f: float) -> str:
    if f <= 0:
        return "never fires"
    if f >= 0.01:
        return f"{f:.1%} of patches"
    return f"1 in {1 / f:,.0f} patches"


def stats_markdown(feature: int, st: dict | None, title: str = "") -> str:
    head = f"### Feature {feature}" + (f" · {html.escape(title)}" if title else "")
    if not st:
        return head + "\n\n_No statistics in this bundle._"
    return (
        head + "\n\n"
        f"- fires on **{fmt_freq(st['frequency'])}**\n"
        f"- mean activation when firing **{st['mean_active']:.3g}**\n"
        f"- max activation **{st['max']:.3g}**"
    )


def model_details(title: str, model: str, layer, rest: str) -> str:
    """The line under a bundle's title: model name and layer only where the title does not
    already say them (no "DINOv2-S — layer 10 — DINOv2-S · layer 10"), then ``rest``."""
    parts = []
    if model and model.split(" (")[0] not in title:  # "X (detail)": X said is enough
        parts.append(model)
    if layer is not None and f"layer {layer}" not in title:
        parts.append(f"layer {layer}")
    return " · ".join(parts + [rest])


def pair_title(left: str, right: str) -> str:
    """Two bundle titles as one escaped HTML line, the shared model named once:
    "<b>DINOv2-S</b> — layer 6 vs layer 10" rather than the model twice."""
    a, sep, ra = left.partition(" — ")
    b, _, rb = right.partition(" — ")
    if sep and a == b and ra and rb:
        return f"<b>{html.escape(a)}</b> — {html.escape(ra)} vs {html.escape(rb)}"
    return f"<b>{html.escape(left)}</b> vs <b>{html.escape(right)}</b>"


def error_box(message: str) -> str:
    return f'<div class="sae-error">⚠️ {html.escape(message)}</div>'


__all__ = ["fmt_freq", "stats_markdown", "model_details", "pair_title", "error_box"]
