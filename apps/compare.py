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
from pathlib import Path

from saescope.apps import adapter, panels
from saescope.apps.common import (
    app_parser,
    describe_selection,
    error_box,
    image_upload,
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

import gradio as gr  # noqa: E402

N_TOP = 6
N_EXEMPLARS = 8
N_MATCHES = 6

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
            note = (f"the online default bundles ({adapter.ONLINE_LEFT}, {adapter.ONLINE_RIGHT}) "
                    f"are not reachable ({str(err)[:160]}); using the offline pair")
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
        return adapter.crop_box(an.image.size, self.pre)

    def cards(self, an, sel):
        feats = self.eng.top_features(an, sel, N_TOP)
        items = []
        for f, score, n_fire in feats:
            tiles = [t for t, _ in panels.exemplar_tiles(self.bundle, self.pre, f, 5, panels.TILE)]
            items.append((panels.feature_card(an.view, an.feature_map(f), tiles, f, score),
                          f"#{f} · {score:.2f}"))
        return items, [f for f, _, _ in feats]

    def feature(self, f: int, an=None, sel=()):
        fs = self.stats.of(f) if self.stats is not None else None
        md = stats_markdown(f, fs)
        ex = panels.exemplar_tiles(self.bundle, self.pre, f, N_EXEMPLARS)
        heat = None
        if an is not None:
            heat = adapter.render_heatmap(an.view, an.feature_map(f))
            if sel:
                heat = outline_patches(heat, an.grid, sel)
        return md, ex, heat


def build_app(left=None, right=None, *, offline: bool = False, examples: bool = True,
              warm_up: bool = False) -> gr.Blocks:
    """Side-by-side comparison of two bundles (paths, Hub ids or Bundles; None: defaults)."""
    left, right, mode = resolve_defaults(left, right, offline)
    lb, rb = adapter.load_bundle(left), adapter.load_bundle(right)
    adapter.share_backbone(lb, rb)
    L, R = Side(Engine(lb), "left"), Side(Engine(rb), "right")
    if warm_up:
        L.eng.warm_up()
        R.eng.warm_up()
    sides = {"left": L, "right": R}

    def _an(side: Side, key):
        try:
            return side.eng.get(key)
        except SessionExpired as err:
            raise gr.Error(str(err), title="No image") from None

    def _feature(side: Side, feature) -> int:
        try:
            if feature is None or float(feature) != int(float(feature)):
                raise ValueError(f"feature id must be a whole number, got {feature}")
            return side.eng.check_feature(int(float(feature)))
        except (TypeError, ValueError) as err:
            raise gr.Error(f"{side.eng.title}: {err}", title="Unknown feature",
                           print_exception=False) from None

    def selections(lk, rk, sel_text):
        la, ra = _an(L, lk), _an(R, rk)
        ls = parse_selection(sel_text, la.grid)
        rs = adapter.map_selection(ls, la.grid, L.box(la), ra.grid, R.box(ra))
        return la, ra, ls, rs

    def matches(src: Side, dst: Side, f: int, sa=None, da=None):
        codes_a = codes_b = None
        if sa is not None and da is not None:
            codes_a = sa.codes
            codes_b = adapter.resample_codes(da.codes, da.grid, sa.grid)
        pairs, how = adapter.cross_matches(src.bundle, dst.bundle, f, N_MATCHES, codes_a, codes_b)
        items = []
        for g, score in pairs:
            if da is not None:
                tiles = [t for t, _ in panels.exemplar_tiles(dst.bundle, dst.pre, g, 5, panels.TILE)]
                img = panels.feature_card(da.view, da.feature_map(g), tiles, g, score)
            else:
                tiles = panels.exemplar_tiles(dst.bundle, dst.pre, g, 1)
                img = tiles[0][0] if tiles else None
            if img is not None:
                items.append((img, f"#{g} · {score:.2f}"))
        label = (f"**Best matches on the {dst.name}** ({html.escape(dst.eng.title)}) for "
                 f"{src.name} #{f} — _{how}_")
        return label, items, [g for g, _ in pairs]

    def open_feature(side_name, feature, lk, rk, sel_text):
        src = sides[side_name]
        dst = R if src is L else L
        f = _feature(src, feature)
        sa = da = None
        ssel = ()
        if lk and rk:
            try:
                la, ra, ls, rs = selections(lk, rk, sel_text)
                sa, da = (la, ra) if src is L else (ra, la)
                ssel = ls if src is L else rs
            except gr.Error:
                pass
        md, ex, heat = src.feature(f, sa, ssel)
        label, items, ids = matches(src, dst, f, sa, da)
        return f, md, ex, heat, label, items, ids

    def on_image(upload):
        if upload is None:  # cleared (keeps an error message from a refused upload visible)
            return (gr.update(), None, None, gr.update(), picker_html(None, None), "", "", [], [],
                    [], [])
        image, problem = try_upload(upload)
        if image is None:
            return (None, None, None, error_box(problem), picker_html(None, None), "", "", [], [],
                    [], [])
        t0 = time.perf_counter()
        la, ra = L.eng.analyse(image), R.eng.analyse(image)  # one backbone: runs one after the other
        lc, lf = L.cards(la, set())
        rc, rf = R.cards(ra, set())
        w, h = image.size
        status = (f"**{w}×{h}** image. Left SAE explains **{1 - la.fvu:.0%}** of its layer's "
                  f"variance on it, right SAE **{1 - ra.fvu:.0%}** "
                  f"<span class='sae-note'>({time.perf_counter() - t0:.2f} s)</span>")
        return (gr.update(), la.key, ra.key, status, picker_html(la.view, la.grid, ()), "",
                describe_selection(set(), la.grid), lc, lf, rc, rf)

    def open_tops(lk, rk, lf, rf):
        """After an upload: open each side's strongest feature, with its matches."""
        outs = []
        for name, feats in (("left", lf), ("right", rf)):
            if lk and rk and feats:
                outs.extend(open_feature(name, feats[0], lk, rk, ""))
            else:
                outs.extend([gr.update()] * 7)
        return tuple(outs)

    def on_select(lk, rk, sel_text):
        la, ra, ls, rs = selections(lk, rk, sel_text)
        lc, lf = L.cards(la, ls)
        rc, rf = R.cards(ra, rs)
        info = describe_selection(ls, la.grid)
        if ls:
            info += f" On the right model's grid: {len(rs)} of {ra.n_patches} patches."
        return info, lc, lf, rc, rf

    def on_pick(evt: gr.EventData):
        return picked_selection(evt)

    def on_clear(lk):
        return picker_cleared(_an(L, lk))

    def on_all(lk):
        return picker_all(_an(L, lk))

    def pick_from(items, evt: gr.SelectData):
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not items or i is None or i >= len(items):
            raise gr.Error("That item is no longer shown; try again.")
        return int(items[i])

    # ------------------------------------------------------------------ layout
    def side_header(side: Side) -> str:
        b = side.bundle
        sub = (f"{b.model.get('display_name') or b.model.get('model_id', '')} · layer {side.eng.layer} · "
               f"{side.eng.sae.cfg.name}, {side.eng.d_sae:,} features")
        return (f"<div class='cmp-side'><div class='cmp-tag'>{side.name.upper()}</div>"
                f"<b>{html.escape(side.eng.title)}</b><br><span class='sae-note'>{html.escape(sub)}</span></div>")

    note = (" — offline default: two layers of one model" if mode == "offline" else "")
    with gr.Blocks(title=f"saescope · {L.eng.title} vs {R.eng.title}", analytics_enabled=False) as demo:
        lkey, rkey = gr.State(None), gr.State(None)
        lfeats, rfeats, lmatch_ids, rmatch_ids = gr.State([]), gr.State([]), gr.State([]), gr.State([])
        left_name, right_name = gr.State("left"), gr.State("right")
        gr.HTML(f"<div class='sae-header'><h1>Compare two SAEs</h1><p class='sae-sub'>"
                f"<b>{html.escape(L.eng.title)}</b> vs <b>{html.escape(R.eng.title)}</b>"
                f"{html.escape(note)}</p></div>")
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
            with gr.Column(min_width=320):
                gr.HTML(side_header(L))
                ltop = gr.Gallery(show_label=False, columns=3, height=440, allow_preview=False,
                                  format="jpeg", elem_id="left-top", object_fit="contain")
            with gr.Column(min_width=320):
                gr.HTML(side_header(R))
                rtop = gr.Gallery(show_label=False, columns=3, height=440, allow_preview=False,
                                  format="jpeg", elem_id="right-top", object_fit="contain")
        gr.Markdown("### ④ A feature and its best matches on the other side")
        with gr.Row(equal_height=False):
            panels_out = {}
            for side, ids_state, match_state in ((L, lfeats, lmatch_ids), (R, rfeats, rmatch_ids)):
                with gr.Column(min_width=320):
                    with gr.Row():
                        num = gr.Number(label=f"{side.name.capitalize()} feature id", precision=0,
                                        value=0, minimum=0, maximum=side.eng.d_sae - 1,
                                        elem_id=f"{side.name}-feature", scale=3)
                        btn = gr.Button("Show", size="sm", variant="primary", scale=1,
                                        min_width=60)
                    with gr.Row(equal_height=False):
                        md = gr.Markdown()
                        heat = gr.Image(show_label=False, interactive=False, format="jpeg",
                                        height=200, buttons=[], elem_id=f"{side.name}-heat")
                    ex = gr.Gallery(show_label=False, columns=4, height=300, allow_preview=True,
                                    format="jpeg", elem_id=f"{side.name}-exemplars",
                                    object_fit="contain")
                    mlabel = gr.Markdown()
                    mgal = gr.Gallery(show_label=False, columns=3, height=300, allow_preview=False,
                                      format="jpeg", elem_id=f"{side.name}-matches",
                                      object_fit="contain")
                    panels_out[side.name] = dict(num=num, btn=btn, md=md, heat=heat, ex=ex,
                                                 mlabel=mlabel, mgal=mgal, ids=ids_state,
                                                 match_ids=match_state)

        # ------------------------------------------------------------------ wiring
        model = dict(concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY)
        P, Q = panels_out["left"], panels_out["right"]
        P_outs = [P["num"], P["md"], P["ex"], P["heat"], P["mlabel"], P["mgal"], P["match_ids"]]
        Q_outs = [Q["num"], Q["md"], Q["ex"], Q["heat"], Q["mlabel"], Q["mgal"], Q["match_ids"]]
        upload.change(on_image, upload, [upload, lkey, rkey, status, picker, sel_text, sel_info,
                                          ltop, lfeats, rtop, rfeats], api_name="analyse", **model
                      ).then(open_tops, [lkey, rkey, lfeats, rfeats], P_outs + Q_outs,
                             api_visibility="private", **model)
        sel_in = [lkey, rkey, sel_text]
        sel_out = [sel_info, ltop, lfeats, rtop, rfeats]
        picker.pick(on_pick, None, sel_text, api_visibility="private", queue=False).then(
            on_select, sel_in, sel_out, api_visibility="private", **model)
        select_api = gr.Button(visible=False)
        select_api.click(on_select, sel_in, sel_out, api_name="select", **model)
        clear_btn.click(on_clear, lkey, [picker, sel_text], api_visibility="private").then(
            on_select, sel_in, sel_out, api_visibility="private", **model)
        all_btn.click(on_all, lkey, [picker, sel_text], api_visibility="private").then(
            on_select, sel_in, sel_out, api_visibility="private", **model)
        for name, pan, other, name_state in (("left", P, Q, left_name), ("right", Q, P, right_name)):
            outs = [pan["num"], pan["md"], pan["ex"], pan["heat"], pan["mlabel"], pan["mgal"],
                    pan["match_ids"]]
            f_in = [name_state, pan["num"], lkey, rkey, sel_text]
            pan["btn"].click(open_feature, f_in, outs, api_name=f"feature_{name}", **model)
            pan["num"].submit(open_feature, f_in, outs, api_visibility="private", **model)
            top = ltop if name == "left" else rtop
            top.select(pick_from, pan["ids"], pan["num"], api_visibility="private").then(
                open_feature, f_in, outs, api_visibility="private", **model)
            # a click on a match opens that feature on the other side
            other_name_state = right_name if name == "left" else left_name
            o_outs = [other["num"], other["md"], other["ex"], other["heat"], other["mlabel"],
                      other["mgal"], other["match_ids"]]
            pan["mgal"].select(pick_from, pan["match_ids"], other["num"],
                               api_visibility="private").then(
                open_feature, [other_name_state, other["num"], lkey, rkey, sel_text], o_outs,
                api_visibility="private", **model)
    demo.engines = (L.eng, R.eng)
    demo.compare_mode = mode
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = app_parser(
        "saescope-compare",
        "Compare two SAEs on the same image and patches, side by side (default: CLIP "
        "ViT-B/16 vs DINOv2 ViT-B/14 online; offline: two layers of the offline DINOv2-S).",
        bundle=False)
    p.add_argument("--left", default=os.environ.get(adapter.ENV_LEFT) or None,
                   help="left bundle (folder or Hub id)")
    p.add_argument("--right", default=os.environ.get(adapter.ENV_RIGHT) or None,
                   help="right bundle (folder or Hub id)")
    p.add_argument("--offline", action="store_true",
                   help="skip the online defaults: two layers of the offline model")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return serve(lambda: build_app(args.left, args.right, offline=args.offline,
                                   examples=args.examples, warm_up=True), args, "comparison")


if __name__ == "__main__":
    sys.exit(main())
