"""Classification steering: ``saescope-classify [--bundle PATH_OR_HUB_ID] [--head NAME]
[--port N] [--host H] [--share]``.

Upload an image (or pick a held-out digit or a photo), see the frozen classification probe's class
probabilities, select patches, get the SAE features that fire there, and suppress or amplify them
with one slider each (on the selected patches, all patches, or all patches and the CLS token the
probe reads). The probabilities after the edits are shown next to the original ones, and a change
of the predicted class is called out.

Without ``--bundle`` it runs on the offline default bundle (DINOv2-S saliency fine-tune, layer 10)
with its ``digits`` probe (10 classes, CLS token). ``build_app(bundle)`` returns the ``gr.Blocks``.
"""

from __future__ import annotations

import argparse
import html
import sys

import gradio as gr
import numpy as np

from saescope.apps import panels
from saescope.apps.components import ServedImage
from saescope.apps.engine import Analysis, Engine, SteerOutcome
from saescope.apps.steerapp import (
    SCOPE_CLS,
    SCOPES,
    SteerTask,
    build_steer_app,
    steer_app_main,
    steer_app_parser,
)

N_ROWS = 10  # classes listed in the table (all of them when there are at most this many)

HELP = """
**What you are looking at.** A frozen *classification probe* (a linear layer fitted on the vision
transformer's final CLS token) gives class probabilities for the image (step ①, right). A *sparse
autoencoder* (SAE) rewrites one layer's patch tokens as a sum of a few *features*; here you change
features and watch the probabilities change, with nothing retrained.

1. **Image and head** — upload a picture or click an example: the digits are held-out images of the
   data set the `digits` probe was fitted on (it never saw them); the photos are outside its domain,
   so its answer there means little. The probe's held-out accuracy is shown under its name.
2. **Select patches** — click a patch to toggle it, or press and drag a rectangle. With nothing
   selected, the whole image counts.
3. **Candidate features** — left, the features that fire most on the selection; right, the
   *features that matter*: ranked by their estimated effect on the predicted class's
   log-probability (one backward pass), the top three really switched off and measured. The five
   that matter most are on the sliders. Click a card to put it on a free slider (or type an id).
4. **Steer** — a slider scales its feature (0 = off, 1 = unchanged, 5 = five times stronger) on
   the selected patches, on all patches, or on all patches *and the CLS token* (what the probe
   reads; the SAE was trained on patch tokens, so editing the CLS token is an extrapolation). The
   edited tokens keep the SAE's error term, so all sliders at 1 give exactly the original output.

**Reading the result.** The bar chart shows every class before (grey) and after (blue) the edits;
the box above it says whether the predicted class changed. *Total variation* is half the sum of
absolute probability changes (0 = same distribution, 1 = disjoint).
"""


def prediction_callout(before: np.ndarray, after: np.ndarray, names: list[str]) -> str:
    """HTML box: the predicted class, and whether the edits changed it."""
    b, a = int(np.argmax(before)), int(np.argmax(after))
    tv = 0.5 * float(np.abs(np.asarray(after) - np.asarray(before)).sum())
    if b != a:
        return (
            f"<div class='steer-callout changed' id='prediction'>Prediction changed: "
            f"<b>{html.escape(names[b])}</b> ({before[b]:.0%}) → <b>{html.escape(names[a])}</b> "
            f"({after[a]:.0%}) · total variation {tv:.2f}</div>"
        )
    return (
        f"<div class='steer-callout same' id='prediction'>Prediction unchanged: "
        f"<b>{html.escape(names[b])}</b> ({before[b]:.0%} → {after[a]:.0%}) · total variation "
        f"{tv:.2f}</div>"
    )


class ClassifyTask(SteerTask):
    """Class probabilities before/after as a bar chart and a table; the predicted class called
    out."""

    kind = "classification"
    title = "Classification steering"
    before_title = "Class probabilities (unedited)"
    help = HELP

    def examples_from(self, source: str) -> int:
        return 1500 if "digits" in source else 0  # the digits probe used the first 300 of 1797

    def scopes(self) -> list[str]:
        return [*SCOPES, SCOPE_CLS]

    def before_panel(self) -> list:
        pred = gr.HTML(elem_id="pred-before")
        bars = ServedImage(
            show_label=False,
            interactive=False,
            format="png",
            height=300,
            elem_id="probs-before",
            buttons=[],
        )
        return [pred, bars]

    def after_panel(self) -> list:
        callout = gr.HTML(elem_id="pred-after")
        with gr.Row(equal_height=False):
            bars = ServedImage(
                label="Class probabilities before (grey) and after the edits (blue)",
                interactive=False,
                format="png",
                height=360,
                elem_id="probs-after",
                buttons=[],
                scale=3,
            )
            with gr.Column(scale=2, min_width=220):
                table = gr.Markdown(elem_id="probs-table")
        return [callout, bars, table]

    def _names(self, head: str, n: int) -> list[str]:
        names = [str(c) for c in self.eng.head_info(head)["classes"]]
        return names if len(names) == n else [f"class {i}" for i in range(n)]

    def render_before(self, an: Analysis, head: str, before: np.ndarray) -> tuple:
        names = self._names(head, len(before))
        i = int(np.argmax(before))
        pred = (
            f"<div class='steer-callout same'>Predicted: <b>{html.escape(names[i])}</b> "
            f"({before[i]:.1%})</div>"
        )
        return pred, panels.probability_bars(before, None, names, size=(420, 300))

    def render_after(self, an: Analysis, head: str, out: SteerOutcome) -> tuple[tuple, str]:
        before, after = np.asarray(out.head_before), np.asarray(out.head_after)
        names = self._names(head, len(before))
        callout = prediction_callout(before, after, names)
        bars = panels.probability_bars(before, after, names, size=(600, 360))
        table = panels.class_table(before, after, names, k=min(N_ROWS, len(names)))
        b, a = int(np.argmax(before)), int(np.argmax(after))
        tv = 0.5 * float(np.abs(after - before).sum())
        summary = (
            f"Predicted class **{names[b]} → {names[a]}**"
            if a != b
            else f"Predicted class unchanged (**{names[b]}**)"
        ) + f"; total variation between the distributions **{tv:.2f}**."
        return (callout, bars, table), summary


def build_app(
    bundle=None,
    *,
    head: str | None = None,
    engine: Engine | None = None,
    examples: bool = True,
    warm_up: bool = False,
    title: str | None = None,
) -> gr.Blocks:
    """The classification steering app for ``bundle`` (path, Hub id, Bundle, None = default)."""
    return build_steer_app(
        ClassifyTask,
        bundle,
        head=head,
        engine=engine,
        examples=examples,
        warm_up=warm_up,
        title=title,
    )


def parse_args(argv=None) -> argparse.Namespace:
    return steer_app_parser(
        ClassifyTask,
        "saescope-classify",
        "Classification steering: select patches, suppress or amplify SAE features "
        "there, and see a frozen probe's class probabilities change. Prints the local URL.",
    ).parse_args(argv)


def main(argv=None) -> int:
    return steer_app_main(ClassifyTask, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
