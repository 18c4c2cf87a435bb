"""What the feature browser does when the user acts: one method per Gradio event.

The handlers live on :class:`Browser`, which holds the engine and the bundle-wide state they
share (statistics, the feature scatter, the OOD suite), so that the page layout
(:mod:`saescope.apps.browser`) only creates components and wires them to these methods. Method
names are the events' default API names, so keep them stable.
"""

from __future__ import annotations

import html
import random

import gradio as gr
import numpy as np
from PIL import Image

from saescope.apps import adapter, panels
from saescope.apps.engine import Engine, SessionExpired
from saescope.apps.picker import (
    describe_selection,
    outline_patches,
    parse_selection,
    picker_all,
    picker_cleared,
    picker_html,
)
from saescope.apps.plots import FeatureScatter, histogram_image
from saescope.apps.text import error_box, feature_caption, stats_markdown
from saescope.apps.uploads import try_upload
from saescope.apps.validate import BadInput, feature_id, number_between, optional_feature_id
from saescope.core.heatmap import render_spotlight, with_colorbar
from saescope.core.ood import SAE_COMBINED, FeatureContribution, OODSuite, ScoreReport, score_tokens
from saescope.core.steering import Edit
from saescope.core.tokens import TokenKind

N_TOP = 8
N_EXEMPLARS = 16
N_RELATED = 9
SCOPES = ["selected patches", "all patches"]
SCALE_MAX = 5.0  # the steering slider's range is 0 (off) .. SCALE_MAX
N_OOD = 6
NO_OOD = (
    "_This bundle has no `ood/` component, so there is no in-distribution reference to "
    "score images against. Add one from the activation store the bundle was built on: "
    "`saescope ood-fit --bundle BUNDLE --store STORE`._"
)
NO_IMAGE_OOD = "_Upload an image to see how far it is from the bundle's dataset._"
# the "copy link" button: the page's address with ?feature=ID, to the clipboard and shown
COPY_LINK = """(f) => {
  const url = window.location.origin + window.location.pathname + "?feature=" + f;
  try { navigator.clipboard.writeText(url); } catch (e) {}
  return "link copied: " + url;
}"""
# a new feature shown -> the address bar says so (?feature=ID), so it can be shared as it is
SHOW_IN_URL = """(f) => {
  if (f === null || f === undefined) return;
  const q = new URLSearchParams(window.location.search);
  q.set("feature", f);
  window.history.replaceState(null, "", window.location.pathname + "?" + q.toString());
}"""
# a Slider has no submit event: Enter in its number box leaves the box, and that blur is the
# slider's release (what its events listen to), so Enter applies a typed value at once
ENTER_APPLIES = """() => document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (e.key === "Enter" && t instanceof HTMLInputElement && t.matches("[data-testid=number-input]"))
    t.blur();
})"""


def _edits_list(edits: dict) -> list[Edit]:
    return [Edit(int(f), scale=float(s)) for f, s in sorted(edits.items())]


def edits_markdown(edits: dict, scope: str, n_sel: int) -> str:
    if not edits:
        return "_No edits: the model runs unchanged._"
    where = "all patches" if scope == SCOPES[1] or n_sel == 0 else f"the {n_sel} selected patches"
    items = ", ".join(
        f"**#{f}** {'off' if s == 0 else f'× {s:g}'}" for f, s in sorted(edits.items())
    )
    return f"Active edits on {where}: {items}"


def load_ood(bundle) -> tuple[OODSuite | None, str]:
    """The bundle's calibrated OOD scorers, or ``None`` and the message to show instead."""
    if not bundle.has("ood"):
        return None, NO_OOD
    try:
        return OODSuite.load(bundle.component_path("ood")), ""
    except (OSError, ValueError, KeyError) as err:
        return None, f"_The bundle's OOD calibration cannot be read ({html.escape(str(err))})._"


def ood_markdown(
    reports: list[ScoreReport], suite: OODSuite, contributions: list[FeatureContribution]
) -> str:
    """Verdict (from the combined SAE score when there is one) and every score's percentile."""
    if not reports:
        return "_No OOD score applies to this image._"
    main = next((r for r in reports if r.name == SAE_COMBINED), reports[0])
    word = "Out of distribution" if main.is_ood else "In distribution"
    lines = [
        f"#### {'⚠️ ' if main.is_ood else '✅ '}{word}",
        f"By {main.label}: this image scores higher than **{main.percentile:.0f}%** of "
        f"held-out in-distribution images (it is called OOD above the threshold that keeps "
        f"{suite.tpr:.0%} of them, {main.threshold:.3g}).",
        "",
        "| score | value | in-distribution percentile | verdict at 95% TPR |",
        "|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {html.escape(r.label)} | {r.score:.3g} | {r.percentile:.0f}% | "
            f"{'**OOD**' if r.is_ood else 'in'} (> {r.threshold:.3g}) |"
        )
    meta = suite.meta
    lines.append(
        f"\n<span class='sae-note'>Reference: {meta.get('n_calibration', '?')} held-out "
        f"images of `{meta.get('source', '?')}` (scorers fitted on "
        f"{meta.get('n_fit', '?')}). Higher = less like the training data.</span>"
    )
    if not contributions:
        lines.append("\n_No active feature is rarer than usual on this image._")
    return "\n".join(lines)


class Browser:
    """The feature browser's state for one engine, and its event handlers."""

    ENTER_APPLIES = ENTER_APPLIES  # the page's script (``demo.load(js=...)``)
    COPY_LINK = COPY_LINK
    SHOW_IN_URL = SHOW_IN_URL

    def __init__(self, eng: Engine):
        self.eng = eng
        self.b = eng.bundle
        self.st = eng.stats
        st = self.st
        self.scatter = FeatureScatter(st.frequency, st.mean_active) if st is not None else None
        self.bounds = self.scatter.bounds() if self.scatter is not None else (-6.0, 0.0, -3.0, 3.0)
        self.layer = eng.layer
        self.head_label = {"saliency": "Saliency"}.get(
            eng.head_name, eng.head_name.capitalize() or "Head"
        )
        self.pre = eng.backbone.preprocess
        self.ood_suite, self.ood_note = load_ood(self.b)

    # ------------------------------------------------------------------ helpers
    def _analysis(self, key):
        try:
            return self.eng.get(key)
        except SessionExpired as err:
            raise gr.Error(str(err), title="No image") from None

    def _check_feature(self, feature) -> int:
        return feature_id(feature, self.eng.d_sae)

    def top_cards(self, an, sel):
        return panels.top_feature_cards(self.eng, an, sel, N_TOP)

    def status_md(self, an) -> str:
        w, h = an.size
        t = an.timings
        return (
            f"**{w}×{h}** image → {an.grid[0]}×{an.grid[1]} patches. "
            f"SAE on this image: explains **{1 - an.fvu:.0%}** of the layer-{self.layer} "
            f"variance (FVU {an.fvu:.3f}), **{an.l0:.0f}** features active per patch. "
            f"<span class='sae-note'>(model {t['forward_s'] + t['head_s']:.2f} s)</span>"
        )

    def _head_panels(self, an, out) -> tuple:
        """Head before/after/change images and the line that sums the change up."""
        hb = ha = hd = None
        head_md = ""
        if out.head_before is not None and self.eng.head_kind == "segmentation":
            hb = panels.probability_overlay(an.view, out.head_before)
            ha = panels.probability_overlay(an.view, out.head_after)
            hd, info = panels.change_overlay(an.view, out.head_before, out.head_after)
            head_md = (
                f"{self.head_label}: mean {info['mean_before']:.3f} → "
                f"{info['mean_after']:.3f}; "
                f"**{info['changed_fraction']:.1%}** of pixels changed by more than "
                f"{info['threshold']:g} (largest change {info['max_change']:.3f})"
                + (
                    f"; mask (p > 0.5) agreement {info['mask_agreement']:.1%}"
                    if "mask_agreement" in info
                    else ""
                )
            )
        elif out.head_before is not None:
            head_md = panels.class_table(out.head_before, out.head_after)
        return hb, ha, hd, head_md

    def steer_panels(self, an, feature, edits, scope, sel):
        """Feature map before/after and head before/after/change for the current edits."""
        n_sel = len(sel)
        patches = None if (scope == SCOPES[1] or not sel) else sel
        out = self.eng.steer(an, _edits_list(edits), patches)
        fmap_after = out.feature_map_after(feature, an.grid)
        vmax = max(float(an.feature_map(feature).max()), float(fmap_after.max())) or 1.0
        before = render_spotlight(an.view, an.feature_map(feature), vmax=vmax)
        after = render_spotlight(an.view, fmap_after, vmax=vmax)
        if patches:
            after = outline_patches(after, an.grid, patches)
        label = f"feature {feature}"
        before = with_colorbar(before, vmax, label=label)
        after = with_colorbar(after, vmax, label=label)
        hb, ha, hd, head_md = self._head_panels(an, out)
        recon = (
            f"Edits moved the edited layer-{self.layer} tokens by **{out.token_change:.1%}** "
            f"and the final patch tokens by **{out.final_change:.1%}** on average "
            f"<span class='sae-note'>({out.seconds * 1000:.0f} ms)</span>"
            if edits
            else "No edits yet: *after* equals *before* exactly "
            "(the SAE's error term is added back)."
        )
        return (
            edits_markdown(edits, scope, n_sel),
            before,
            after,
            hb,
            ha,
            hd,
            head_md + ("\n\n" if head_md else "") + recon,
        )

    def _blank(self):
        return Image.new("RGB", (panels.TILE, panels.TILE), (241, 245, 249))

    # ------------------------------------------------------------------ events
    def feature_outputs(self, feature, key, sel_text, edits, scope):
        """Everything that depends on the current feature."""
        b, pre, st, scatter = self.b, self.pre, self.st, self.scatter
        f = self._check_feature(feature)
        fs = st.of(f) if st is not None else None
        labels = b.labels
        details = labels.details(f) if labels is not None and f < labels.n_features else None
        md = stats_markdown(f, fs, name=b.feature_name(f), details=details)
        hist = histogram_image(fs.get("histogram"), fs.get("bin_edges"), f) if fs else None
        ex = panels.exemplar_tiles(b, pre, f, N_EXEMPLARS)
        if not ex:
            md += (
                "\n\n_This bundle ships no exemplars for this feature "
                "(it never fired on the dataset?)._"
            )
        rel = adapter.related_features(b, f, N_RELATED)
        rel_items = []
        for g, _sim in rel:
            tiles = panels.exemplar_tiles(b, pre, g, 1, panels.TILE)
            img = tiles[0][0] if tiles else self._blank()
            rel_items.append((img, feature_caption(g, b.feature_name(g))))
        on = f not in edits or edits[f] != 0
        scale = edits.get(f, 1.0) if edits.get(f, 1.0) != 0 else 1.0
        scatter_img = scatter.render(None, f) if scatter is not None else None
        steer = (edits_markdown(edits, scope, 0), None, None, None, None, None, "")
        if key:
            try:
                an = self.eng.get(key)
            except SessionExpired:
                an = None
            if an is not None:
                sel = parse_selection(sel_text, an.grid)
                steer = self.steer_panels(an, f, edits, scope, sel)
        return (
            f,
            md,
            hist,
            ex,
            rel_items,
            [g for g, _ in rel],
            gr.update(value=on),
            gr.update(value=scale),
            scatter_img,
            *steer,
            "",
            f,
        )

    def on_feature_id(self, raw, shown):
        """Enter or Show in the feature box, on the raw value: a valid id goes on to the panels
        (``feature_if_ok``); anything else puts the id shown back in the box with a note on the
        valid range, and the panels keep that feature."""
        n = self.eng.d_sae
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if np.isfinite(value) and value == int(value) and 0 <= value < n:
            return int(value), "", True
        if not np.isfinite(value):
            what = "Type a feature id"
        elif value != int(value):
            what = f"{value:g} is not a whole number"
        else:
            what = f"There is no feature {int(value)}"
        return shown, f"⚠ {what}: ids run from 0 to {n - 1}. Still showing feature {shown}.", False

    def on_query(self, request: gr.Request):
        """A shared link (``?feature=ID``) -> the feature to open and a note for a bad id (the
        page then opens on feature 0, with the note by the feature box)."""
        params = dict(request.query_params) if request is not None else {}
        raw = params.get("feature")
        if raw is None:
            return 0, ""
        try:
            return feature_id(raw, self.eng.d_sae), ""
        except BadInput as err:
            return 0, f"⚠ The link's {err}. Showing feature 0."

    def feature_if_ok(self, ok, *args):
        """``feature_outputs`` after a valid id, else nothing changes."""
        return self.feature_outputs(*args) if ok else gr.skip()

    def on_image(self, upload, feature):
        """Upload -> patch grid and top features; the feature panel follows in a second step
        (``feature_outputs``), so the features show as soon as the model has run.

        ``feature`` is the id in the feature box (empty or an id; checked, never echoed back):
        it stays unless the new image brings its strongest feature."""
        optional_feature_id(feature, self.eng.d_sae)
        if upload is None:  # cleared (keeps an error message from a refused upload visible)
            return (
                gr.update(),
                None,
                gr.update(),
                picker_html(None, None),
                "",
                "",
                [],
                [],
                {},
                gr.update(),
                None,
            )
        image, problem = try_upload(upload)
        if image is None:
            return (
                None,
                None,
                error_box(problem),
                picker_html(None, None),
                "",
                "",
                [],
                [],
                {},
                gr.update(),
                None,
            )
        an = self.eng.analyse(image)
        cards, feats = self.top_cards(an, set())
        f = feats[0] if feats else gr.update()
        err = with_colorbar(
            panels.error_map(an.view.resize((224, 224)), an.patch_error),
            1.0,
            cmap="viridis",
            label="error",
        )
        return (
            gr.update(),
            an.key,
            self.status_md(an),
            picker_html(an.view, an.grid, ()),
            "",
            describe_selection(set(), an.grid),
            cards,
            feats,
            {},
            f,
            err,
        )

    def on_select(self, key, sel_text, feature, edits, scope):
        f = self._check_feature(feature)
        an = self._analysis(key)
        sel = parse_selection(sel_text, an.grid)
        cards, feats = self.top_cards(an, sel)
        steer = (
            self.steer_panels(an, f, edits, scope, sel)
            if (edits and scope == SCOPES[0])
            else (gr.update(),) * 7
        )
        return (describe_selection(sel, an.grid), cards, feats, *steer)

    def on_clear(self, key):
        return picker_cleared(self._analysis(key))

    def on_all(self, key):
        return picker_all(self._analysis(key))

    def on_steer(self, key, sel_text, feature, on, scale, scope, edits):
        f = self._check_feature(feature)
        scale = number_between(scale, "scale", 0.0, SCALE_MAX)
        s = scale if on else 0.0
        an = self._analysis(key)
        edits = dict(edits or {})
        if s == 1.0:
            edits.pop(f, None)
        else:
            edits[f] = s
        sel = parse_selection(sel_text, an.grid)
        return (edits, *self.steer_panels(an, f, edits, scope, sel))

    def on_reset(self, key, sel_text, feature, scope):
        optional_feature_id(feature, self.eng.d_sae)  # garbage is refused even with no image
        edits: dict = {}
        if not key:
            return (
                edits,
                gr.update(value=True),
                gr.update(value=1.0),
                edits_markdown(edits, scope, 0),
                None,
                None,
                None,
                None,
                None,
                "",
            )
        an = self._analysis(key)
        f = self._check_feature(feature)
        sel = parse_selection(sel_text, an.grid)
        return (
            edits,
            gr.update(value=True),
            gr.update(value=1.0),
            *self.steer_panels(an, f, edits, scope, sel),
        )

    def on_ood(self, key):
        """OOD scores of the analysed image and the features that make it surprising."""
        suite = self.ood_suite
        if suite is None:
            return self.ood_note, [], []
        if not key:
            return NO_IMAGE_OOD, [], []
        an = self._analysis(key)
        pos = an.cache.layout.indices([TokenKind.PATCH])
        with self.eng.lock:
            reports, summary = score_tokens(suite, self.eng.sae, an.cache.tokens[0, pos].float())
        contribs = (
            suite.explain(summary.code_mean[0], N_OOD) if summary.code_mean is not None else []
        )
        cards = []
        for c in contribs:
            tiles = [
                t for t, _ in panels.exemplar_tiles(self.b, self.pre, c.feature, 5, panels.TILE)
            ]
            card = panels.feature_card(
                an.view, an.feature_map(c.feature), tiles, c.feature, c.contribution
            )
            freq = f"{c.frequency:.1%}" if c.frequency >= 1e-3 else f"1/{1 / c.frequency:,.0f}"
            name = self.b.feature_name(c.feature)
            cards.append((card, feature_caption(c.feature, name, f"+{c.contribution:.2f}", freq)))
        return ood_markdown(reports, suite, contribs), cards, [c.feature for c in contribs]

    def on_random(self, fmin, fmax, amin, amax, use_filter):
        st, scatter = self.st, self.scatter
        if st is None:
            return random.randrange(self.eng.d_sae)
        pool = (
            np.nonzero(scatter.in_range(fmin, fmax, amin, amax))[0]
            if use_filter
            else np.nonzero(st.frequency > 0)[0]
        )
        if not len(pool):
            raise gr.Error("No feature matches these ranges; widen them.", title="Empty filter")
        return int(random.choice(pool.tolist()))

    def on_filter(self, fmin, fmax, amin, amax, feature):
        scatter = self.scatter
        if scatter is None:
            return None, ""
        sel = scatter.in_range(fmin, fmax, amin, amax)
        f = None
        try:
            f = int(feature)
        except (TypeError, ValueError):
            pass
        return scatter.render(sel, f), f"**{int(sel.sum()):,}** features in range."

    def on_scatter(self, fmin, fmax, amin, amax, evt: gr.SelectData):
        x, y = evt.index
        f = self.scatter.nearest(x, y, self.scatter.in_range(fmin, fmax, amin, amax))
        if f is None:
            raise gr.Error("No feature there.")
        return f


__all__ = [
    "Browser",
    "SCALE_MAX",
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
