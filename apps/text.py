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


def error_box(message: str) -> str:
    return f'<div class="sae-error">⚠️ {html.escape(message)}</div>'


__all__ = ["fmt_freq", "stats_markdown", "error_box"]
