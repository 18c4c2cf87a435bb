"""Compare two SAEs on the same image: ``saescope-compare [--left BUNDLE] [--right BUNDLE]``.

The same image and selected patches go through two models' SAEs side by side: each side shows its
top features with exemplars; open a feature on one side to see the best-matching features on the
other (precomputed cross-model matches when the bundles have them, otherwise the best available
stand-in, which the app names).

Defaults: online, CLIP ViT-B/16 vs DINOv2 ViT-B/14 bundles from the Hub; offline (no network,
``--offline``, or the Hub bundles unavailable), two bundles from two layers of the offline
DINOv2-S (saliency fine-tune), labelled as such.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from dataclasses import dataclass

import gradio as gr

from saescope.apps import adapter, panels
from saescope.apps.components import RawNumber, ServedGallery, ServedImage
from saescope.apps.engine import MODEL_CONCURRENCY, Engine, SessionExpired
from saescope.apps.launch import app_parser, serve
from saescope.apps.picker import (
    describe_selection,
    on_pick,
    outline_patches,
    parse_selection,
    patch_picker_controls,
    pick_from,
    picker_all,
    picker_cleared,
    picker_html,
)
from saescope.apps.text import (
    about_line,
    error_box,
    feature_caption,
    pair_heading,
    pair_title,
    stats_markdown,
)
from saescope.apps.uploads import image_upload, try_upload
from saescope.apps.validate import feature_id
from saescope.core.heatmap import crop_box, render_spotlight

N_TOP = 6
N_EXEMPLARS = 8
N_MATCHES = 6
MODEL = dict(concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY)  # events that run it

HELP = """
**Two SAEs, one image.** The left and right columns are two sparse autoencoders, each trained on
one layer of a vision model (two different models, or two layers of one model: the titles say
which). Upload an image, then select patches on the grid (click a patch, or press and drag a
rectangle); the grid is the left model's, and the selection is mapped onto the right model's own
patches.

Each side lists the features with the highest mean activation over the selection: the heat-map
shows where the feature fires on your image, the small tiles are its top dataset images. Click a
card to open that feature: its statistics and exemplars appear below, together with the
**best-matching features on the other side**. Click a match to open it there.

How matches are found is written above each list: precomputed cross-model matches (features whose
activations agree over a dataset), decoder similarity (same model and layer), or, as a stand-in
when a bundle has neither, the correlation of activations over this image's patches.
"""


def resolve_defaults(left, right, offline: bool) -> tuple:
    """Bundles to compare, with the online defaults tried first unless offline."""
    if left and right:
        return left, right, None
    if left or right:
        raise adapter.AppSetupError("give both --left and --right (or neither, for the defaults)")
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline and not hub_offline:
        try:
            a = adapter.load_bundle(adapter.ONLINE_LEFT)
            b = adapter.load_bundle(adapter.ONLINE_RIGHT)
            return a, b, None
        except adapter.AppSetupError as err:
            note = (
                f"the online default bundles ({adapter.ONLINE_LEFT}, {adapter.ONLINE_RIGHT}) "
                f"are not reachable ({str(err)[:160]}); using the offline pair"
            )
            print(f"note: {note}", file=sys.stderr)
    a, b = adapter.default_pair_paths()
    return str(a), str(b), "offline"


class Side:
    """One SAE of the comparison and the pictures it makes."""

    def __init__(self, engine: Engine, name: str):
        self.eng = engine
        self.name = name
        self.bundle = engine.bundle
        self.pre = engine.backbone.preprocess
        self.stats = engine.stats

    def box(self, an) -> tuple:
        return crop_box(an.size, self.pre)

    def cards(self, an, sel):
        feats = self.eng.top_features(an, sel, N_TOP)
        items = []
        for f, score, _n_fire in feats:
            tiles = [t for t, _ in panels.exemplar_tiles(self.bundle, self.pre, f, 5, panels.TILE)]
            items.append(
                (
                    panels.feature_card(an.view, an.feature_map(f), tiles, f, score),
                    feature_caption(f, self.bundle.feature_name(f), f"{score:.2f}"),
                )
            )
        return items, [f for f, _, _ in feats]

    def feature(self, f: int, an=None, sel=()):
        fs = self.stats.of(f) if self.stats is not None else None
        labels = self.bundle.labels
        details = labels.details(f) if labels is not None and f < labels.n_features else None
        md = stats_markdown(f, fs, name=self.bundle.feature_name(f), details=details)
        ex = panels.exemplar_tiles(self.bundle, self.pre, f, N_EXEMPLARS)
        heat = None
        if an is not None:
            heat = render_spotlight(an.view, an.feature_map(f))
            if sel:
                heat = outline_patches(heat, an.grid, sel)
        return md, ex, heat


class Comparison:
    """The two sides of the page and its event handlers (method names are the events' API
    names, so keep them stable)."""

    def __init__(self, left: Side, right: Side):
        self.L, self.R = left, right
        self.sides = {"left": left, "right": right}

    def _an(self, side: Side, key):
        try:
            return side.eng.get(key)
        except SessionExpired as err:
            raise gr.Error(str(err), title="No image") from None

    def _feature(self, side: Side, feature) -> int:
        return feature_id(feature, side.eng.d_sae, f"{side.name} feature id")

    def selections(self, lk, rk, sel_text):
        L, R = self.L, self.R
        la, ra = self._an(L, lk), self._an(R, rk)
        ls = parse_selection(sel_text, la.grid)
        rs = adapter.map_selection(ls, la.grid, L.box(la), ra.grid, R.box(ra))
        return la, ra, ls, rs

    def matches(self, src: Side, dst: Side, f: int, sa=None, da=None):
        codes_a = codes_b = None
        if sa is not None and da is not None:
            codes_a = sa.codes
            codes_b = adapter.resample_codes(da.codes, da.grid, sa.grid)
        pairs, how = adapter.cross_matches(src.bundle, dst.bundle, f, N_MATCHES, codes_a, codes_b)
        items = []
        for g, score in pairs:
            if da is not None:
                tiles = [
                    t for t, _ in panels.exemplar_tiles(dst.bundle, dst.pre, g, 5, panels.TILE)
                ]
                img = panels.feature_card(da.view, da.feature_map(g), tiles, g, score)
            else:
                tiles = panels.exemplar_tiles(dst.bundle, dst.pre, g, 1)
                img = tiles[0][0] if tiles else None
            if img is not None:
                name = dst.bundle.feature_name(g)
                items.append((img, feature_caption(g, name, f"{score:.2f}")))
        label = (
            f"**Best matches on the {dst.name}** ({html.escape(dst.eng.title)}) for "
            f"{src.name} #{f} — _{how}_"
        )
        return label, items, [g for g, _ in pairs]

    def open_feature(self, side_name, feature, lk, rk, sel_text):
        L, R = self.L, self.R
        src = self.sides[side_name]
        dst = R if src is L else L
        f = self._feature(src, feature)
        sa = da = None
        ssel = ()
        if lk and rk:
            try:
                la, ra, ls, rs = self.selections(lk, rk, sel_text)
                sa, da = (la, ra) if src is L else (ra, la)
                ssel = ls if src is L else rs
            except gr.Error:
                pass
        md, ex, heat = src.feature(f, sa, ssel)
        label, items, ids = self.matches(src, dst, f, sa, da)
        return f, md, ex, heat, label, items, ids

    def on_image(self, upload):
        L, R = self.L, self.R
        if upload is None:  # cleared (keeps an error message from a refused upload visible)
            return (
                gr.update(),
                None,
                None,
                gr.update(),
                picker_html(None, None),
                "",
                "",
                [],
                [],
                [],
                [],
            )
        image, problem = try_upload(upload)
        if image is None:
            return (
                None,
                None,
                None,
                error_box(problem),
                picker_html(None, None),
                "",
                "",
                [],
                [],
                [],
                [],
            )
        t0 = time.perf_counter()
        la, ra = (
            L.eng.analyse(image),
            R.eng.analyse(image),
        )  # one backbone: runs one after the other
        lc, lf = L.cards(la, set())
        rc, rf = R.cards(ra, set())
        w, h = image.size
        status = (
            f"**{w}×{h}** image. Left SAE explains **{1 - la.fvu:.0%}** of its layer's "
            f"variance on it, right SAE **{1 - ra.fvu:.0%}** "
            f"<span class='sae-note'>({time.perf_counter() - t0:.2f} s)</span>"
        )
        return (
            gr.update(),
            la.key,
            ra.key,
            status,
            picker_html(la.view, la.grid, ()),
            "",
            describe_selection(set(), la.grid),
            lc,
            lf,
            rc,
            rf,
        )

    def open_tops(self, lk, rk, lf, rf):
        """After an upload: open each side's strongest feature, with its matches."""
        outs = []
        for name, feats in (("left", lf), ("right", rf)):
            if lk and rk and feats:
                outs.extend(self.open_feature(name, feats[0], lk, rk, ""))
            else:
                outs.extend([gr.update()] * 7)
        return tuple(outs)

    def on_select(self, lk, rk, sel_text):
        la, ra, ls, rs = self.selections(lk, rk, sel_text)
        lc, lf = self.L.cards(la, ls)
        rc, rf = self.R.cards(ra, rs)
        info = describe_selection(ls, la.grid)
        if ls:
            info += f" On the right model's grid: {len(rs)} of {ra.n_patches} patches."
        return info, lc, lf, rc, rf

    @staticmethod
    def hide_cards():
        """On a new selection, before the model runs: empty cards and ids, so that no card shows
        an image of another feature while the new ones are computed and loaded."""
        return [], [], [], []

    def on_clear(self, lk):
        return picker_cleared(self._an(self.L, lk))

    def on_all(self, lk):
        return picker_all(self._an(self.L, lk))


# ------------------------------------------------------------------------------ layout
@dataclass
class FeaturePanel:
    """④ one side's feature: id, statistics, heat-map, exemplars and matches on the other side."""

    num: gr.Number
    btn: gr.Button
    md: gr.Markdown
    heat: gr.Image
    ex: gr.Gallery
    mlabel: gr.Markdown
    mgal: gr.Gallery
    ids: gr.State  # the side's top features (its gallery above)
    match_ids: gr.State
    name_state: gr.State
    top: gr.Gallery

    @property
    def outputs(self) -> list:
        return [self.num, self.md, self.ex, self.heat, self.mlabel, self.mgal, self.match_ids]


@dataclass
class Page:
    lkey: gr.State
    rkey: gr.State
    lfeats: gr.State
    rfeats: gr.State
    upload: gr.Image
    status: gr.Markdown
    picker: gr.HTML
    sel_text: gr.Textbox
    clear_btn: gr.Button
    all_btn: gr.Button
    sel_info: gr.Markdown
    ltop: gr.Gallery
    rtop: gr.Gallery
    left: FeaturePanel | None = None
    right: FeaturePanel | None = None


def _top_gallery(header: str, elem_id: str) -> gr.Gallery:
    """One side's column of top-feature cards under its header (left and right are alike)."""
    with gr.Column(min_width=320):
        gr.HTML(header)
        return ServedGallery(
            show_label=False,
            columns=3,
            height=440,
            allow_preview=False,
            format="jpeg",
            elem_id=elem_id,
            object_fit="contain",
        )


def side_header(side: Side) -> str:
    """The side's tag and its one line: model, layer, SAE and data in plain words."""
    b = side.bundle
    sub = about_line(b.manifest, b.model, side.eng.sae.cfg)
    return (
        f"<div class='cmp-side'><div class='cmp-tag'>{side.name.upper()}</div>"
        f"<span class='sae-note'>{html.escape(sub)}</span></div>"
    )


def _feature_panel(side: Side, ids_state, match_state, name_state, top) -> FeaturePanel:
    with gr.Column(min_width=320):
        with gr.Row():
            num = RawNumber(
                label=f"{side.name.capitalize()} feature id",
                precision=0,
                value=0,
                minimum=0,
                maximum=side.eng.d_sae - 1,
                elem_id=f"{side.name}-feature",
                scale=3,
            )
            btn = gr.Button("Show", size="sm", variant="primary", scale=1, min_width=60)
        with gr.Row(equal_height=False):
            md = gr.Markdown()
            heat = ServedImage(
                show_label=False,
                interactive=False,
                format="jpeg",
                height=200,
                buttons=[],
                elem_id=f"{side.name}-heat",
            )
        ex = ServedGallery(
            show_label=False,
            columns=4,
            height=300,
            allow_preview=True,
            format="jpeg",
            elem_id=f"{side.name}-exemplars",
            object_fit="contain",
        )
        mlabel = gr.Markdown()
        mgal = ServedGallery(
            show_label=False,
            columns=3,
            height=300,
            allow_preview=False,
            format="jpeg",
            elem_id=f"{side.name}-matches",
            object_fit="contain",
        )
    return FeaturePanel(
        num, btn, md, heat, ex, mlabel, mgal, ids_state, match_state, name_state, top
    )


def _layout(c: Comparison, mode: str | None, examples: bool) -> Page:
    """The page, top to bottom, in the current Blocks context."""
    L, R = c.L, c.R
    lkey, rkey = gr.State(None), gr.State(None)
    lfeats, rfeats, lmatch_ids, rmatch_ids = gr.State([]), gr.State([]), gr.State([]), gr.State([])
    left_name, right_name = gr.State("left"), gr.State("right")
    note = " — offline default: two layers of one model" if mode == "offline" else ""
    heading = pair_heading((L.bundle.manifest, L.bundle.model), (R.bundle.manifest, R.bundle.model))
    gr.HTML(
        f"<div class='sae-header'><h1>Compare two SAEs: {html.escape(heading)}</h1>"
        f"<p class='sae-sub'>{pair_title(L.eng.title, R.eng.title)}{html.escape(note)}</p></div>"
    )
    with gr.Accordion("How to read this page", open=False):
        gr.Markdown(HELP)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=260):
            gr.Markdown("### ① Your image")
            upload = image_upload(280, examples)
            status = gr.Markdown(elem_id="status")
        with gr.Column(scale=4, min_width=260):
            gr.Markdown("### ② Select patches (left model's grid)")
            picker, sel_text, clear_btn, all_btn, sel_info = patch_picker_controls()
    gr.Markdown("### ③ Top features of the selection, side by side")
    with gr.Row(equal_height=False):
        ltop = _top_gallery(side_header(L), "left-top")
        rtop = _top_gallery(side_header(R), "right-top")
    page = Page(
        lkey,
        rkey,
        lfeats,
        rfeats,
        upload,
        status,
        picker,
        sel_text,
        clear_btn,
        all_btn,
        sel_info,
        ltop,
        rtop,
    )
    gr.Markdown("### ④ A feature and its best matches on the other side")
    with gr.Row(equal_height=False):
        page.left = _feature_panel(L, lfeats, lmatch_ids, left_name, ltop)
        page.right = _feature_panel(R, rfeats, rmatch_ids, right_name, rtop)
    return page


# ------------------------------------------------------------------------------ wiring
def _wire_image(c: Comparison, p: Page) -> None:
    """Upload -> both analyses and top features; picker, Clear, Select all -> top features."""
    P, Q = p.left, p.right
    p.upload.change(
        c.on_image,
        p.upload,
        [
            p.upload,
            p.lkey,
            p.rkey,
            p.status,
            p.picker,
            p.sel_text,
            p.sel_info,
            p.ltop,
            p.lfeats,
            p.rtop,
            p.rfeats,
        ],
        api_name="analyse",
        **MODEL,
    ).then(
        c.open_tops,
        [p.lkey, p.rkey, p.lfeats, p.rfeats],
        P.outputs + Q.outputs,
        api_visibility="private",
        **MODEL,
    )
    sel_in = [p.lkey, p.rkey, p.sel_text]
    sel_out = [p.sel_info, p.ltop, p.lfeats, p.rtop, p.rfeats]
    cards = [p.ltop, p.lfeats, p.rtop, p.rfeats]
    hide = dict(fn=c.hide_cards, inputs=None, outputs=cards, api_visibility="private", queue=False)
    p.picker.pick(on_pick, None, p.sel_text, api_visibility="private", queue=False).then(
        **hide
    ).then(c.on_select, sel_in, sel_out, api_visibility="private", **MODEL)
    select_api = gr.Button(visible=False)
    select_api.click(c.on_select, sel_in, sel_out, api_name="select", **MODEL)
    p.clear_btn.click(c.on_clear, p.lkey, [p.picker, p.sel_text], api_visibility="private").then(
        **hide
    ).then(c.on_select, sel_in, sel_out, api_visibility="private", **MODEL)
    p.all_btn.click(c.on_all, p.lkey, [p.picker, p.sel_text], api_visibility="private").then(
        **hide
    ).then(c.on_select, sel_in, sel_out, api_visibility="private", **MODEL)


def _wire_side(c: Comparison, p: Page, name: str, pan: FeaturePanel, other: FeaturePanel) -> None:
    """Show / Enter / a click on a top card -> this side's feature; a click on a match -> that
    feature on the other side."""
    f_in = [pan.name_state, pan.num, p.lkey, p.rkey, p.sel_text]
    pan.btn.click(c.open_feature, f_in, pan.outputs, api_name=f"feature_{name}", **MODEL)
    pan.num.submit(c.open_feature, f_in, pan.outputs, api_visibility="private", **MODEL)
    pan.top.select(pick_from, pan.ids, pan.num, api_visibility="private").then(
        c.open_feature, f_in, pan.outputs, api_visibility="private", **MODEL
    )
    # a click on a match opens that feature on the other side
    pan.mgal.select(pick_from, pan.match_ids, other.num, api_visibility="private").then(
        c.open_feature,
        [other.name_state, other.num, p.lkey, p.rkey, p.sel_text],
        other.outputs,
        api_visibility="private",
        **MODEL,
    )


def build_app(
    left=None, right=None, *, offline: bool = False, examples: bool = True, warm_up: bool = False
) -> gr.Blocks:
    """Side-by-side comparison of two bundles (paths, Hub ids or Bundles; None: defaults)."""
    left, right, mode = resolve_defaults(left, right, offline)
    lb, rb = adapter.load_bundle(left), adapter.load_bundle(right)
    adapter.share_backbone(lb, rb)
    L, R = Side(Engine(lb), "left"), Side(Engine(rb), "right")
    if warm_up:
        L.eng.warm_up()
        R.eng.warm_up()
    c = Comparison(L, R)
    with gr.Blocks(
        title=f"saescope · {L.eng.title} vs {R.eng.title}", analytics_enabled=False
    ) as demo:
        p = _layout(c, mode, examples)
        _wire_image(c, p)
        _wire_side(c, p, "left", p.left, p.right)
        _wire_side(c, p, "right", p.right, p.left)
    demo.engines = (L.eng, R.eng)
    demo.compare_mode = mode
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = app_parser(
        "saescope-compare",
        "Compare two SAEs on the same image and patches, side by side (default: CLIP "
        "ViT-B/16 vs DINOv2 ViT-B/14 online; offline: two layers of the offline DINOv2-S).",
        bundle=False,
    )
    p.add_argument(
        "--left",
        default=os.environ.get(adapter.ENV_LEFT) or None,
        help="left bundle (folder or Hub id)",
    )
    p.add_argument(
        "--right",
        default=os.environ.get(adapter.ENV_RIGHT) or None,
        help="right bundle (folder or Hub id)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="skip the online defaults: two layers of the offline model",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return serve(
        lambda: build_app(
            args.left, args.right, offline=args.offline, examples=args.examples, warm_up=True
        ),
        args,
        "comparison",
    )


if __name__ == "__main__":
    sys.exit(main())
