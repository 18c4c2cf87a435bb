"""What the steering apps do when the user acts: one method per Gradio event.

:class:`Steering` holds the engine, the :class:`~saescope.apps.steerapp.SteerTask` and the heads
the page offers, so that the page (:mod:`saescope.apps.steerapp`) only creates components and
wires them to these methods. Method names are the events' default API names: keep them stable.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

import gradio as gr

from saescope.apps import panels
from saescope.apps.engine import Analysis, Engine, SessionExpired, slider_edits
from saescope.apps.picker import (
    describe_selection,
    parse_selection,
    picker_all,
    picker_cleared,
    picker_html,
)
from saescope.apps.text import error_box
from saescope.apps.uploads import try_upload
from saescope.apps.validate import BadInput, number_between, optional_feature_id

N_SLOTS = 5  # feature sliders
N_CANDIDATES = 10  # candidate feature cards
SLIDER_MAX = 5.0
MODES = {"scale": "scale the feature (× slider)", "set": "set it to slider × its activation here"}
SCOPES = ["selected patches", "all patches"]
SCOPE_CLS = "all patches + CLS token"


def slot_label(feature: int | None) -> str:
    return "empty slot (pick a candidate)" if feature is None else f"feature #{feature}"


def head_markdown(eng: Engine, name: str) -> str:
    info = eng.head_info(name)
    classes = info.get("classes") or []
    shown = ", ".join(str(c) for c in classes[:12]) + (" …" if len(classes) > 12 else "")
    src = (info.get("metrics") or {}).get("source")
    return (
        f"**{html.escape(name)}**: {info['kind']} head, {len(classes)} classes "
        f"({html.escape(shown)})."
        f" {panels.metrics_line(info)}"
        + (f"; fitted on {html.escape(str(src).split('?')[0])}." if src else ".")
    )


ATTR_NOTE = (
    "<span class='sae-note'>Ranked by their estimated effect on the head (gradient × activation "
    "through the rest of the model, one backward pass; the first-order change of {objective} "
    "if the feature were switched off on the selection). The top {n_conf} were really switched "
    "off and measured. These fill the sliders; the cards above are the features that fire most, "
    "which often move nothing.</span>"
)


def _measured(kind: str, metrics: dict) -> str:
    if kind == "classification":
        flip = " (prediction flips)" if metrics.get("flipped") else ""
        return f"p(predicted) {metrics['prob_change']:+.3f}{flip}"
    return f"{metrics['changed_fraction']:.1%} of pixels change class"


def attribution_markdown(res, head: str, where: str) -> str:
    """The "features that matter" table: id · activation · estimated and measured effect."""
    if res is None:
        return "_No head to attribute to._"
    if not res.ranking:
        return "_No feature fires on the selection._"
    measured = {a.feature: _measured(res.kind, a.metrics) for a in res.confirmed}
    lines = [
        f"**Features that matter** for *{html.escape(head)}* on {where} "
        f"({res.seconds.get('total_s', 0.0) * 1000:.0f} ms)",
        "",
        "| feature | activation | est. effect | measured when switched off |",
        "|---|---|---|---|",
    ]
    for s in res.ranking:
        lines.append(
            f"| #{s.feature} | {s.activation:.2f} | {s.estimate:+.3g} | "
            f"{measured.get(s.feature, '–')} |"
        )
    lines += ["", ATTR_NOTE.format(objective=html.escape(res.objective), n_conf=len(measured))]
    return "\n".join(lines)


def edits_markdown(edits, scope: str, n_sel: int) -> str:
    if not edits:
        return "_No edits: every slider is at 1, the model runs unchanged._"
    where = (
        f"the {n_sel} selected patches"
        if scope == SCOPES[0] and n_sel
        else "all patches" + (" and the CLS token" if scope == SCOPE_CLS else "")
    )
    items = ", ".join(
        f"**#{e.feature}** "
        + (
            "off"
            if e.scale == 0
            else f"× {e.scale:g}"
            if e.scale is not None
            else f"= {e.value:.2f}"
        )
        for e in edits
    )
    return f"Active edits on {where}: {items}"


def slot_updates(ids: list[int | None], vals: list[float]) -> list:
    ups = [gr.update(value=f) for f in ids]
    ups += [gr.update(value=v, label=slot_label(f)) for f, v in zip(ids, vals)]
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


def _mode(label: str) -> str:
    return "set" if label == MODES["set"] else "scale"


def _patches(an: Analysis, sel: set, scope: str):
    return None if (scope != SCOPES[0] or not sel) else sel


class Steering:
    """One steering page's state (engine, task, offered heads) and its event handlers."""

    def __init__(self, eng: Engine, task, names: list[str]):
        self.eng = eng
        self.task = task
        self.names = names
        self.st = eng.stats

    # ------------------------------------------------------------------ helpers
    def _analysis(self, key) -> Analysis:
        try:
            return self.eng.get(key)
        except SessionExpired as err:
            raise gr.Error(str(err), title="No image") from None

    def _head(self, name) -> str:
        if name not in self.names:
            raise gr.Error(
                f"unknown head {name!r}; choose one of {', '.join(self.names)}",
                title="Unknown head",
                print_exception=False,
            )
        return name

    def _slots(self, args: Sequence[Any]) -> tuple[list[int | None], list[float]]:
        """The slots' feature ids (``None``: an empty slot) and slider values, checked."""
        if len(args) != 2 * N_SLOTS:
            raise BadInput(f"expected {N_SLOTS} slot ids and {N_SLOTS} slider values")
        d_sae = self.eng.d_sae
        ids = [
            optional_feature_id(v, d_sae, f"slot {j + 1} feature id")
            for j, v in enumerate(args[:N_SLOTS])
        ]
        vals = [
            number_between(v, f"slot {j + 1} slider", 0.0, SLIDER_MAX)
            for j, v in enumerate(args[N_SLOTS:])
        ]
        return ids, vals

    def _edits(self, an: Analysis, ids, vals, mode: str, patches):
        st = self.st
        values: dict[int, float] = {}
        for f, v in zip(ids, vals):
            if f is not None and float(v) != 1.0:
                values[f] = float(v)  # one edit per feature: the later slot wins
        reference = None
        if mode == "set":
            mask = an.mask(patches)
            reference = {}
            for f in values:
                act = an.feature_codes(f).numpy()
                act = act if mask is None else act[mask]
                on = act[act > 0]
                typical = (
                    float(st.mean_active[f]) if st is not None and st.mean_active[f] > 0 else 1.0
                )
                reference[f] = float(on.mean()) if len(on) else typical
        return slider_edits(values, "set" if mode == "set" else "scale", reference)

    def cards(self, an: Analysis, sel: set):
        return panels.top_feature_cards(self.eng, an, sel, N_CANDIDATES)

    def attribution(self, an: Analysis, head: str, sel: set, scope: str, cands: list[int]):
        """Slider candidates by causal effect on ``head`` and their table (markdown).

        The selection (the whole image when empty) is attributed; with the CLS scope the CLS
        token too, as the sliders then edit it. Falls back to the activation order ``cands``
        where nothing can be attributed."""
        kinds = "cls,patch" if scope == SCOPE_CLS else "patch"
        res = self.eng.attribute(an, sel, head=head, kinds=kinds, top=N_CANDIDATES)
        where = f"the {len(sel)} selected patches" if sel else "all patches"
        if scope == SCOPE_CLS:
            where += " and the CLS token"
        feats = res.features(N_CANDIDATES) if res is not None and res.ranking else list(cands)
        return feats, attribution_markdown(res, head, where)

    def ood_markdown(self, an: Analysis, head: str) -> str:
        """A warning next to the prediction when the image is unlike the data the head was
        fitted on (its own reference, :mod:`apps.head_ood`) or the data the SAE was fitted on
        (the bundle's calibrated OOD suite and threshold); one quiet line when it is neither."""
        warn, ok = [], []
        h = self.eng.head_ood(an, head)
        if h is not None:
            pct = f"{h.tpr * 100:.0f}th percentile"
            if h.is_ood:
                warn.append(
                    f"unlike the data the <b>{html.escape(head)}</b> head was "
                    f"fitted on (OOD score {h.score:.2f}, above the {pct} of its training "
                    f"images, {h.threshold:.2f}; reference: {html.escape(h.source)})"
                )
            else:
                ok.append(f"like the {html.escape(head)} head's data (score {h.score:.2f})")
        rep = self.eng.ood(an)
        if rep is not None:
            suite = self.eng.ood_suite()
            src = html.escape(str((suite.meta or {}).get("source", "the bundle's data")))
            if rep.is_ood:
                warn.append(
                    f"unlike the data the SAE was fitted on (OOD score {rep.score:.2f}, "
                    f"above the {suite.tpr * 100:.0f}th percentile of in-distribution images, "
                    f"{rep.threshold:.2f}; reference: {src})"
                )
            else:
                ok.append(f"like the SAE's data ({rep.percentile:.0f}th percentile)")
        if warn:
            return (
                "<div class='steer-callout changed' id='ood-warning'>⚠ This image is "
                + "; and ".join(warn)
                + ": treat the prediction with caution.</div>"
            )
        if ok:
            return f"<span class='sae-note' id='ood-ok'>In distribution: {'; '.join(ok)}.</span>"
        return ""

    def status_md(self, an: Analysis) -> str:
        w, h = an.size
        t = an.timings
        return (
            f"**{w}×{h}** image → {an.grid[0]}×{an.grid[1]} patches; the SAE explains "
            f"**{1 - an.fvu:.0%}** of the layer-{self.eng.layer} variance on it "
            f"<span class='sae-note'>(model {t['forward_s'] + t['head_s']:.2f} s)</span>"
        )

    def steer_outputs(self, an: Analysis, head: str, sel: set, scope: str, mode: str, ids, vals):
        """Edited output panels, edits line and timings for the current sliders."""
        eng = self.eng
        t0 = time.perf_counter()
        patches = _patches(an, sel, scope)
        edits = self._edits(an, ids, vals, mode, patches)
        kinds = "cls,patch" if scope == SCOPE_CLS else "patch"
        out = eng.steer(an, edits, patches, head=head, kinds=kinds)
        t1 = time.perf_counter()
        values, summary = self.task.render_after(an, head, out)
        t2 = time.perf_counter()
        timing = (
            f"<span class='sae-note'>steering {out.seconds * 1000:.0f} ms (blocks "
            f"{eng.layer + 1}.. + head) · rendering {(t2 - t1) * 1000:.0f} ms · total "
            f"{(t2 - t0) * 1000:.0f} ms</span>"
        )
        effect = summary
        if edits:
            effect += (
                f"\n\nThe edits moved the edited layer-{eng.layer} tokens by "
                f"**{out.token_change:.1%}** and the final patch tokens by "
                f"**{out.final_change:.1%}** on average."
            )
        else:
            effect += "\n\n_No edits: after = before exactly (the SAE's error term is added back)._"
        return (*values, edits_markdown(edits, scope, len(sel)), effect, timing)

    # ------------------------------------------------------------------ events
    def on_image(self, upload, head, mode, scope, *slots):
        self._slots(slots)  # refilled from the new image's candidates, but never garbage
        task = self.task
        n_after = len(task.after_components) + 3
        blank_slots = slot_updates([None] * N_SLOTS, [1.0] * N_SLOTS)
        if upload is None:  # cleared (keeps an error message from a refused upload visible)
            return (
                gr.update(),
                None,
                gr.update(),
                picker_html(None, None),
                "",
                "",
                *task.empty_before(),
                "",
                [],
                "",
                [],
                *blank_slots,
                *([gr.update()] * n_after),
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
                *task.empty_before(),
                "",
                [],
                "",
                [],
                *blank_slots,
                *task.empty_after(),
                "",
                "",
                "",
            )
        head = self._head(head)
        an = self.eng.analyse(image)
        before = self.eng.head_before(an, head)
        items, cands = self.cards(an, set())
        feats, attr_md = self.attribution(an, head, set(), scope, cands)
        ids, vals = refill([None] * N_SLOTS, [1.0] * N_SLOTS, feats)
        after = self.steer_outputs(an, head, set(), scope, _mode(mode), ids, vals)
        return (
            gr.update(),
            an.key,
            self.status_md(an),
            picker_html(an.view, an.grid, ()),
            "",
            describe_selection(set(), an.grid),
            *task.render_before(an, head, before),
            self.ood_markdown(an, head),
            items,
            attr_md,
            cands,
            *slot_updates(ids, vals),
            *after,
        )

    def on_head(self, key, head, sel_text, mode, scope, *slots):
        task = self.task
        head = self._head(head)
        ids, vals = self._slots(slots)
        md = head_markdown(self.eng, head)
        if not key:
            return (md, *task.empty_before(), "", *task.empty_after(), "", "", "")
        an = self._analysis(key)
        sel = parse_selection(sel_text, an.grid)
        return (
            md,
            *task.render_before(an, head, self.eng.head_before(an, head)),
            self.ood_markdown(an, head),
            *self.steer_outputs(an, head, sel, scope, _mode(mode), ids, vals),
        )

    def on_select(self, key, head, sel_text, mode, scope, *slots):
        head = self._head(head)
        ids, vals = self._slots(slots)
        an = self._analysis(key)
        sel = parse_selection(sel_text, an.grid)
        items, cands = self.cards(an, sel)
        feats, attr_md = self.attribution(an, head, sel, scope, cands)
        ids, vals = refill(ids, vals, feats)
        return (
            describe_selection(sel, an.grid),
            items,
            attr_md,
            cands,
            *slot_updates(ids, vals),
            *self.steer_outputs(an, head, sel, scope, _mode(mode), ids, vals),
        )

    def on_steer(self, key, head, sel_text, mode, scope, *slots):
        head = self._head(head)
        ids, vals = self._slots(slots)
        an = self._analysis(key)
        sel = parse_selection(sel_text, an.grid)
        return self.steer_outputs(an, head, sel, scope, _mode(mode), ids, vals)

    def on_slot(self, *slots):
        """A feature id typed into a slot: the slider's label follows."""
        ids, _ = self._slots(slots)
        return [gr.update(label=slot_label(f)) for f in ids]

    def on_reset(self, key, head, sel_text, mode, scope, *slots):
        ids, _ = self._slots(slots)
        vals = [1.0] * N_SLOTS
        if not key:
            return (*slot_updates(ids, vals), *self.task.empty_after(), "", "", "")
        an = self._analysis(key)
        sel = parse_selection(sel_text, an.grid)
        return (
            *slot_updates(ids, vals),
            *self.steer_outputs(an, self._head(head), sel, scope, _mode(mode), ids, vals),
        )

    def on_card(self, cands, key, head, sel_text, mode, scope, evt: gr.SelectData, *slots):
        """A click on a candidate card puts that feature on the first free slot (slider at 1).

        ``evt`` must stay a positional parameter before ``*slots``: Gradio injects event data
        only into positional parameters, by annotation (a keyword-only one is never filled)."""
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not cands or i is None or i >= len(cands):
            raise gr.Error("That card is no longer shown; try again.")
        f = int(cands[i])
        ids, vals = self._slots(slots)
        if f not in ids:
            free = [j for j, v in enumerate(vals) if v == 1.0]
            j = free[0] if free else N_SLOTS - 1
            ids[j], vals[j] = f, 1.0
        return slot_updates(ids, vals)

    def on_clear(self, key):
        return picker_cleared(self._analysis(key))

    def on_all(self, key):
        return picker_all(self._analysis(key))


__all__ = [
    "Steering",
    "N_SLOTS",
    "N_CANDIDATES",
    "SLIDER_MAX",
    "MODES",
    "SCOPES",
    "SCOPE_CLS",
    "slot_label",
    "attribution_markdown",
    "head_markdown",
    "edits_markdown",
]
