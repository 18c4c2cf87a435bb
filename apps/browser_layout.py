"""The feature browser's page layout: one function per panel, no event wiring.

Why a module of its own: the layout (what is on the page, in which order, with which labels and
element ids) changes for different reasons than the wiring (``browser.py``) and the handlers
(``browser_handlers.py``), and each stays readable in one sitting.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from saescope.apps.browser_handlers import (
    NO_IMAGE_OOD,
    SCALE_MAX,
    SCOPES,
    Browser,
)
from saescope.apps.components import RawNumber, RawSlider, ServedGallery, ServedImage
from saescope.apps.picker import patch_picker_controls
from saescope.apps.text import about_line
from saescope.apps.uploads import image_upload

HELP = """
**What you are looking at.** A *sparse autoencoder* (SAE) rewrites each image patch's internal
representation (one layer of the vision transformer) as a sum of a few *features* out of
thousands. Each feature is a direction the model uses; the SAE makes them readable one by one.

1. **Your image** — upload a picture or click an example. The model sees a square crop of it,
   cut into a grid of patches (shown in step 2). The small map below shows how well the SAE
   reconstructs each patch (dark = well explained, bright = much of it is left in the error term).
2. **Select patches** — click a patch to toggle it, or press and drag to select a rectangle
   (a drag that starts on a selected patch removes the rectangle instead). With nothing
   selected, the whole image counts.
3. **Top features** — the features with the highest mean activation over your selection. Each
   card shows *where the feature fires on your image* (bright = strong) and five of its top
   dataset images; the caption gives the feature id, its mean activation over the selection and
   the share of selected patches where it fires. Click a card to open the feature.
4. **Feature** — statistics (how often it fires, how strongly), its activation histogram, its top
   dataset images with heat-maps (the patches that made it fire), and related features (similar
   decoder directions). Everything is clickable. Use the finder to pick features by firing
   frequency and mean activation (log scales), or jump to a random one.
5. **Steer** — switch the feature off (or scale it) on the selected patches. The edit replaces
   those tokens by the SAE reconstruction with the edited feature *plus the SAE's error term*, so
   an empty edit changes nothing. The rest of the model then runs from the next layer. You see the
   feature's map before and after, and, when the bundle has a frozen head, its output before and
   after with the changed pixels highlighted (red = up, blue = down).

**Reading the numbers.** *Fires on* = fraction of dataset patches where the feature is active.
*FVU* = fraction of the layer's variance the SAE fails to reconstruct on your image (lower is
better). A heat-map's colour scale is per image unless noted.
"""


@dataclass
class ImageRow:
    """① the upload, ② the patch picker, ③ the selection's top features."""

    upload: gr.Image
    status: gr.Markdown
    recon_img: gr.Image
    picker: gr.HTML
    sel_text: gr.Textbox
    clear_btn: gr.Button
    all_btn: gr.Button
    sel_info: gr.Markdown
    top_gallery: gr.Gallery


@dataclass
class FeatureRow:
    """④ one feature: id, statistics, histogram, finder, exemplars and related features."""

    feature: gr.Number
    show_btn: gr.Button
    rand_btn: gr.Button
    stats_md: gr.Markdown
    hist: gr.Image
    fmin: gr.Slider
    fmax: gr.Slider
    amin: gr.Slider
    amax: gr.Slider
    count_md: gr.Markdown
    rand_in_btn: gr.Button
    scatter_img: gr.Image
    ex_gallery: gr.Gallery
    rel_gallery: gr.Gallery
    msg: gr.Markdown | None = None
    shown: gr.State | None = None
    copy_btn: gr.Button | None = None
    link_md: gr.Markdown | None = None

    @property
    def ranges(self) -> list:
        return [self.fmin, self.fmax, self.amin, self.amax]


@dataclass
class SteerRow:
    """⑤ the edit controls and the maps / head outputs before and after."""

    steer_on: gr.Checkbox
    scale: gr.Slider
    scope: gr.Radio
    reset_btn: gr.Button
    edits_md: gr.Markdown
    effect_md: gr.Markdown
    heat_before: gr.Image
    heat_after: gr.Image
    head_before: gr.Image
    head_after: gr.Image
    head_diff: gr.Image

    @property
    def outputs(self) -> list:
        return [
            self.edits_md,
            self.heat_before,
            self.heat_after,
            self.head_before,
            self.head_after,
            self.head_diff,
            self.effect_md,
        ]


@dataclass
class Page:
    """Every component the events read or write, with the session state."""

    key: gr.State
    top_feats: gr.State
    rel_feats: gr.State
    edits: gr.State
    image: ImageRow
    feat: FeatureRow
    steer: SteerRow
    ood_md: gr.Markdown
    ood_gallery: gr.Gallery

    @property
    def feat_inputs(self) -> list:
        return [self.feat.feature, self.key, self.image.sel_text, self.edits, self.steer.scope]

    @property
    def feat_outputs(self) -> list:
        f = self.feat
        return [
            f.feature,
            f.stats_md,
            f.hist,
            f.ex_gallery,
            f.rel_gallery,
            self.rel_feats,
            self.steer.steer_on,
            self.steer.scale,
            f.scatter_img,
            *self.steer.outputs,
            f.msg,
            f.shown,
        ]

    @property
    def sel_inputs(self) -> list:
        return [self.key, self.image.sel_text, self.feat.feature, self.edits, self.steer.scope]

    @property
    def sel_outputs(self) -> list:
        return [self.image.sel_info, self.image.top_gallery, self.top_feats, *self.steer.outputs]


# ------------------------------------------------------------------------------ layout
def _image_row(examples: bool) -> ImageRow:
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=260):
            gr.Markdown("### ① Your image")
            upload = image_upload(300, examples)
            status = gr.Markdown(elem_id="status")
            recon_img = ServedImage(
                label="SAE reconstruction error per patch (bright = poorly explained)",
                interactive=False,
                format="png",
                height=200,
                elem_id="recon-error",
                buttons=[],
            )
        with gr.Column(scale=4, min_width=260):
            gr.Markdown("### ② Select patches")
            picker, sel_text, clear_btn, all_btn, sel_info = patch_picker_controls()
        with gr.Column(scale=5, min_width=300):
            gr.Markdown("### ③ Top features of the selection")
            gr.Markdown(
                "Big tile: where the feature fires on your image; small tiles: its top "
                "dataset images. Caption: id · mean activation · share of patches "
                "where it fires. Click a card to open the feature.",
                elem_classes="sae-note",
            )
            top_gallery = ServedGallery(
                show_label=False,
                columns=2,
                height=560,
                allow_preview=False,
                format="jpeg",
                elem_id="top-features",
                object_fit="contain",
            )
    return ImageRow(
        upload, status, recon_img, picker, sel_text, clear_btn, all_btn, sel_info, top_gallery
    )


def _finder(bounds: tuple[float, float, float, float]) -> tuple:
    """The accordion that finds features by log frequency and log mean activation."""
    with gr.Accordion("Find features by frequency and activation", open=False):
        with gr.Row():
            fmin = gr.Slider(bounds[0], bounds[1], bounds[0], step=0.1, label="log10 frequency ≥")
            fmax = gr.Slider(bounds[0], bounds[1], bounds[1], step=0.1, label="log10 frequency ≤")
        with gr.Row():
            amin = gr.Slider(
                bounds[2], bounds[3], bounds[2], step=0.1, label="log10 mean activation ≥"
            )
            amax = gr.Slider(
                bounds[2], bounds[3], bounds[3], step=0.1, label="log10 mean activation ≤"
            )
        count_md = gr.Markdown()
        rand_in_btn = gr.Button("Random feature in range", size="sm")
        scatter_img = ServedImage(
            show_label=False, interactive=False, format="png", elem_id="scatter", buttons=[]
        )
    return fmin, fmax, amin, amax, count_md, rand_in_btn, scatter_img


def _feature_row(d_sae: int, bounds: tuple[float, float, float, float]) -> FeatureRow:
    gr.Markdown("### ④ Feature", elem_classes="sae-section")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=260):
            with gr.Row():
                feature = RawNumber(
                    label="Feature id",
                    precision=0,
                    value=0,
                    minimum=0,
                    maximum=d_sae - 1,
                    elem_id="feature-id",
                    scale=2,
                )
                show_btn = gr.Button("Show", size="sm", variant="primary", scale=1)
                rand_btn = gr.Button("Random", size="sm", scale=1, elem_id="random")
                copy_btn = gr.Button("Copy link", size="sm", scale=1, elem_id="copy-link")
            msg = gr.Markdown(elem_id="feature-msg", elem_classes="sae-note")
            link_md = gr.Markdown(elem_id="share-link", elem_classes="sae-note")
            stats_md = gr.Markdown(elem_id="feature-stats")
            hist = ServedImage(
                label="Activation histogram",
                show_label=False,
                interactive=False,
                format="png",
                height=200,
                buttons=[],
            )
            finder = _finder(bounds)
        with gr.Column(scale=5, min_width=320):
            gr.Markdown(
                "**Top dataset images** — heat-map: the patches where the feature "
                "fires (colour scale shared by all tiles)"
            )
            ex_gallery = ServedGallery(
                show_label=False,
                columns=4,
                height=560,
                allow_preview=True,
                format="jpeg",
                elem_id="exemplars",
                object_fit="contain",
            )
        with gr.Column(scale=3, min_width=240):
            gr.Markdown(
                "**Related features** — closest decoder directions (cosine); each "
                "shows its top image. Click to open."
            )
            rel_gallery = ServedGallery(
                show_label=False,
                columns=3,
                height=420,
                allow_preview=False,
                format="jpeg",
                elem_id="related",
                object_fit="contain",
            )
    row = FeatureRow(feature, show_btn, rand_btn, stats_md, hist, *finder, ex_gallery, rel_gallery)
    row.msg, row.shown = msg, gr.State(0)  # the note on a bad id typed in; the id shown
    row.copy_btn, row.link_md = copy_btn, link_md
    return row


def _steer_images(head_label: str, segmentation: bool) -> tuple:
    """Feature map before/after, and the segmentation head's output before/after/changed."""

    def image(label: str, elem_id: str) -> gr.Image:
        return ServedImage(
            label=label, interactive=False, format="jpeg", height=260, elem_id=elem_id, buttons=[]
        )

    with gr.Row():
        heat_before = image("Feature on your image", "heat-before")
        heat_after = image("… after the edits", "heat-after")
    with gr.Row(visible=segmentation):
        head_before = image(f"{head_label} (unedited)", "head-before")
        head_after = image(f"{head_label} after the edits", "head-after")
        head_diff = image("Changed pixels (red up, blue down)", "head-diff")
    return heat_before, heat_after, head_before, head_after, head_diff


def _steer_row(head_label: str, head_kind: str | None, has_head: bool) -> SteerRow:
    gr.Markdown("### ⑤ Steer: switch the feature off or scale it", elem_classes="sae-section")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=260):
            steer_on = gr.Checkbox(value=True, label="Feature on", elem_id="feature-on")
            scale = RawSlider(
                0, SCALE_MAX, 1, step=0.25, label="Scale (0 = off, 1 = unchanged)", elem_id="scale"
            )
            scope = gr.Radio(SCOPES, value=SCOPES[0], label="Apply to", elem_id="scope")
            reset_btn = gr.Button("Reset all edits", size="sm", elem_id="reset")
            edits_md = gr.Markdown(elem_id="edits")
            effect_md = gr.Markdown(elem_id="effect")
        with gr.Column(scale=8):
            images = _steer_images(head_label, head_kind == "segmentation")
    if head_kind == "segmentation":
        gr.Markdown(
            f"{head_label}: the frozen head's output read from the final tokens — "
            "bright = salient, dark = background, orange line = the mask boundary "
            "(p = 0.5). *Changed pixels*: red where the edit raised it, blue where it "
            "lowered it (colour relative to the largest change; numbers on the left).",
            elem_classes="sae-note",
        )
    if not has_head:
        gr.Markdown("_This bundle has no frozen head: steering shows the feature maps only._")
    return SteerRow(steer_on, scale, scope, reset_btn, edits_md, effect_md, *images)


def _ood_tab(ood_note: str) -> tuple[gr.Markdown, gr.Gallery]:
    with gr.Tabs(elem_id="extra-tabs"):
        with gr.Tab("⑥ Out of distribution?", elem_id="ood-tab"):
            gr.Markdown(
                "Is your image like the images this SAE was trained on? Scores from the "
                "SAE (reconstruction error, rare features, distance to the nearest "
                "training images in code space) and from the raw layer tokens, read "
                "against held-out in-distribution images.",
                elem_classes="sae-note",
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=320):
                    ood_md = gr.Markdown(ood_note or NO_IMAGE_OOD, elem_id="ood-scores")
                with gr.Column(scale=5, min_width=300):
                    gr.Markdown(
                        "**Features that drive the score** — the active features that "
                        "are rarest in the dataset, weighted by how strongly they fire "
                        "on your image. Caption: id · contribution to the rare-feature "
                        "score · share of dataset patches where it fires. Click to "
                        "open.",
                        elem_classes="sae-note",
                    )
                    ood_gallery = ServedGallery(
                        show_label=False,
                        columns=3,
                        height=380,
                        allow_preview=False,
                        format="jpeg",
                        elem_id="ood-features",
                        object_fit="contain",
                    )
    return ood_md, ood_gallery


def _header(h: Browser) -> str:
    """The title and the one line under it: model, layer, SAE and its data in plain words."""
    b = h.b
    desc = about_line(b.manifest, b.model, h.eng.sae.cfg)
    return (
        f"<div class='sae-header'><h1>Feature browser</h1>"
        f"<p class='sae-sub' id='about'>{html.escape(desc)}</p></div>"
    )


def layout(h: Browser, examples: bool) -> Page:
    """The page, top to bottom, in the current Blocks context."""
    key = gr.State(None)
    top_feats = gr.State([])
    rel_feats = gr.State([])
    edits = gr.State({})
    gr.HTML(_header(h))
    with gr.Accordion("How to read this page", open=False):
        gr.Markdown(HELP)
    image = _image_row(examples)
    feat = _feature_row(h.eng.d_sae, h.bounds)
    steer = _steer_row(h.head_label, h.eng.head_kind, h.eng.head is not None)
    ood_md, ood_gallery = _ood_tab(h.ood_note)
    return Page(key, top_feats, rel_feats, edits, image, feat, steer, ood_md, ood_gallery)
