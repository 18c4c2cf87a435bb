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
import html
import random
import sys
from pathlib import Path

import numpy as np

from saescope.apps import adapter, panels
from saescope.apps.common import (
    app_parser,
    describe_selection,
    error_box,
    FeatureScatter,
    histogram_image,
    image_upload,
    loading_line,
    outline_patches,
    parse_selection,
    patch_picker_controls,
    picked_selection,
    picker_all,
    picker_cleared,
    picker_html,
    serve,
    stats_markdown,
    try_upload,
)
from saescope.apps.engine import MODEL_CONCURRENCY, Engine, SessionExpired
from saescope.core.ood import SAE_COMBINED, FeatureContribution, OODSuite, ScoreReport, score_tokens
from saescope.core.steering import Edit
from saescope.core.tokens import TokenKind

import gradio as gr  # noqa: E402  (after apps.common, which switches off analytics)

N_TOP = 8
N_EXEMPLARS = 16
N_RELATED = 9
SCOPES = ["selected patches", "all patches"]

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


def _edits_list(edits: dict) -> list[Edit]:
    return [Edit(int(f), scale=float(s)) for f, s in sorted(edits.items())]


def edits_markdown(edits: dict, scope: str, n_sel: int) -> str:
    if not edits:
        return "_No edits: the model runs unchanged._"
    where = "all patches" if scope == SCOPES[1] or n_sel == 0 else f"the {n_sel} selected patches"
    items = ", ".join(f"**#{f}** {'off' if s == 0 else f'× {s:g}'}" for f, s in sorted(edits.items()))
    return f"Active edits on {where}: {items}"


N_OOD = 6
NO_OOD = ("_This bundle has no `ood/` component, so there is no in-distribution reference to "
          "score images against. Add one from the activation store the bundle was built on: "
          "`saescope ood-fit --bundle BUNDLE --store STORE`._")


def load_ood(bundle) -> tuple[OODSuite | None, str]:
    """The bundle's calibrated OOD scorers, or ``None`` and the message to show instead."""
    if not bundle.has("ood"):
        return None, NO_OOD
    try:
        return OODSuite.load(bundle.component_path("ood")), ""
    except (OSError, ValueError, KeyError) as err:
        return None, f"_The bundle's OOD calibration cannot be read ({html.escape(str(err))})._"


def ood_markdown(reports: list[ScoreReport], suite: OODSuite,
                 contributions: list[FeatureContribution]) -> str:
    """Verdict (from the combined SAE score when there is one) and every score's percentile."""
    if not reports:
        return "_No OOD score applies to this image._"
    main = next((r for r in reports if r.name == SAE_COMBINED), reports[0])
    word = "Out of distribution" if main.is_ood else "In distribution"
    lines = [f"#### {'⚠️ ' if main.is_ood else '✅ '}{word}",
             f"By {main.label}: this image scores higher than **{main.percentile:.0f}%** of "
             f"held-out in-distribution images (it is called OOD above the threshold that keeps "
             f"{suite.tpr:.0%} of them, {main.threshold:.3g}).", "",
             "| score | value | in-distribution percentile | verdict at 95% TPR |", "|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {html.escape(r.label)} | {r.score:.3g} | {r.percentile:.0f}% | "
                     f"{'**OOD**' if r.is_ood else 'in'} (> {r.threshold:.3g}) |")
    meta = suite.meta
    lines.append(f"\n<span class='sae-note'>Reference: {meta.get('n_calibration', '?')} held-out "
                 f"images of `{meta.get('source', '?')}` (scorers fitted on "
                 f"{meta.get('n_fit', '?')}). Higher = less like the training data.</span>")
    if not contributions:
        lines.append("\n_No active feature is rarer than usual on this image._")
    return "\n".join(lines)


def build_app(bundle=None, *, engine: Engine | None = None, examples: bool = True,
              warm_up: bool = False, title: str | None = None) -> gr.Blocks:
    """The feature browser for ``bundle`` (path, Hub id, Bundle, or None for the offline default)."""
    eng = engine or Engine(bundle)
    if warm_up:
        eng.warm_up()
    b = eng.bundle
    st = eng.stats
    scatter = FeatureScatter(st.frequency, st.mean_active) if st is not None else None
    bounds = scatter.bounds() if scatter is not None else (-6.0, 0.0, -3.0, 3.0)
    layer = eng.layer
    head_label = {"saliency": "Saliency"}.get(eng.head_name, eng.head_name.capitalize() or "Head")
    pre = eng.backbone.preprocess

    # ------------------------------------------------------------------ handlers
    def _analysis(key):
        try:
            return eng.get(key)
        except SessionExpired as err:
            raise gr.Error(str(err), title="No image") from None

    def _check_feature(feature) -> int:
        if feature is None or (isinstance(feature, float) and np.isnan(feature)):
            raise gr.Error("Type a feature id (a whole number).", title="Unknown feature")
        try:
            if float(feature) != int(float(feature)):
                raise ValueError(f"feature id must be a whole number, got {feature}")
            return eng.check_feature(int(float(feature)))
        except (ValueError, TypeError) as err:
            raise gr.Error(str(err), title="Unknown feature", print_exception=False) from None

    def top_cards(an, sel):
        feats = eng.top_features(an, sel, N_TOP)
        cards = []
        for f, score, n_fire in feats:
            tiles = [t for t, _ in panels.exemplar_tiles(b, pre, f, 5, panels.TILE)]
            card = panels.feature_card(an.view, an.feature_map(f), tiles, f, score)
            where = f"{n_fire / (len(sel) if sel else an.n_patches):.0%}"  # of the selection
            cards.append((card, f"#{f} · {score:.2f} · {where}"))
        return cards, [f for f, _, _ in feats]

    def status_md(an) -> str:
        w, h = an.image.size
        t = an.timings
        return (f"**{w}×{h}** image → {an.grid[0]}×{an.grid[1]} patches. "
                f"SAE on this image: explains **{1 - an.fvu:.0%}** of the layer-{layer} variance "
                f"(FVU {an.fvu:.3f}), **{an.l0:.0f}** features active per patch. "
                f"<span class='sae-note'>(model {t['forward_s'] + t['head_s']:.2f} s)</span>")

    def steer_panels(an, feature, edits, scope, sel):
        """Feature map before/after and head before/after/change for the current edits."""
        n_sel = len(sel)
        patches = None if (scope == SCOPES[1] or not sel) else sel
        out = eng.steer(an, _edits_list(edits), patches)
        fmap_after = out.feature_map_after(feature, an.grid)
        vmax = max(float(an.feature_map(feature).max()), float(fmap_after.max())) or 1.0
        before = adapter.render_heatmap(an.view, an.feature_map(feature), vmax=vmax)
        after = adapter.render_heatmap(an.view, fmap_after, vmax=vmax)
        if patches:
            after = outline_patches(after, an.grid, patches)
        label = f"feature {feature}"
        before = adapter.with_colorbar(before, vmax, label=label)
        after = adapter.with_colorbar(after, vmax, label=label)
        hb = ha = hd = None
        head_md = ""
        if out.head_before is not None and eng.head_kind == "segmentation":
            hb = panels.probability_overlay(an.view, out.head_before)
            ha = panels.probability_overlay(an.view, out.head_after)
            hd, info = panels.change_overlay(an.view, out.head_before, out.head_after)
            head_md = (f"{head_label}: mean {info['mean_before']:.3f} → {info['mean_after']:.3f}; "
                       f"**{info['changed_fraction']:.1%}** of pixels changed by more than "
                       f"{info['threshold']:g} (largest change {info['max_change']:.3f})"
                       + (f"; mask (p > 0.5) agreement {info['mask_agreement']:.1%}"
                          if 'mask_agreement' in info else ""))
        elif out.head_before is not None:
            head_md = panels.class_table(out.head_before, out.head_after)
        recon = (f"Edits moved the edited layer-{layer} tokens by **{out.token_change:.1%}** and the "
                 f"final patch tokens by **{out.final_change:.1%}** on average "
                 f"<span class='sae-note'>({out.seconds * 1000:.0f} ms)</span>" if edits else
                 "No edits yet: *after* equals *before* exactly (the SAE's error term is added back).")
        return (edits_markdown(edits, scope, n_sel), before, after, hb, ha, hd,
                head_md + ("\n\n" if head_md else "") + recon)

    def feature_outputs(feature, key, sel_text, edits, scope):
        """Everything that depends on the current feature."""
        f = _check_feature(feature)
        fs = st.of(f) if st is not None else None
        md = stats_markdown(f, fs)
        hist = histogram_image(fs.get("histogram"), fs.get("bin_edges"), f) if fs else None
        ex = panels.exemplar_tiles(b, pre, f, N_EXEMPLARS)
        if not ex:
            md += "\n\n_This bundle ships no exemplars for this feature (it never fired on the dataset?)._"
        rel = adapter.related_features(b, f, N_RELATED)
        rel_items = []
        for g, sim in rel:
            tiles = panels.exemplar_tiles(b, pre, g, 1, panels.TILE)
            img = tiles[0][0] if tiles else _blank()
            rel_items.append((img, f"#{g}"))
        on = f not in edits or edits[f] != 0
        scale = edits.get(f, 1.0) if edits.get(f, 1.0) != 0 else 1.0
        scatter_img = scatter.render(None, f) if scatter is not None else None
        steer = (edits_markdown(edits, scope, 0), None, None, None, None, None, "")
        if key:
            try:
                an = eng.get(key)
            except SessionExpired:
                an = None
            if an is not None:
                sel = parse_selection(sel_text, an.grid)
                steer = steer_panels(an, f, edits, scope, sel)
        return (f, md, hist, ex, rel_items, [g for g, _ in rel], gr.update(value=on),
                gr.update(value=scale), scatter_img, *steer)

    def _blank():
        from PIL import Image

        return Image.new("RGB", (panels.TILE, panels.TILE), (241, 245, 249))

    def on_image(upload, feature):
        """Upload -> patch grid and top features; the feature panel follows in a second step
        (``feature_outputs``), so the features show as soon as the model has run."""
        if upload is None:  # cleared (keeps an error message from a refused upload visible)
            return (gr.update(), None, gr.update(), picker_html(None, None), "", "", [], [], {},
                    feature, None)
        image, problem = try_upload(upload)
        if image is None:
            return (None, None, error_box(problem), picker_html(None, None), "", "", [], [], {},
                    feature, None)
        an = eng.analyse(image)
        cards, feats = top_cards(an, set())
        f = feats[0] if feats else feature
        err = adapter.with_colorbar(panels.error_map(an.view.resize((224, 224)), an.patch_error),
                                    1.0, cmap="viridis", label="error")
        return (gr.update(), an.key, status_md(an), picker_html(an.view, an.grid, ()), "",
                describe_selection(set(), an.grid), cards, feats, {}, f, err)

    def on_select(key, sel_text, feature, edits, scope):
        an = _analysis(key)
        sel = parse_selection(sel_text, an.grid)
        cards, feats = top_cards(an, sel)
        f = _check_feature(feature)
        steer = steer_panels(an, f, edits, scope, sel) if (edits and scope == SCOPES[0]) \
            else (gr.update(),) * 7
        return (describe_selection(sel, an.grid), cards, feats, *steer)

    def on_pick(evt: gr.EventData):
        return picked_selection(evt)

    def on_clear(key):
        return picker_cleared(_analysis(key))

    def on_all(key):
        return picker_all(_analysis(key))

    def on_steer(key, sel_text, feature, on, scale, scope, edits):
        an = _analysis(key)
        f = _check_feature(feature)
        edits = dict(edits or {})
        s = 0.0 if not on else float(scale if scale is not None else 1.0)
        if s == 1.0:
            edits.pop(f, None)
        else:
            edits[f] = s
        sel = parse_selection(sel_text, an.grid)
        return (edits, *steer_panels(an, f, edits, scope, sel))

    def on_reset(key, sel_text, feature, scope):
        edits: dict = {}
        if not key:
            return (edits, gr.update(value=True), gr.update(value=1.0),
                    edits_markdown(edits, scope, 0), None, None, None, None, None, "")
        an = _analysis(key)
        f = _check_feature(feature)
        sel = parse_selection(sel_text, an.grid)
        return (edits, gr.update(value=True), gr.update(value=1.0),
                *steer_panels(an, f, edits, scope, sel))

    ood_suite, ood_note = load_ood(b)

    def on_ood(key):
        """OOD scores of the analysed image and the features that make it surprising."""
        if ood_suite is None:
            return ood_note, [], []
        if not key:
            return "_Upload an image to see how far it is from the bundle's dataset._", [], []
        an = _analysis(key)
        pos = an.cache.layout.indices([TokenKind.PATCH])
        with eng.lock:
            reports, summary = score_tokens(ood_suite, eng.sae, an.cache.tokens[0, pos].float())
        contribs = ood_suite.explain(summary.code_mean[0], N_OOD) if summary.code_mean is not None \
            else []
        cards = []
        for c in contribs:
            tiles = [t for t, _ in panels.exemplar_tiles(b, pre, c.feature, 5, panels.TILE)]
            card = panels.feature_card(an.view, an.feature_map(c.feature), tiles, c.feature,
                                       c.contribution)
            freq = f"{c.frequency:.1%}" if c.frequency >= 1e-3 else f"1/{1 / c.frequency:,.0f}"
            cards.append((card, f"#{c.feature} · +{c.contribution:.2f} · {freq}"))
        return ood_markdown(reports, ood_suite, contribs), cards, [c.feature for c in contribs]

    def pick_from(items, evt: gr.SelectData):
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not items or i is None or i >= len(items):
            raise gr.Error("That item is no longer shown; try again.")
        return int(items[i])

    def on_random(fmin, fmax, amin, amax, use_filter):
        if st is None:
            return random.randrange(eng.d_sae)
        pool = np.nonzero(scatter.in_range(fmin, fmax, amin, amax))[0] if use_filter \
            else np.nonzero(st.frequency > 0)[0]
        if not len(pool):
            raise gr.Error("No feature matches these ranges; widen them.", title="Empty filter")
        return int(random.choice(pool.tolist()))

    def on_filter(fmin, fmax, amin, amax, feature):
        if scatter is None:
            return None, ""
        sel = scatter.in_range(fmin, fmax, amin, amax)
        f = None
        try:
            f = int(feature)
        except (TypeError, ValueError):
            pass
        return scatter.render(sel, f), f"**{int(sel.sum()):,}** features in range."

    def on_scatter(fmin, fmax, amin, amax, evt: gr.SelectData):
        x, y = evt.index
        f = scatter.nearest(x, y, scatter.in_range(fmin, fmax, amin, amax))
        if f is None:
            raise gr.Error("No feature there.")
        return f

    # ------------------------------------------------------------------ layout
    n_live = int((st.frequency > 0).sum()) if st is not None else None
    desc = (f"{b.model.get('display_name') or b.model.get('model_id', '')} · layer {layer} · "
            f"SAE {eng.sae.cfg.name} ({eng.d_sae:,} features"
            + (f", {n_live:,} alive" if n_live is not None else "") + ")")
    with gr.Blocks(title=title or f"saescope · {eng.title}", analytics_enabled=False) as demo:
        key = gr.State(None)
        top_feats = gr.State([])
        rel_feats = gr.State([])
        edits = gr.State({})
        gr.HTML(f"<div class='sae-header'><h1>Feature browser</h1>"
                f"<p class='sae-sub'><b>{html.escape(eng.title)}</b> — {html.escape(desc)}</p></div>")
        with gr.Accordion("How to read this page", open=False):
            gr.Markdown(HELP)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=260):
                gr.Markdown("### ① Your image")
                upload = image_upload(300, examples)
                status = gr.Markdown(elem_id="status")
                recon_img = gr.Image(label="SAE reconstruction error per patch (bright = poorly "
                                     "explained)", interactive=False, format="png", height=200,
                                     elem_id="recon-error", buttons=[])
            with gr.Column(scale=4, min_width=260):
                gr.Markdown("### ② Select patches")
                picker, sel_text, clear_btn, all_btn, sel_info = patch_picker_controls()
            with gr.Column(scale=5, min_width=300):
                gr.Markdown("### ③ Top features of the selection")
                gr.Markdown("Big tile: where the feature fires on your image; small tiles: its top "
                            "dataset images. Caption: id · mean activation · share of patches "
                            "where it fires. Click a card to open the feature.",
                            elem_classes="sae-note")
                top_gallery = gr.Gallery(show_label=False, columns=2, height=560,
                                         allow_preview=False, format="jpeg",
                                         elem_id="top-features", object_fit="contain")
        gr.Markdown("### ④ Feature", elem_classes="sae-section")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=260):
                with gr.Row():
                    feature = gr.Number(label="Feature id", precision=0, value=0, minimum=0,
                                        maximum=eng.d_sae - 1, elem_id="feature-id", scale=2)
                    show_btn = gr.Button("Show", size="sm", variant="primary", scale=1)
                    rand_btn = gr.Button("Random", size="sm", scale=1, elem_id="random")
                stats_md = gr.Markdown(elem_id="feature-stats")
                hist = gr.Image(label="Activation histogram", show_label=False, interactive=False,
                                format="png", height=200, buttons=[])
                with gr.Accordion("Find features by frequency and activation", open=False):
                    with gr.Row():
                        fmin = gr.Slider(bounds[0], bounds[1], bounds[0], step=0.1,
                                         label="log10 frequency ≥")
                        fmax = gr.Slider(bounds[0], bounds[1], bounds[1], step=0.1,
                                         label="log10 frequency ≤")
                    with gr.Row():
                        amin = gr.Slider(bounds[2], bounds[3], bounds[2], step=0.1,
                                         label="log10 mean activation ≥")
                        amax = gr.Slider(bounds[2], bounds[3], bounds[3], step=0.1,
                                         label="log10 mean activation ≤")
                    count_md = gr.Markdown()
                    rand_in_btn = gr.Button("Random feature in range", size="sm")
                    scatter_img = gr.Image(show_label=False, interactive=False,
                                           format="png", elem_id="scatter", buttons=[])
            with gr.Column(scale=5, min_width=320):
                gr.Markdown("**Top dataset images** — heat-map: the patches where the feature "
                            "fires (colour scale shared by all tiles)")
                ex_gallery = gr.Gallery(show_label=False, columns=4, height=560,
                                        allow_preview=True, format="jpeg", elem_id="exemplars",
                                        object_fit="contain")
            with gr.Column(scale=3, min_width=240):
                gr.Markdown("**Related features** — closest decoder directions (cosine); each "
                            "shows its top image. Click to open.")
                rel_gallery = gr.Gallery(show_label=False, columns=3, height=420,
                                         allow_preview=False, format="jpeg", elem_id="related",
                                         object_fit="contain")
        gr.Markdown("### ⑤ Steer: switch the feature off or scale it", elem_classes="sae-section")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=260):
                steer_on = gr.Checkbox(value=True, label="Feature on", elem_id="feature-on")
                scale = gr.Slider(0, 5, 1, step=0.25, label="Scale (0 = off, 1 = unchanged)",
                                  elem_id="scale")
                scope = gr.Radio(SCOPES, value=SCOPES[0], label="Apply to", elem_id="scope")
                reset_btn = gr.Button("Reset all edits", size="sm", elem_id="reset")
                edits_md = gr.Markdown(elem_id="edits")
                effect_md = gr.Markdown(elem_id="effect")
            with gr.Column(scale=8):
                with gr.Row():
                    heat_before = gr.Image(label="Feature on your image", interactive=False,
                                           format="jpeg", height=260, elem_id="heat-before", buttons=[])
                    heat_after = gr.Image(label="… after the edits", interactive=False,
                                          format="jpeg", height=260, elem_id="heat-after", buttons=[])
                with gr.Row(visible=eng.head_kind == "segmentation"):
                    head_before = gr.Image(label=f"{head_label} (unedited)", interactive=False,
                                           format="jpeg", height=260, elem_id="head-before", buttons=[])
                    head_after = gr.Image(label=f"{head_label} after the edits", interactive=False,
                                          format="jpeg", height=260, elem_id="head-after", buttons=[])
                    head_diff = gr.Image(label="Changed pixels (red up, blue down)", interactive=False,
                                         format="jpeg", height=260, elem_id="head-diff", buttons=[])
        if eng.head_kind == "segmentation":
            gr.Markdown(f"{head_label}: the frozen head's output read from the final tokens — "
                        "bright = salient, dark = background, orange line = the mask boundary "
                        "(p = 0.5). *Changed pixels*: red where the edit raised it, blue where it "
                        "lowered it (colour relative to the largest change; numbers on the left).",
                        elem_classes="sae-note")
        if eng.head is None:
            gr.Markdown("_This bundle has no frozen head: steering shows the feature maps only._")
        with gr.Tabs(elem_id="extra-tabs"):
            with gr.Tab("⑥ Out of distribution?", elem_id="ood-tab"):
                gr.Markdown("Is your image like the images this SAE was trained on? Scores from the "
                            "SAE (reconstruction error, rare features, distance to the nearest "
                            "training images in code space) and from the raw layer tokens, read "
                            "against held-out in-distribution images.", elem_classes="sae-note")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=320):
                        ood_md = gr.Markdown(ood_note or "_Upload an image to see how far it is "
                                             "from the bundle's dataset._", elem_id="ood-scores")
                    with gr.Column(scale=5, min_width=300):
                        gr.Markdown("**Features that drive the score** — the active features that "
                                    "are rarest in the dataset, weighted by how strongly they fire "
                                    "on your image. Caption: id · contribution to the rare-feature "
                                    "score · share of dataset patches where it fires. Click to "
                                    "open.",
                                    elem_classes="sae-note")
                        ood_gallery = gr.Gallery(show_label=False, columns=3, height=380,
                                                 allow_preview=False, format="jpeg",
                                                 elem_id="ood-features", object_fit="contain")

        # ------------------------------------------------------------------ wiring
        steer_out = [edits_md, heat_before, heat_after, head_before, head_after, head_diff, effect_md]
        feat_out = [feature, stats_md, hist, ex_gallery, rel_gallery, rel_feats, steer_on, scale,
                    scatter_img, *steer_out]
        model = dict(concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY)

        feat_inputs = [feature, key, sel_text, edits, scope]
        upload.change(on_image, [upload, feature],
                      [upload, key, status, picker, sel_text, sel_info, top_gallery, top_feats, edits,
                       feature, recon_img], api_name="analyse", **model).then(
            feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)
        sel_inputs = [key, sel_text, feature, edits, scope]
        sel_outputs = [sel_info, top_gallery, top_feats, *steer_out]
        picker.pick(on_pick, None, sel_text, api_visibility="private", queue=False).then(
            on_select, sel_inputs, sel_outputs, api_visibility="private", **model)
        # the same, callable with a selection string ("r,c;r,c" or "all") from the API
        select_api = gr.Button(visible=False)
        select_api.click(on_select, sel_inputs, sel_outputs, api_name="select", **model)
        clear_btn.click(on_clear, key, [picker, sel_text], api_visibility="private").then(
            on_select, sel_inputs, sel_outputs, api_visibility="private", **model)
        all_btn.click(on_all, key, [picker, sel_text], api_visibility="private").then(
            on_select, sel_inputs, sel_outputs, api_visibility="private", **model)

        show_btn.click(feature_outputs, feat_inputs, feat_out, api_name="feature", **model)
        feature.submit(feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)
        use_filter = gr.State(False)
        use_filter_on = gr.State(True)
        rand_btn.click(on_random, [fmin, fmax, amin, amax, use_filter], feature,
                       api_visibility="private").then(
            feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)
        rand_in_btn.click(on_random, [fmin, fmax, amin, amax, use_filter_on], feature,
                          api_visibility="private").then(
            feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)
        top_gallery.select(pick_from, top_feats, feature, api_visibility="private").then(
            feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)
        rel_gallery.select(pick_from, rel_feats, feature, api_visibility="private").then(
            feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)
        if scatter is not None:
            for s in (fmin, fmax, amin, amax):
                s.release(on_filter, [fmin, fmax, amin, amax, feature], [scatter_img, count_md],
                          api_visibility="private")
            scatter_img.select(on_scatter, [fmin, fmax, amin, amax], feature,
                               api_visibility="private").then(
                feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)

        steer_in = [key, sel_text, feature, steer_on, scale, scope, edits]
        steer_all_out = [edits, *steer_out]
        steer_on.input(on_steer, steer_in, steer_all_out, api_name="toggle", **model)
        scale.release(on_steer, steer_in, steer_all_out, api_visibility="private", **model)
        scope.input(on_steer, steer_in, steer_all_out, api_visibility="private", **model)
        reset_btn.click(on_reset, [key, sel_text, feature, scope],
                        [edits, steer_on, scale, *steer_out], api_name="reset", **model)

        ood_feats = gr.State([])
        key.change(on_ood, key, [ood_md, ood_gallery, ood_feats], api_name="ood", **model)
        ood_gallery.select(pick_from, ood_feats, feature, api_visibility="private").then(
            feature_outputs, feat_inputs, feat_out, api_visibility="private", **model)

        demo.load(feature_outputs, [feature, key, sel_text, edits, scope], feat_out,
                  api_visibility="private")
        if scatter is not None:
            demo.load(on_filter, [fmin, fmax, amin, amax, feature], [scatter_img, count_md],
                      api_visibility="private")
    demo.engine = eng  # for tests and benchmarks
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = app_parser(
        "saescope-browser",
        "Feature browser: upload an image, select patches, see and steer the SAE "
        "features that fire there. Prints the local URL when it is ready.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return serve(lambda: build_app(args.bundle, examples=args.examples, warm_up=True),
                 args, "feature browser", loading_line(args.bundle))


if __name__ == "__main__":
    sys.exit(main())
