"""The patch picker: the model's view of the image with its patch grid.

Click a patch to toggle it, or press and drag to select a rectangle (:data:`PICKER_JS`); the
selection travels between the browser and Python as text (``"r,c;r,c"``), because a hidden
textbox is the one channel every Gradio event can read and write.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable

import gradio as gr
from PIL import Image


def parse_selection(text: str | None, grid: tuple[int, int] | None = None) -> set[tuple[int, int]]:
    """``"r,c;r,c"`` -> {(r, c)}; ``"all"`` -> every patch of ``grid``; ignores junk."""
    out: set[tuple[int, int]] = set()
    if not text:
        return out
    text = text.strip()
    if text.lower() == "all":
        if grid is None:
            return out
        return {(r, c) for r in range(grid[0]) for c in range(grid[1])}
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        try:
            r, c = (int(v) for v in part.split(","))
        except ValueError:
            continue
        if grid is None or (0 <= r < grid[0] and 0 <= c < grid[1]):
            out.add((r, c))
    return out


def format_selection(sel: Iterable[tuple[int, int]]) -> str:
    return ";".join(f"{r},{c}" for r, c in sorted(sel))


def describe_selection(sel: set[tuple[int, int]], grid: tuple[int, int]) -> str:
    n, total = len(sel), grid[0] * grid[1]
    if n == 0:
        return f"No patches selected: showing the whole image ({total} patches)."
    return f"{n} of {total} patches selected."


def to_data_url(image: Image.Image, fmt: str = "JPEG", quality: int = 88) -> str:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=quality)
    mime = "jpeg" if fmt.upper() == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


_picker_nonce = 0


def picker_html(
    view: Image.Image | None,
    grid: tuple[int, int] | None,
    selected: Iterable[tuple[int, int]] = (),
    heat: Image.Image | None = None,
) -> str:
    """The patch picker: the model's view with its patch grid; selected cells highlighted.

    Each render carries a fresh nonce so that re-rendering the same selection still replaces
    cells the user changed in the browser.
    """
    global _picker_nonce
    _picker_nonce += 1
    if view is None or grid is None:
        return (
            f'<div class="pp-empty" data-nonce="{_picker_nonce}">Upload an image '
            "(or click an example) to see its patch grid here.</div>"
        )
    rows, cols = grid
    sel = {(int(r), int(c)) for r, c in selected}
    cells = "".join(
        f'<div class="pp-cell{" on" if (i // cols, i % cols) in sel else ""}" data-i="{i}"></div>'
        for i in range(rows * cols)
    )
    src = to_data_url(heat if heat is not None else view)
    return (
        f'<div class="pp" data-rows="{rows}" data-cols="{cols}" data-nonce="{_picker_nonce}" '
        f'style="aspect-ratio:{view.width}/{view.height}">'
        f'<img src="{src}" alt="the image as the model sees it" draggable="false"/>'
        f'<div class="pp-grid" style="grid-template-columns:repeat({cols},1fr);'
        f'grid-template-rows:repeat({rows},1fr)">{cells}</div></div>'
        f'<div class="pp-count">{len(sel)} selected</div>'
    )


# Click toggles a patch; a drag selects the rectangle between the press and the pointer (or
# removes it, when the drag starts on a selected patch), previewed live. On release the selection
# goes to Python through the custom 'pick' event.
PICKER_JS = (
    r"""
let dragging = false, mode = true, start = null, snapshot = null, last = null;
function root() { return element.querySelector('.pp'); }
function cellAt(e, clamp) {
  const g = element.querySelector('.pp-grid'); if (!g) return null;
  const box = g.getBoundingClientRect(), r0 = root();
  const rows = +r0.dataset.rows, cols = +r0.dataset.cols;
  let c = Math.floor((e.clientX - box.left) / box.width * cols);
  let r = Math.floor((e.clientY - box.top) / box.height * rows);
  if (clamp) { c = Math.max(0, Math.min(cols - 1, c)); r = Math.max(0, Math.min(rows - 1, r)); }
  else if (r < 0 || c < 0 || r >= rows || c >= cols) return null;
  return [r, c];
}
function cells() { return element.querySelectorAll('.pp-cell'); }
function apply(end) {
  const cols = +root().dataset.cols, all = cells();
  const r0 = Math.min(start[0], end[0]), r1 = Math.max(start[0], end[0]);
  const c0 = Math.min(start[1], end[1]), c1 = Math.max(start[1], end[1]);
  all.forEach((cell, i) => {
    const r = Math.floor(i / cols), c = i % cols;
    const inside = r >= r0 && r <= r1 && c >= c0 && c <= c1;
    cell.classList.toggle('on', inside ? mode : snapshot[i]);
  });
  const n = element.querySelectorAll('.pp-cell.on').length;
  const el = element.querySelector('.pp-count'); if (el) el.textContent = n + ' selected';
}
function send() {
  const cols = +root().dataset.cols, sel = [];
  cells().forEach((c, i) => { if (c.classList.contains('on')) """
    r"""sel.push(Math.floor(i / cols) + ',' + (i % cols)); });
  trigger('pick', {selection: sel.join(';')});
}
element.addEventListener('pointerdown', e => {
  if (!root()) return;
  const rc = cellAt(e, false); if (!rc) return;
  e.preventDefault();
  const cols = +root().dataset.cols;
  snapshot = Array.from(cells(), c => c.classList.contains('on'));
  mode = !snapshot[rc[0] * cols + rc[1]];
  dragging = true; start = rc; last = rc;
  apply(rc);
});
element.addEventListener('pointermove', e => {
  if (!dragging) return;
  const rc = cellAt(e, true);
  if (rc && (rc[0] !== last[0] || rc[1] !== last[1])) { last = rc; apply(rc); }
});
window.addEventListener('pointerup', () => {
  if (!dragging) return;
  dragging = false;
  send();
});
element.addEventListener('dragstart', e => e.preventDefault());
"""
)

PICKER_CSS = (
    """
.pp { position: relative; width: 100%; max-width: 448px; margin: 0 auto; user-select: none;
      touch-action: none; cursor: crosshair; border-radius: 6px; overflow: hidden; }
.pp img { display: block; width: 100%; height: 100%; object-fit: fill; pointer-events: none; }
.pp-grid { position: absolute; inset: 0; display: grid; }
.pp-cell { border-right: 1px solid rgba(255,255,255,.28); """
    """border-bottom: 1px solid rgba(255,255,255,.28); }
.pp-cell:hover { background: rgba(255,255,255,.22); }
.pp-cell.on { background: rgba(0, 200, 255, .38); """
    """box-shadow: inset 0 0 0 2px rgba(0, 230, 255, .95); }
.pp-count { text-align: center; font-size: .85em; opacity: .75; margin-top: 4px; }
.pp-empty { display: flex; align-items: center; justify-content: center; min-height: 260px;
            border: 2px dashed rgba(127,127,127,.35); border-radius: 8px; opacity: .7;
            text-align: center; padding: 1em; }
"""
)


def outline_patches(
    image: Image.Image,
    grid: tuple[int, int],
    patches: Iterable[tuple[int, int]],
    colour=(0, 230, 255),
) -> Image.Image:
    """Draw the outline of selected patches on an image (for static panels)."""
    from PIL import ImageDraw

    patches = list(patches)
    if not patches:
        return image
    out = image.copy()
    draw = ImageDraw.Draw(out)
    rows, cols = grid
    w, h = out.size
    for r, c in patches:
        x0, y0 = c * w / cols, r * h / rows
        draw.rectangle([x0, y0, x0 + w / cols - 1, y0 + h / rows - 1], outline=colour, width=2)
    return out


def patch_picker_controls() -> tuple:
    """The patch picker, its hidden selection text, Clear / Select-all buttons and info line,
    created in the current Gradio layout context (the elem_ids are what PICKER_JS and the browser
    tests use). Returns ``(picker, sel_text, clear_btn, all_btn, sel_info)``."""
    picker = gr.HTML(
        picker_html(None, None), js_on_load=PICKER_JS, apply_default_css=False, elem_id="picker"
    )
    sel_text = gr.Textbox(visible=False, elem_id="selection")
    with gr.Row():
        clear_btn = gr.Button("Clear selection", size="sm", elem_id="clear-sel")
        all_btn = gr.Button("Select all", size="sm", elem_id="select-all")
    sel_info = gr.Markdown(elem_id="sel-info")
    return picker, sel_text, clear_btn, all_btn, sel_info


def picked_selection(evt) -> str:
    """The selection text a picker event carries (``"r,c;r,c"``, empty when none)."""
    return getattr(evt, "selection", "") or ""


def on_pick(evt: gr.EventData) -> str:
    """The picker's ``pick`` event handler: its selection text, for the hidden textbox."""
    return picked_selection(evt)


def pick_from(items, evt: gr.SelectData) -> int:
    """Gallery ``select`` handler: the feature id behind the clicked item of ``items``."""
    i = evt.index if isinstance(evt.index, int) else evt.index[0]
    if not items or i is None or i >= len(items):
        raise gr.Error("That item is no longer shown; try again.")
    return int(items[i])


def picker_cleared(an) -> tuple[str, str]:
    """Picker HTML and selection text with nothing selected, for analysed image ``an``."""
    return picker_html(an.view, an.grid, ()), ""


def picker_all(an) -> tuple[str, str]:
    """Picker HTML and selection text with every patch of ``an`` selected."""
    sel = parse_selection("all", an.grid)
    return picker_html(an.view, an.grid, sel), format_selection(sel)


__all__ = [
    "parse_selection",
    "format_selection",
    "describe_selection",
    "to_data_url",
    "picker_html",
    "PICKER_JS",
    "PICKER_CSS",
    "outline_patches",
    "patch_picker_controls",
    "picked_selection",
    "picker_cleared",
    "picker_all",
    "on_pick",
    "pick_from",
]
