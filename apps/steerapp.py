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
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from saescope.apps import adapter
from saescope.apps.components import RawNumber, RawSlider, ServedGallery
from saescope.apps.engine import MODEL_CONCURRENCY, Analysis, Engine, SteerOutcome
from saescope.apps.launch import app_parser, loading_line, serve
from saescope.apps.picker import on_pick, patch_picker_controls
from saescope.apps.steer_handlers import (
    MODES,
    N_CANDIDATES,
    N_SLOTS,
    SCOPE_CLS,
    SCOPES,
    SLIDER_MAX,
    Steering,
    head_markdown,
    slot_label,
)
from saescope.apps.uploads import SafeImage, example_images

MODEL = dict(concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY)  # events that run it


class SteerTask:
    """What one app shows of a head's output: subclasses build and fill the output panels."""

    kind = "segmentation"  # the kind of head the app steers
    title = "Steer"
    before_title = "Output"
    help = ""

    def __init__(self, engine: Engine):
        self.eng = engine
        # the panels' components, set while the page is built; the handlers output to them
        self.before_components: list = []
        self.after_components: list = []

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
        return tuple(None for _ in self.before_components)

    def empty_after(self) -> tuple:
        return tuple(None for _ in self.after_components)

    def scopes(self) -> list[str]:
        return list(SCOPES)

    def examples(self) -> list[tuple[str, str]]:
        """Held-out images of the data sets of the bundle's heads of this kind: (path, caption)."""
        out = []
        for name in self.eng.heads_of_kind(self.kind):
            m = self.eng.head_info(name).get("metrics") or {}
            used = int(m.get("n_train_images", 0)) + int(m.get("n_test_images", 0))
            out += adapter.probe_examples(
                m.get("source"),
                self.kind,
                self.n_examples,
                start=self.examples_from(m.get("source") or ""),
                n_used=used,
            )
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


def _check_heads(eng: Engine, task: SteerTask, head: str | None) -> tuple[list, list[str], str]:
    """The heads the page offers (dropdown entries and names) and the one it starts with."""
    choices = head_choices(eng, task.kind)
    if not choices:
        raise adapter.AppSetupError(
            f"bundle {eng.bundle.name} has no {task.kind} head (it has: "
            f"{', '.join(eng.head_names) or 'none'}); fit one with saescope probe "
            f"--bundle {eng.bundle.path} --task {task.kind}"
        )
    names = [n for _, n in choices]
    if head is not None and head not in names:
        raise adapter.AppSetupError(
            f"{head!r} is not a {task.kind} head of bundle "
            f"{eng.bundle.name} (choose from: {', '.join(names)})"
        )
    # default: the head with the most classes (a real multi-class probe before a binary map)
    default_head = head or max(
        names, key=lambda n: (len(eng.head_info(n)["classes"]), -names.index(n))
    )
    return choices, names, default_head


@dataclass
class Page:
    """Every component the events read or write, with the session state."""

    key: gr.State
    cand_state: gr.State
    head_dd: gr.Dropdown
    head_md: gr.Markdown
    upload: gr.Image
    status: gr.Markdown
    picker: gr.HTML
    sel_text: gr.Textbox
    clear_btn: gr.Button
    all_btn: gr.Button
    sel_info: gr.Markdown
    gallery: gr.Gallery
    ood_md: gr.HTML
    attr_md: gr.Markdown
    mode: gr.Radio | None = None
    scope: gr.Radio | None = None
    slot_ids: list | None = None
    sliders: list | None = None
    reset_btn: gr.Button | None = None
    edits_md: gr.Markdown | None = None
    timing_md: gr.Markdown | None = None
    effect_md: gr.Markdown | None = None

    @property
    def state_in(self) -> list:
        return [
            self.key,
            self.head_dd,
            self.sel_text,
            self.mode,
            self.scope,
            *self.slot_ids,
            *self.sliders,
        ]


# ------------------------------------------------------------------------------ layout
def _header(eng: Engine, task: SteerTask) -> str:
    st, b = eng.stats, eng.bundle
    n_live = int((st.frequency > 0).sum()) if st is not None else None
    desc = (
        f"{b.model.get('display_name') or b.model.get('model_id', '')} · SAE on layer {eng.layer} "
        f"({eng.d_sae:,} features" + (f", {n_live:,} alive" if n_live is not None else "") + ")"
    )
    return (
        f"<div class='sae-header'><h1>{html.escape(task.title)}</h1>"
        f"<p class='sae-sub'><b>{html.escape(eng.title)}</b> — {html.escape(desc)}</p></div>"
    )


def _upload_with_examples(task: SteerTask, examples: bool) -> gr.Image:
    upload = SafeImage(
        label="Upload an image",
        type="filepath",
        sources=["upload", "clipboard"],
        height=260,
        elem_id="upload",
    )
    if examples:
        ex = task.examples() + [
            (p, f"photo: {Path(p).stem.split('_')[0]}") for p in example_images()
        ]
        if ex:
            gr.Examples(
                [p for p, _ in ex],
                inputs=upload,
                label="Examples (held-out images of the probe's data set, then photos)",
                examples_per_page=12,
                example_labels=[c for _, c in ex],
                elem_id="examples",
            )
    return upload


def _top(eng: Engine, task: SteerTask, choices: list, default_head: str, examples: bool) -> Page:
    """① image and head, ② the patch picker, the unedited output, ③ candidate features."""
    key = gr.State(None)
    cand_state = gr.State([])
    gr.HTML(_header(eng, task))
    with gr.Accordion("How to read this page", open=False):
        gr.Markdown(task.help)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=260):
            gr.Markdown("### ① Image and head")
            head_dd = gr.Dropdown(
                choices,
                value=default_head,
                label="Frozen head to read",
                elem_id="head",
                interactive=True,
            )
            head_md = gr.Markdown(
                head_markdown(eng, default_head), elem_id="head-info", elem_classes="sae-note"
            )
            upload = _upload_with_examples(task, examples)
            status = gr.Markdown(elem_id="status")
        with gr.Column(scale=4, min_width=260):
            gr.Markdown("### ② Select patches")
            picker, sel_text, clear_btn, all_btn, sel_info = patch_picker_controls()
        with gr.Column(scale=4, min_width=260):
            gr.Markdown(f"### {task.before_title}")
            task.before_components = task.before_panel()
            ood_md = gr.HTML(elem_id="ood")
    gr.Markdown("### ③ Candidate features of the selection", elem_classes="sae-section")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            gr.Markdown(
                "**Features that fire most**: the highest mean activation over the selected "
                "patches (the whole image when none is selected). Big tile: where it fires on "
                "your image; small tiles: its top dataset images. Caption: id · mean "
                "activation · share of patches where it fires. Click a card to put it on a "
                "free slider.",
                elem_classes="sae-note",
            )
            gallery = ServedGallery(
                show_label=False,
                columns=5,
                height=480,
                allow_preview=False,
                format="jpeg",
                elem_id="candidates",
                object_fit="contain",
            )
        with gr.Column(scale=2, min_width=260):
            attr_md = gr.Markdown(elem_id="attribution")
    return Page(
        key,
        cand_state,
        head_dd,
        head_md,
        upload,
        status,
        picker,
        sel_text,
        clear_btn,
        all_btn,
        sel_info,
        gallery,
        ood_md,
        attr_md,
    )


def _slots(d_sae: int) -> tuple[list, list]:
    """The feature-id boxes and their sliders, one row each."""
    slot_ids, sliders = [], []
    for j in range(N_SLOTS):
        with gr.Row(elem_classes="steer-slot"):
            slot_ids.append(
                RawNumber(
                    value=None,
                    precision=0,
                    minimum=0,
                    maximum=d_sae - 1,
                    label="feature",
                    elem_id=f"slot-{j}-feature",
                    scale=1,
                    min_width=90,
                )
            )
            sliders.append(
                RawSlider(
                    0,
                    SLIDER_MAX,
                    1.0,
                    step=0.05,
                    label=slot_label(None),
                    elem_id=f"slot-{j}",
                    scale=4,
                )
            )
    return slot_ids, sliders


def _steer_row(p: Page, eng: Engine, task: SteerTask) -> None:
    """④ the sliders and their options, and the edited output (filled into ``p``)."""
    scopes = task.scopes()
    gr.Markdown("### ④ Steer: suppress or amplify features", elem_classes="sae-section")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300):
            p.mode = gr.Radio(
                list(MODES.values()), value=MODES["scale"], label="Sliders", elem_id="mode"
            )
            p.scope = gr.Radio(scopes, value=scopes[0], label="Apply on", elem_id="scope")
            p.slot_ids, p.sliders = _slots(eng.d_sae)
            gr.Markdown(
                "0 = suppress · 1 = unchanged · 5 = amplify five-fold. In *set* mode "
                "the feature is set to slider × its mean activation on the chosen "
                "patches (its typical activation where it is silent there), which also "
                "adds it where it did not fire; 1 still means *leave it alone*.",
                elem_classes="sae-note",
            )
            p.reset_btn = gr.Button("Reset sliders", size="sm", elem_id="reset")
            p.edits_md = gr.Markdown(elem_id="edits")
            p.timing_md = gr.Markdown(elem_id="timing")
        with gr.Column(scale=8):
            task.after_components = task.after_panel()
            p.effect_md = gr.Markdown(elem_id="effect")


# ------------------------------------------------------------------------------ wiring
def _wire_image(h: Steering, p: Page, after_out: list) -> None:
    """Upload / head choice -> outputs; picker, Clear, Select all -> candidates and sliders."""
    task = h.task
    slots = [*p.slot_ids, *p.sliders]
    p.upload.change(
        h.on_image,
        [p.upload, p.head_dd, p.mode, p.scope, *slots],
        [
            p.upload,
            p.key,
            p.status,
            p.picker,
            p.sel_text,
            p.sel_info,
            *task.before_components,
            p.ood_md,
            p.gallery,
            p.attr_md,
            p.cand_state,
            *slots,
            *after_out,
        ],
        api_name="analyse",
        **MODEL,
    )
    p.head_dd.change(
        h.on_head,
        p.state_in,
        [p.head_md, *task.before_components, p.ood_md, *after_out],
        api_name="head",
        **MODEL,
    )
    sel_out = [p.sel_info, p.gallery, p.attr_md, p.cand_state, *slots, *after_out]
    p.picker.pick(on_pick, None, p.sel_text, api_visibility="private", queue=False).then(
        h.on_select, p.state_in, sel_out, api_visibility="private", **MODEL
    )
    select_api = gr.Button(visible=False)  # the same, from the API ("r,c;r,c" or "all")
    select_api.click(h.on_select, p.state_in, sel_out, api_name="select", **MODEL)
    p.clear_btn.click(h.on_clear, p.key, [p.picker, p.sel_text], api_visibility="private").then(
        h.on_select, p.state_in, sel_out, api_visibility="private", **MODEL
    )
    p.all_btn.click(h.on_all, p.key, [p.picker, p.sel_text], api_visibility="private").then(
        h.on_select, p.state_in, sel_out, api_visibility="private", **MODEL
    )


def _wire_sliders(h: Steering, p: Page, after_out: list) -> None:
    """Sliders, slot ids, mode, scope, Reset and candidate clicks -> the edited output."""
    state_in, steer_out = p.state_in, after_out
    slots = [*p.slot_ids, *p.sliders]
    steer_api = gr.Button(visible=False)
    steer_api.click(h.on_steer, state_in, steer_out, api_name="steer", **MODEL)
    for s in p.sliders:
        # every move while dragging; the queue keeps only the latest pending one
        s.input(
            h.on_steer,
            state_in,
            steer_out,
            api_visibility="private",
            trigger_mode="always_last",
            **MODEL,
        )
    for ev in [e for n in p.slot_ids for e in (n.submit, n.blur)]:  # Enter, or leaving the box
        ev(h.on_slot, slots, p.sliders, api_visibility="private").then(
            h.on_steer, state_in, steer_out, api_visibility="private", **MODEL
        )
    for r in (p.mode, p.scope):
        r.input(h.on_steer, state_in, steer_out, api_visibility="private", **MODEL)
    p.reset_btn.click(h.on_reset, state_in, [*slots, *after_out], api_name="reset", **MODEL)
    p.gallery.select(h.on_card, [p.cand_state, *state_in], slots, api_visibility="private").then(
        h.on_steer, state_in, steer_out, api_visibility="private", **MODEL
    )


def build_steer_app(
    task_cls: type[SteerTask],
    bundle=None,
    *,
    head: str | None = None,
    engine: Engine | None = None,
    examples: bool = True,
    warm_up: bool = False,
    title: str | None = None,
) -> gr.Blocks:
    """The page for one :class:`SteerTask` on ``bundle`` (path, Hub id, Bundle, None = default)."""
    eng = engine or Engine(bundle)
    task = task_cls(eng)
    choices, names, default_head = _check_heads(eng, task, head)
    if warm_up:
        eng.warm_up()
        eng.head_info(default_head)
        eng.head_reference(default_head)  # its OOD reference: not on the first visitor's time
    h = Steering(eng, task, names)
    with gr.Blocks(
        title=title or f"saescope · {task.title} · {eng.title}", analytics_enabled=False
    ) as demo:
        p = _top(eng, task, choices, default_head, examples)
        _steer_row(p, eng, task)
        after_out = [*task.after_components, p.edits_md, p.effect_md, p.timing_md]
        _wire_image(h, p, after_out)
        _wire_sliders(h, p, after_out)
    demo.engine = eng  # for tests and benchmarks
    demo.task = task
    demo.default_head = default_head
    return demo


def steer_app_parser(task: type, prog: str, description: str):
    """The command line of a steering app: the shared options plus ``--head``."""
    p = app_parser(prog, description)
    p.add_argument(
        "--head",
        default=os.environ.get("SAESCOPE_HEAD") or None,
        help=f"{task.kind} head to start with (default: the one with most classes)",
    )
    return p


def steer_app_main(task: type, args) -> int:
    """Build ``task``'s app (warm) from parsed arguments and serve it."""
    return serve(
        lambda: build_steer_app(
            task, args.bundle, head=args.head, examples=args.examples, warm_up=True
        ),
        args,
        task.title.lower(),
        loading_line(args.bundle),
    )


__all__ = [
    "MODES",
    "N_CANDIDATES",
    "N_SLOTS",
    "SCOPES",
    "SCOPE_CLS",
    "SteerTask",
    "build_steer_app",
    "head_choices",
    "head_markdown",
    "steer_app_parser",
    "steer_app_main",
]
