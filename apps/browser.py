"""Feature browser: ``saescope-browser [--bundle HUB_ID_OR_PATH] [--port N] [--host H] [--share]``.

Upload an image (or pick an example), select patches on its grid, see the SAE features that fire
there with their exemplars, browse any feature (by id, at random, or by frequency and activation),
and switch a feature off or scale it on the selected patches to see what the rest of the model
(and its frozen head, where the bundle has one) does with the edit.

Without ``--bundle`` it runs on the offline default bundle (DINOv2-S saliency fine-tune), built
once and cached. ``build_app(bundle)`` returns the ``gr.Blocks`` for the Spaces and the tests.
"""

from __future__ import annotations

import argparse
import sys

import gradio as gr

from saescope.apps.browser_handlers import (
    N_EXEMPLARS,
    N_OOD,
    N_RELATED,
    N_TOP,
    NO_OOD,
    SCOPES,
    Browser,
    edits_markdown,
    load_ood,
    ood_markdown,
)
from saescope.apps.browser_layout import HELP, Page, layout
from saescope.apps.engine import MODEL_CONCURRENCY, Engine
from saescope.apps.launch import app_parser, loading_line, serve
from saescope.apps.picker import on_pick, pick_from

MODEL = dict(concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY)  # events that run it


# ------------------------------------------------------------------------------ wiring
def _wire_image(h: Browser, p: Page) -> None:
    """Upload -> analysis -> feature panel; picker, Clear and Select-all -> top features."""
    im = p.image
    im.upload.change(
        h.on_image,
        [im.upload, p.feat.feature],
        [
            im.upload,
            p.key,
            im.status,
            im.picker,
            im.sel_text,
            im.sel_info,
            im.top_gallery,
            p.top_feats,
            p.edits,
            p.feat.feature,
            im.recon_img,
        ],
        api_name="analyse",
        **MODEL,
    ).then(h.feature_outputs, p.feat_inputs, p.feat_outputs, api_visibility="private", **MODEL)
    im.picker.pick(on_pick, None, im.sel_text, api_visibility="private", queue=False).then(
        h.on_select, p.sel_inputs, p.sel_outputs, api_visibility="private", **MODEL
    )
    # the same, callable with a selection string ("r,c;r,c" or "all") from the API
    select_api = gr.Button(visible=False)
    select_api.click(h.on_select, p.sel_inputs, p.sel_outputs, api_name="select", **MODEL)
    im.clear_btn.click(h.on_clear, p.key, [im.picker, im.sel_text], api_visibility="private").then(
        h.on_select, p.sel_inputs, p.sel_outputs, api_visibility="private", **MODEL
    )
    im.all_btn.click(h.on_all, p.key, [im.picker, im.sel_text], api_visibility="private").then(
        h.on_select, p.sel_inputs, p.sel_outputs, api_visibility="private", **MODEL
    )


def _then_feature(h: Browser, p: Page, event) -> None:
    """After ``event`` set the feature id, show that feature."""
    event.then(h.feature_outputs, p.feat_inputs, p.feat_outputs, api_visibility="private", **MODEL)


def _wire_feature(h: Browser, p: Page) -> None:
    """Show / Random / finder / gallery clicks -> the feature panel."""
    f = p.feat
    feature_api = gr.Button(visible=False)  # the API: a bad id is an error (the box's bounds)
    feature_api.click(h.feature_outputs, p.feat_inputs, p.feat_outputs, api_name="feature", **MODEL)
    quick = dict(preprocess=False, queue=False, api_visibility="private")
    show = dict(api_visibility="private", **MODEL)
    ok, use_filter, use_filter_on = gr.State(False), gr.State(False), gr.State(True)
    for ev in (f.show_btn.click, f.feature.submit):  # a bad id: a note by the box, panels stay
        ev(h.on_feature_id, [f.feature, f.shown], [f.feature, f.msg, ok], **quick).then(
            h.feature_if_ok, [ok, *p.feat_inputs], p.feat_outputs, **show
        )
    _then_feature(
        h,
        p,
        f.rand_btn.click(h.on_random, [*f.ranges, use_filter], f.feature, api_visibility="private"),
    )
    _then_feature(
        h,
        p,
        f.rand_in_btn.click(
            h.on_random, [*f.ranges, use_filter_on], f.feature, api_visibility="private"
        ),
    )
    _then_feature(
        h,
        p,
        p.image.top_gallery.select(pick_from, p.top_feats, f.feature, api_visibility="private"),
    )
    _then_feature(
        h, p, f.rel_gallery.select(pick_from, p.rel_feats, f.feature, api_visibility="private")
    )
    if h.scatter is not None:
        for s in f.ranges:
            s.release(
                h.on_filter,
                [*f.ranges, f.feature],
                [f.scatter_img, f.count_md],
                api_visibility="private",
            )
        _then_feature(
            h, p, f.scatter_img.select(h.on_scatter, f.ranges, f.feature, api_visibility="private")
        )


def _wire_steer_and_ood(h: Browser, p: Page) -> None:
    """Edit controls -> steering panels; a new image -> its OOD scores."""
    s = p.steer
    steer_in = [p.key, p.image.sel_text, p.feat.feature, s.steer_on, s.scale, s.scope, p.edits]
    steer_all_out = [p.edits, *s.outputs]
    s.steer_on.input(h.on_steer, steer_in, steer_all_out, api_name="toggle", **MODEL)
    s.scale.release(h.on_steer, steer_in, steer_all_out, api_visibility="private", **MODEL)
    s.scope.input(h.on_steer, steer_in, steer_all_out, api_visibility="private", **MODEL)
    s.reset_btn.click(
        h.on_reset,
        [p.key, p.image.sel_text, p.feat.feature, s.scope],
        [p.edits, s.steer_on, s.scale, *s.outputs],
        api_name="reset",
        **MODEL,
    )
    ood_feats = gr.State([])
    p.key.change(h.on_ood, p.key, [p.ood_md, p.ood_gallery, ood_feats], api_name="ood", **MODEL)
    _then_feature(
        h, p, p.ood_gallery.select(pick_from, ood_feats, p.feat.feature, api_visibility="private")
    )


def _wire_share(h: Browser, p: Page, demo: gr.Blocks) -> None:
    """Shared links: ``?feature=ID`` opens that feature on load (a bad id: a note, feature 0);
    "copy link" copies the page's link to the feature shown; the address bar follows it."""
    f = p.feat
    note = gr.State("")
    demo.load(h.on_query, None, [f.feature, note], api_visibility="private", queue=False).then(
        h.feature_outputs, p.feat_inputs, p.feat_outputs, api_visibility="private"
    ).then(lambda m: m, note, f.msg, api_visibility="private", queue=False)
    # a gr.State never reaches the page's js: read the box, which holds the id shown
    f.copy_btn.click(None, f.feature, f.link_md, js=h.COPY_LINK, api_visibility="private")
    f.stats_md.change(None, f.feature, None, js=h.SHOW_IN_URL, api_visibility="private")


def build_app(
    bundle=None,
    *,
    engine: Engine | None = None,
    examples: bool = True,
    warm_up: bool = False,
    title: str | None = None,
) -> gr.Blocks:
    """The feature browser for ``bundle`` (path, Hub id, Bundle, or None for the offline
    default)."""
    eng = engine or Engine(bundle)
    if warm_up:
        eng.warm_up()
    h = Browser(eng)
    with gr.Blocks(title=title or f"saescope · {eng.title}", analytics_enabled=False) as demo:
        p = layout(h, examples)
        _wire_image(h, p)
        _wire_feature(h, p)
        _wire_steer_and_ood(h, p)
        _wire_share(h, p, demo)
        demo.load(None, js=h.ENTER_APPLIES)  # Enter in a slider's number box applies it
        if h.scatter is not None:
            f = p.feat
            demo.load(
                h.on_filter,
                [*f.ranges, f.feature],
                [f.scatter_img, f.count_md],
                api_visibility="private",
            )
    demo.engine = eng  # for tests and benchmarks
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = app_parser(
        "saescope-browser",
        "Feature browser: upload an image, select patches, see and steer the SAE "
        "features that fire there. Prints the local URL when it is ready.",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return serve(
        lambda: build_app(args.bundle, examples=args.examples, warm_up=True),
        args,
        "feature browser",
        loading_line(args.bundle),
    )


__all__ = [
    "build_app",
    "main",
    "parse_args",
    "HELP",
    "N_TOP",
    "N_EXEMPLARS",
    "N_RELATED",
    "N_OOD",
    "NO_OOD",
    "SCOPES",
    "edits_markdown",
    "load_ood",
    "ood_markdown",
]


if __name__ == "__main__":
    sys.exit(main())
