"""Segmentation steering: ``saescope-segment [--bundle PATH_OR_HUB_ID] [--head NAME] [--port N]
[--host H] [--share]``.

Upload an image (or pick a held-out digit scene or a photo), see the frozen segmentation head's
prediction, click or drag patches, get the SAE features that fire there, and move a slider per
feature to suppress or amplify it on those patches (or everywhere). The new segmentation appears
with the pixels whose class changed highlighted, and the share of such pixels.

Without ``--bundle`` it runs on the offline default bundle (DINOv2-S saliency fine-tune, layer 10)
whose heads are the ``digit-scenes`` probe (background + digits 0-9) and the model's own saliency
map (read as two classes). ``build_app(bundle)`` returns the ``gr.Blocks`` for the Space and tests.
"""

from __future__ import annotations

import argparse
import sys

import gradio as gr
import numpy as np

from saescope.apps import panels
from saescope.apps.components import ServedImage
from saescope.apps.engine import Analysis, Engine, SteerOutcome
from saescope.apps.steerapp import SteerTask, build_steer_app, steer_app_main, steer_app_parser

HELP = """
**What you are looking at.** A frozen *segmentation head* reads the vision transformer's final
tokens and gives every pixel a class (step ①, right: the prediction, colours in the legend). A
*sparse autoencoder* (SAE) rewrites one layer's patch tokens as a sum of a few *features*; here you
change features and watch the head's answer change, with nothing retrained.

1. **Image and head** — upload a picture or click an example: the digit scenes are held-out images
   of the data set the `digit-scenes` probe was fitted on (it never saw them), the photos are out of
   its domain. The head's held-out quality is shown under its name; a head is only as telling as
   it is accurate.
2. **Select patches** — click a patch to toggle it, or press and drag a rectangle (a drag that
   starts on a selected patch removes the rectangle). With nothing selected, the whole image counts.
3. **Candidate features** — left, the features that fire most on the selection; right, the
   *features that matter*: ranked by their estimated effect on the head (one backward pass), the
   top three really switched off and measured. The five that matter most are put on the sliders.
   Click a card to put it on a free slider (or type a feature id into a slot and press Enter).
4. **Steer** — a slider scales its feature on the chosen patches: 0 switches it off, 1 leaves it
   alone, 5 makes it five times stronger. The edited tokens are the SAE reconstruction with the
   edited codes *plus the SAE's error term*, so all sliders at 1 give exactly the original output.
   Then the rest of the model and the head run again (only the layers after the SAE's).

**Reading the result.** *After the edits*: the new prediction. *Changed pixels*: pixels whose
predicted class changed, in the colour of their new class with a pink outline; everything else is
grey. The line above gives the share of changed pixels and the largest class moves (before → after).
"""


class SegmentTask(SteerTask):
    """Segmentation overlays before/after, a legend, and the pixels whose class changed."""

    kind = "segmentation"
    title = "Segmentation steering"
    before_title = "Segmentation (unedited)"
    help = HELP

    def examples_from(self, source: str) -> int:
        return 250 if "digit-scenes" in source else 0  # the probe used the first 200 of 300

    def before_panel(self) -> list:
        img = ServedImage(
            show_label=False,
            interactive=False,
            format="png",
            height=300,
            elem_id="seg-before",
            buttons=[],
        )
        legend = gr.HTML(elem_id="legend-before")
        return [img, legend]

    def after_panel(self) -> list:
        with gr.Row():
            after = ServedImage(
                label="Segmentation after the edits",
                interactive=False,
                format="png",
                height=320,
                elem_id="seg-after",
                buttons=[],
            )
            changed = ServedImage(
                label="Changed pixels (new class colour, pink outline)",
                interactive=False,
                format="png",
                height=320,
                elem_id="seg-changed",
                buttons=[],
            )
        legend = gr.HTML(elem_id="legend-after")
        return [after, changed, legend]

    def _names(self, head: str) -> list[str]:
        return [str(c) for c in self.eng.head_info(head)["classes"]]

    def render_before(self, an: Analysis, head: str, before: np.ndarray) -> tuple:
        names = self._names(head)
        probs = panels.as_class_probs(before)
        frac = np.bincount(panels.class_map(probs).ravel(), minlength=len(names)) / probs[0].size
        return (
            panels.segmentation_overlay(an.view, probs, names),
            panels.legend_html(names, frac, only_present=len(names) > 12),
        )

    def render_after(self, an: Analysis, head: str, out: SteerOutcome) -> tuple[tuple, str]:
        names = self._names(head)
        pb, pa = panels.as_class_probs(out.head_before), panels.as_class_probs(out.head_after)
        after = panels.segmentation_overlay(an.view, pa, names)
        changed, info = panels.class_change_overlay(an.view, pb, pa, names)
        if out.patches:
            from saescope.apps.picker import outline_patches

            after = outline_patches(after, an.grid, out.patches)
        moves = ", ".join(f"{names[a]} → {names[b]} {v:.1%}" for a, b, v in info["transitions"])
        summary = (
            f"**{info['changed_fraction']:.1%}** of pixels changed class "
            f"({info['n_changed']:,} of {info['n_pixels']:,})"
            + (f"; largest moves: {moves}" if moves else "")
            + f". Largest change of a class probability: {info['max_prob_change']:.3f}."
        )
        legend = panels.legend_html(
            names, info["fraction_before"], info["fraction_after"], only_present=len(names) > 12
        )
        return (after, changed, legend), summary


def build_app(
    bundle=None,
    *,
    head: str | None = None,
    engine: Engine | None = None,
    examples: bool = True,
    warm_up: bool = False,
    title: str | None = None,
) -> gr.Blocks:
    """The segmentation steering app for ``bundle`` (path, Hub id, Bundle, None = default)."""
    return build_steer_app(
        SegmentTask,
        bundle,
        head=head,
        engine=engine,
        examples=examples,
        warm_up=warm_up,
        title=title,
    )


def parse_args(argv=None) -> argparse.Namespace:
    return steer_app_parser(
        SegmentTask,
        "saescope-segment",
        "Segmentation steering: select patches, suppress or amplify SAE features "
        "there, and see the frozen segmentation head's prediction change. Prints the local URL.",
    ).parse_args(argv)


def main(argv=None) -> int:
    return steer_app_main(SegmentTask, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
