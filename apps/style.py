"""The look every app shares: one theme (system fonts, nothing fetched) and one stylesheet."""

from __future__ import annotations

import gradio as gr

from saescope.apps.picker import PICKER_CSS

# the steering apps (apps/segment.py, apps/classify.py): class legend, callouts, slider rows
STEER_CSS = (
    """
.seg-legend { display: flex; flex-wrap: wrap; gap: 4px 10px; font-size: .85em; """
    """margin: .2em 0 .4em; }
.seg-chip { display: inline-flex; align-items: center; gap: 4px; white-space: nowrap; }
.seg-swatch { width: 12px; height: 12px; border-radius: 3px; display: inline-block;
              border: 1px solid rgba(0,0,0,.25); }
.seg-share { opacity: .7; }
.steer-callout { border-radius: 6px; padding: .5em .8em; margin: .3em 0; font-size: 1.05em; }
.steer-callout.changed { background: #fff7ed; border: 1px solid #fdba74; color: #9a3412; }
.steer-callout.same { background: #f1f5f9; border: 1px solid #cbd5e1; color: #334155; }
.steer-slot { align-items: center !important; }
"""
)

THEME = gr.themes.Soft(
    primary_hue="blue",
    secondary_hue="orange",
    neutral_hue="slate",
    # system fonts: nothing is fetched from a font CDN (works offline)
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)

CSS = (
    """
.sae-header h1 { margin-bottom: .1em; }
.sae-sub { opacity: .8; margin-top: 0; }
.sae-error { background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; border-radius: 6px;
             padding: .6em .8em; }
.sae-note { font-size: .9em; opacity: .85; }
.sae-section { margin-top: .6em; }
.sae-tight .gallery-item { border-radius: 6px; }
footer { display: none !important; }
.cmp-side { padding: .4em .6em; border-left: 4px solid var(--color-accent); }
.cmp-tag { font-size: .75em; letter-spacing: .08em; opacity: .7; }
/* component labels above images and plots, not floating over their top edge */
.block:has(> label[data-testid="block-label"].float) { display: flex; flex-direction: column; }
.block > label[data-testid="block-label"].float {
    position: static; flex: none; align-self: flex-start; margin: 0 0 4px; max-width: 100%; }
.block:has(> label[data-testid="block-label"].float) > :not(label) { flex: 1 1 auto;
    min-height: 0; }
/* gallery captions in full (wrapped if need be), never cut with an ellipsis */
.gallery-item .caption-label { white-space: normal; overflow: visible; text-overflow: clip;
    max-width: calc(100% - 8px); overflow-wrap: anywhere; line-height: 1.25; }
/* table headers stay whole words ("value", not "val / ue") */
.prose th { white-space: nowrap; word-break: keep-all; overflow-wrap: normal; }
.prose td { word-break: normal; }
"""
    + PICKER_CSS
    + STEER_CSS
)


__all__ = ["THEME", "CSS", "STEER_CSS"]
