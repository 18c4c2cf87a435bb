"""The flow shared by the segmentation and the classification steering apps.

Upload an image (or pick an example), choose a frozen head of the bundle, select patches, get the
SAE features that fire there as candidates, and move up to :data:`N_SLOTS` feature sliders (0 =
suppress, 1 = unchanged, > 1 = amplify; or *set* the feature to a value) applied on the selected
patches or on all of them. Every slider move reruns blocks L+1.. and the head only (the image's
layer-L tokens are cached by :class:`apps.engine.Engine`), and the task shows its output before and
after. What differs between the apps (the output panels) is a :class:`SteerTask`; the page,
upload handling, patch picker, candidates and sliders are built here once, so both apps follow the
feature browser's UX standard (same upload checks, same picker, same look).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saescope.apps import adapter, panels
from saescope.apps.common import (
    app_parser,
    loading_line,
    serve,
    describe_selection,
    error_box,
    example_images,
    parse_selection,
    patch_picker_controls,
    picked_selection,
    picker_all,
    picker_cleared,
    picker_html,
    SafeImage,
    try_upload,
)
from saescope.apps.engine import MODEL_CONCURRENCY, Analysis, Engine, SessionExpired, SteerOutcome, slider_edits

import gradio as gr  # noqa: E402  (after apps.common, which switches off analytics)

N_SLOTS = 5  # feature sliders
N_CANDIDATES = 10  # candidate feature cards
SLIDER_MAX = 5.0
MODES = {"scale": "scale the feature (× slider)", "set": "set it to slider × its activation here"}
SCOPES = ["selected patches", "all patches"]
SCOPE_CLS = "all patches + CLS token"



class SteerTask:
    """What one app shows of a head's output: subclasses build and fill the output panels."""

    kind = "segmentation"  # the kind of head the app steers
    title = "Steer"
    before_title = "Output"
    help = ""

    def __init__(self, engine: Engine):
        self.eng = engine

    # components --------------------------------------------------------------------------
    def before_panel(self) -> list:
        """Components showing the unedited output (built inside the page's top row)."""
        raise NotImplementedError

    def after_panel(self) -> list:
        """Components showing the edited output and what changed."""
        raise NotImplementedError

    # filling them ---------------------------------------------------------------------------
    def render_before(self, an: Analysis, head: str, before: np.ndarray) -> tuple:
        raise NotImplementedError

    def render_after(self, an: Analysis, head: str, out: SteerOutcome) -> tuple[tuple, str]:
        """Values for :meth:`after_panel` and a one-line markdown summary of the change."""
        raise NotImplementedError

    def empty_before(self) -> tuple:
        return tuple(None for _ in self._before)

    def empty_after(self) -> tuple:
        return tuple(None for _ in self._after)

    def scopes(self) -> list[str]:
        return list(SCOPES)

    def examples(self) -> list[tuple[str, str]]:
        """Held-out images of the data sets of the bundle's heads of this kind: (path, caption)."""
        out = []
        for name in self.eng.heads_of_kind(self.kind):
            m = self.eng.head_info(name).get("metrics") or {}
            used = int(m.get("n_train_images", 0)) + int(m.get("n_test_images", 0))
            out += adapter.probe_examples(m.get("source"), self.kind, self.n_examples,
                                          start=self.examples_from(m.get("source") or ""),
                                          n_used=used)
        return out

    n_examples = 6

    def examples_from(self, source: str) -> int:
        """First example index (beyond what the probe was fitted on)."""
        return 0


def head_choices(eng: Engine, kind: str) -> list[tuple[str, str]]:
    """Dropdown entries ``(label, name)`` for the bundle's heads of one kind."""
    out = []
    for name in eng.heads_of_kind(kind):
        info = eng.head_info(name)
        n = len(info["classes"])
        out.append((f"{name} ({n} classes)" if n else name, name))
    return out


def head_markdown(eng: Engine, name: str) -> str:
    info = eng.head_info(name)
    classes = info.get("classes") or []
    shown = ", ".join(str(c) for c in classes[:12]) + (" …" if len(classes) > 12 else "")
    src = (info.get("metrics") or {}).get("source")
    return (f"**{html.escape(name)}**: {info['kind']} head, {len(classes)} classes ({html.escape(shown)})."
            f" {panels.metrics_line(info)}"
            + (f"; fitted on {html.escape(str(src).split('?')[0])}." if src else "."))


def build_steer_app(task_cls: type[SteerTask], bundle=None, *, head: str | None = None,
                    engine: Engine | None = None, examples: bool = True, warm_up: bool = False,
                    title: str | None = None) -> gr.Blocks:
    """The page for one :class:`SteerTask` on ``bundle`` (path, Hub id, Bundle, None = default)."""
    eng = engine or Engine(bundle)
    task = task_cls(eng)
    choices = head_choices(eng, task.kind)
    if not choices:
        raise adapter.AppSetupError(
            f"bundle {eng.bundle.name} has no {task.kind} head (it has: "
            f"{', '.join(eng.head_names) or 'none'}); fit one with saescope probe "
            f"--bundle {eng.bundle.path} --task {task.kind}")
    names = [n for _, n in choices]
    if head is not None and head not in names:
        raise adapter.AppSetupError(f"{head!r} is not a {task.kind} head of bundle "
                                    f"{eng.bundle.name} (choose from: {', '.join(names)})")
    # default: the head with the most classes (a real multi-class probe before a binary map)
    default_head = head or max(names, key=lambda n: (len(eng.head_info(n)["classes"]), -names.index(n)))
    if warm_up:
        eng.warm_up()
        eng.head_info(default_head)
    b = eng.bundle
    st = eng.stats
    pre = eng.backbone.preprocess
    scopes = task.scopes()

    # ------------------------------------------------------------------ helpers
    def _analysis(key) -> Analysis:
        try:
            return eng.get(key)
        except SessionExpired as err:
            raise gr.Error(str(err), title="No image") from None

    def _head(name) -> str:
        if name not in names:
            raise gr.Error(f"unknown head {name!r}; choose one of {', '.join(names)}",
                           title="Unknown head", print_exception=False)
        return name

    def _feature(value) -> int | None:
        if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
            return None
        try:
            if float(value) != int(float(value)):
                raise ValueError(f"feature id must be a whole number, got {value}")
            return eng.check_feature(int(float(value)))
        except (TypeError, ValueError) as err:
            raise gr.Error(str(err), title="Unknown feature", print_exception=False) from None

    def _slots(args: Sequence[Any]) -> tuple[list[int | None], list[float]]:
        ids = [_feature(v) for v in args[:N_SLOTS]]
        vals = [1.0 if v is None else float(v) for v in args[N_SLOTS:2 * N_SLOTS]]
        return ids, vals

    def _patches(an: Analysis, sel: set, scope: str):
        return None if (scope != SCOPES[0] or not sel) else sel

    def _edits(an: Analysis, ids, vals, mode: str, patches):
        values: dict[int, float] = {}
        for f, v in zip(ids, vals):
            if f is not None and float(v) != 1.0:
                values[f] = float(v)  # one edit per feature: the later slot wins
        reference = None
        if mode == "set":
            mask = an.mask(patches)
            reference = {}
            for f in values:
                act = an.codes[:, f].numpy() if mask is None else an.codes[:, f].numpy()[mask]
                on = act[act > 0]
                typical = float(st.mean_active[f]) if st is not None and st.mean_active[f] > 0 else 1.0
                reference[f] = float(on.mean()) if len(on) else typical
        return slider_edits(values, "set" if mode == "set" else "scale", reference)

    def _mode(label: str) -> str:
        return "set" if label == MODES["set"] else "scale"

    def edits_markdown(edits, scope: str, n_sel: int) -> str:
        if not edits:
            return "_No edits: every slider is at 1, the model runs unchanged._"
        where = (f"the {n_sel} selected patches" if scope == SCOPES[0] and n_sel
                 else "all patches" + (" and the CLS token" if scope == SCOPE_CLS else ""))
        items = ", ".join(
            f"**#{e.feature}** " + ("off" if e.scale == 0 else f"× {e.scale:g}" if e.scale is not None
                                    else f"= {e.value:.2f}") for e in edits)
        return f"Active edits on {where}: {items}"

    def cards(an: Analysis, sel: set):
        feats = eng.top_features(an, sel, N_CANDIDATES)
        items = []
        for f, score, n_fire in feats:
            tiles = [t for t, _ in panels.exemplar_tiles(b, pre, f, 5, panels.TILE)]
            card = panels.feature_card(an.view, an.feature_map(f), tiles, f, score)
            where = f"{n_fire / (len(sel) if sel else an.n_patches):.0%}"
            items.append((card, f"#{f} · {score:.2f} · {where}"))
        return items, [f for f, _, _ in feats]

    def slot_updates(ids: list[int | None], vals: list[float]) -> list:
        ups = [gr.update(value=f) for f in ids]
        ups += [gr.update(value=v, label=_slot_label(f)) for f, v in zip(ids, vals)]
        return ups

    def refill(ids: list[int | None], vals: list[float], candidates: list[int]):
        """Keep slots with an active edit; give the others the best candidates not yet in use."""
        keep = [f if (f is not None and v != 1.0) else None for f, v in zip(ids, vals)]
        pool = [c for c in candidates if c not in keep]
        new_ids, new_vals = [], []
        for f, v in zip(keep, vals):
            if f is None:
                f = pool.pop(0) if pool else None
                v = 1.0
            new_ids.append(f)
            new_vals.append(v)
        return new_ids, new_vals

    def status_md(an: Analysis) -> str:
        w, h = an.image.size
        t = an.timings
        return (f"**{w}×{h}** image → {an.grid[0]}×{an.grid[1]} patches; the SAE explains "
                f"**{1 - an.fvu:.0%}** of the layer-{eng.layer} variance on it "
                f"<span class='sae-note'>(model {t['forward_s'] + t['head_s']:.2f} s)</span>")

    def steer_outputs(an: Analysis, head: str, sel: set, scope: str, mode: str, ids, vals):
        """Edited output panels, edits line and timings for the current sliders."""
        t0 = time.perf_counter()
        patches = _patches(an, sel, scope)
        edits = _edits(an, ids, vals, mode, patches)
        kinds = "cls,patch" if scope == SCOPE_CLS else "patch"
        out = eng.steer(an, edits, patches, head=head, kinds=kinds)
        t1 = time.perf_counter()
        values, summary = task.render_after(an, head, out)
        t2 = time.perf_counter()
        timing = (f"<span class='sae-note'>steering {out.seconds * 1000:.0f} ms (blocks "
                  f"{eng.layer + 1}.. + head) · rendering {(t2 - t1) * 1000:.0f} ms · total "
                  f"{(t2 - t0) * 1000:.0f} ms</span>")
        effect = summary
        if edits:
            effect += (f"\n\nThe edits moved the edited layer-{eng.layer} tokens by "
                       f"**{out.token_change:.1%}** and the final patch tokens by "
                       f"**{out.final_change:.1%}** on average.")
        else:
            effect += "\n\n_No edits: after = before exactly (the SAE's error term is added back)._"
        return (*values, edits_markdown(edits, scope, len(sel)), effect, timing)

    # ------------------------------------------------------------------ handlers
    def on_image(upload, head, mode, scope, *slots):
        n_after = len(task._after) + 3
        blank_slots = slot_updates([None] * N_SLOTS, [1.0] * N_SLOTS)
        if upload is None:  # cleared (keeps an error message from a refused upload visible)
            return (gr.update(), None, gr.update(), picker_html(None, None), "", "",
                    *task.empty_before(), [], [], *blank_slots, *([gr.update()] * n_after))
        image, problem = try_upload(upload)
        if image is None:
            return (None, None, error_box(problem), picker_html(None, None), "", "",
                    *task.empty_before(), [], [], *blank_slots, *task.empty_after(), "", "", "")
        head = _head(head)
        an = eng.analyse(image)
        before = eng.head_before(an, head)
        items, cands = cards(an, set())
        ids, vals = refill([None] * N_SLOTS, [1.0] * N_SLOTS, cands)
        after = steer_outputs(an, head, set(), scope, _mode(mode), ids, vals)
        return (gr.update(), an.key, status_md(an), picker_html(an.view, an.grid, ()), "",
                describe_selection(set(), an.grid), *task.render_before(an, head, before),
                items, cands, *slot_updates(ids, vals), *after)

    def on_head(key, head, sel_text, mode, scope, *slots):
        head = _head(head)
        md = head_markdown(eng, head)
        if not key:
            return (md, *task.empty_before(), *task.empty_after(), "", "", "")
        an = _analysis(key)
        ids, vals = _slots(slots)
        sel = parse_selection(sel_text, an.grid)
        return (md, *task.render_before(an, head, eng.head_before(an, head)),
                *steer_outputs(an, head, sel, scope, _mode(mode), ids, vals))

    def on_select(key, head, sel_text, mode, scope, *slots):
        an = _analysis(key)
        head = _head(head)
        sel = parse_selection(sel_text, an.grid)
        items, cands = cards(an, sel)
        ids, vals = refill(*_slots(slots), cands)
        return (describe_selection(sel, an.grid), items, cands, *slot_updates(ids, vals),
                *steer_outputs(an, head, sel, scope, _mode(mode), ids, vals))

    def on_steer(key, head, sel_text, mode, scope, *slots):
        an = _analysis(key)
        ids, vals = _slots(slots)
        sel = parse_selection(sel_text, an.grid)
        return steer_outputs(an, _head(head), sel, scope, _mode(mode), ids, vals)

    def on_slot(*slots):
        """A feature id typed into a slot: the slider's label follows."""
        ids, _ = _slots(slots)
        return [gr.update(label=_slot_label(f)) for f in ids]

    def on_reset(key, head, sel_text, mode, scope, *slots):
        ids, _ = _slots(slots)
        vals = [1.0] * N_SLOTS
        if not key:
            return (*slot_updates(ids, vals), *task.empty_after(), "", "", "")
        an = _analysis(key)
        sel = parse_selection(sel_text, an.grid)
        return (*slot_updates(ids, vals),
                *steer_outputs(an, _head(head), sel, scope, _mode(mode), ids, vals))

    def on_card(cands, key, head, sel_text, mode, scope, *slots, evt: gr.SelectData):
        """A click on a candidate card puts that feature in the first slot without an edit."""
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not cands or i is None or i >= len(cands):
            raise gr.Error("That card is no longer shown; try again.")
        f = int(cands[i])
        ids, vals = _slots(slots)
        if f not in ids:
            free = [j for j, v in enumerate(vals) if v == 1.0]
            j = free[0] if free else N_SLOTS - 1
            ids[j], vals[j] = f, 1.0
        return slot_updates(ids, vals)

    def on_pick(evt: gr.EventData):
        return picked_selection(evt)

    def on_clear(key):
        return picker_cleared(_analysis(key))

    def on_all(key):
        return picker_all(_analysis(key))

    # ------------------------------------------------------------------ layout
    n_live = int((st.frequency > 0).sum()) if st is not None else None
    desc = (f"{b.model.get('display_name') or b.model.get('model_id', '')} · SAE on layer {eng.layer} "
            f"({eng.d_sae:,} features" + (f", {n_live:,} alive" if n_live is not None else "") + ")")
    with gr.Blocks(title=title or f"saescope · {task.title} · {eng.title}",
                   analytics_enabled=False) as demo:
        key = gr.State(None)
        cand_state = gr.State([])
        gr.HTML(f"<div class='sae-header'><h1>{html.escape(task.title)}</h1>"
                f"<p class='sae-sub'><b>{html.escape(eng.title)}</b> — {html.escape(desc)}</p></div>")
        with gr.Accordion("How to read this page", open=False):
            gr.Markdown(task.help)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=260):
                gr.Markdown("### ① Image and head")
                head_dd = gr.Dropdown(choices, value=default_head, label="Frozen head to read",
                                      elem_id="head", interactive=True)
                head_md = gr.Markdown(head_markdown(eng, default_head), elem_id="head-info",
                                      elem_classes="sae-note")
                upload = SafeImage(label="Upload an image", type="filepath",
                                   sources=["upload", "clipboard"], height=260, elem_id="upload")
                if examples:
                    ex = task.examples() + [(p, f"photo: {Path(p).stem.split('_')[0]}")
                                            for p in example_images()]
                    if ex:
                        gr.Examples([p for p, _ in ex], inputs=upload, label="Examples (held-out "
                                    "images of the probe's data set, then photos)",
                                    examples_per_page=12, example_labels=[c for _, c in ex],
                                    elem_id="examples")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=4, min_width=260):
                gr.Markdown("### ② Select patches")
                picker, sel_text, clear_btn, all_btn, sel_info = patch_picker_controls()
            with gr.Column(scale=4, min_width=260):
                gr.Markdown(f"### {task.before_title}")
                task._before = task.before_panel()
        gr.Markdown("### ③ Candidate features of the selection", elem_classes="sae-section")
        gr.Markdown("The features with the highest mean activation over the selected patches (the "
                    "whole image when none is selected). Big tile: where it fires on your image; "
                    "small tiles: its top dataset images. Caption: id · mean activation · share of "
                    "patches where it fires. The top five are on the sliders below; click a card to "
                    "put it on a free slider.", elem_classes="sae-note")
        gallery = gr.Gallery(show_label=False, columns=5, height=480, allow_preview=False,
                             format="jpeg", elem_id="candidates", object_fit="contain")
        gr.Markdown("### ④ Steer: suppress or amplify features", elem_classes="sae-section")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                mode = gr.Radio(list(MODES.values()), value=MODES["scale"], label="Sliders",
                                elem_id="mode")
                scope = gr.Radio(scopes, value=scopes[0], label="Apply on", elem_id="scope")
                slot_ids, sliders = [], []
                for j in range(N_SLOTS):
                    with gr.Row(elem_classes="steer-slot"):
                        slot_ids.append(gr.Number(value=None, precision=0, minimum=0,
                                                  maximum=eng.d_sae - 1, label="feature",
                                                  elem_id=f"slot-{j}-feature", scale=1,
                                                  min_width=90))
                        sliders.append(gr.Slider(0, SLIDER_MAX, 1.0, step=0.05,
                                                 label=_slot_label(None), elem_id=f"slot-{j}",
                                                 scale=4))
                gr.Markdown("0 = suppress · 1 = unchanged · 5 = amplify five-fold. In *set* mode "
                            "the feature is set to slider × its mean activation on the chosen "
                            "patches (its typical activation where it is silent there), which also "
                            "adds it where it did not fire; 1 still means *leave it alone*.",
                            elem_classes="sae-note")
                reset_btn = gr.Button("Reset sliders", size="sm", elem_id="reset")
                edits_md = gr.Markdown(elem_id="edits")
                timing_md = gr.Markdown(elem_id="timing")
            with gr.Column(scale=8):
                task._after = task.after_panel()
                effect_md = gr.Markdown(elem_id="effect")

        # ------------------------------------------------------------------ wiring
        model = dict(concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY)
        state_in = [key, head_dd, sel_text, mode, scope, *slot_ids, *sliders]
        after_out = [*task._after, edits_md, effect_md, timing_md]
        upload.change(on_image, [upload, head_dd, mode, scope, *slot_ids, *sliders],
                      [upload, key, status, picker, sel_text, sel_info, *task._before, gallery,
                       cand_state, *slot_ids, *sliders, *after_out], api_name="analyse", **model)
        head_dd.change(on_head, state_in, [head_md, *task._before, *after_out], api_name="head",
                       **model)
        sel_out = [sel_info, gallery, cand_state, *slot_ids, *sliders, *after_out]
        picker.pick(on_pick, None, sel_text, api_visibility="private", queue=False).then(
            on_select, state_in, sel_out, api_visibility="private", **model)
        select_api = gr.Button(visible=False)  # the same, from the API ("r,c;r,c" or "all")
        select_api.click(on_select, state_in, sel_out, api_name="select", **model)
        clear_btn.click(on_clear, key, [picker, sel_text], api_visibility="private").then(
            on_select, state_in, sel_out, api_visibility="private", **model)
        all_btn.click(on_all, key, [picker, sel_text], api_visibility="private").then(
            on_select, state_in, sel_out, api_visibility="private", **model)
        steer_out = after_out
        steer_api = gr.Button(visible=False)
        steer_api.click(on_steer, state_in, steer_out, api_name="steer", **model)
        for s in sliders:
            # every move while dragging; the queue keeps only the latest pending one
            s.input(on_steer, state_in, steer_out, api_visibility="private",
                    trigger_mode="always_last", **model)
        for n in slot_ids:
            n.submit(on_slot, [*slot_ids, *sliders], sliders, api_visibility="private").then(
                on_steer, state_in, steer_out, api_visibility="private", **model)
        for r in (mode, scope):
            r.input(on_steer, state_in, steer_out, api_visibility="private", **model)
        reset_btn.click(on_reset, state_in, [*slot_ids, *sliders, *after_out], api_name="reset",
                        **model)
        gallery.select(on_card, [cand_state, *state_in], [*slot_ids, *sliders],
                       api_visibility="private").then(
            on_steer, state_in, steer_out, api_visibility="private", **model)
    demo.engine = eng  # for tests and benchmarks
    demo.task = task
    demo.default_head = default_head
    return demo


def _slot_label(feature: int | None) -> str:
    return "empty slot (pick a candidate)" if feature is None else f"feature #{feature}"


__all__ = ["MODES", "N_CANDIDATES", "N_SLOTS", "SCOPES", "SCOPE_CLS", "SteerTask",
           "build_steer_app", "head_choices", "head_markdown"]


def steer_app_parser(task: type, prog: str, description: str):
    """The command line of a steering app: the shared options plus ``--head``."""
    import os

    p = app_parser(prog, description)
    p.add_argument("--head", default=os.environ.get("SAESCOPE_HEAD") or None,
                   help=f"{task.kind} head to start with (default: the one with most classes)")
    return p


def steer_app_main(task: type, args) -> int:
    """Build ``task``'s app (warm) from parsed arguments and serve it."""
    return serve(lambda: build_steer_app(task, args.bundle, head=args.head, examples=args.examples,
                                         warm_up=True),
                 args, task.title.lower(), loading_line(args.bundle))
