"""UI pieces shared by the feature browser and the comparison app.

- :class:`SafeImage`: an image upload whose file reaches *our* decoder untouched, so corrupt
  files, non-images and decompression bombs become one clear message (:func:`read_upload`);
- the patch picker: the model's view of the image with its patch grid; click or drag to select
  patches (:func:`picker_html`, ``PICKER_JS``); the selection travels as text (``"r,c;r,c"``);
- heat-map panels, histogram / scatter plots, feature cards, help text, theme and CSS;
- :func:`launch`: queue on, the local URL printed, offline-friendly defaults.
"""

from __future__ import annotations

import base64
import html
import io
import os
import socket
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from saescope.core.images import ImageError, load_image  # noqa: E402

APP_MAX_PIXELS = 40_000_000  # decompression-bomb cap for uploads (about 7300 x 5500)
APP_MIN_SIDE = 16
MAX_FILE_SIZE = "40mb"

# ------------------------------------------------------------------------------ uploads


def _raw_upload(payload):
    """An image payload -> the uploaded file's path (or a pasted data URL's bytes), undecoded."""
    if payload is None:
        return None
    url = getattr(payload, "url", None)
    if url and url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[1])
        except Exception:
            return b""
    return getattr(payload, "path", None)


def _define_safe_image():
    # Gradio writes a ``.pyi`` stub next to the source file of every component subclass it sees
    # defined; that would litter (or fail on) an installed package, so the hook is off while
    # this one class is created. A subclass, not an instance override: gradio re-creates
    # components from their class when an event updates them.
    import gradio.component_meta as meta

    hook = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        class SafeImage(gr.Image):
            """A ``gr.Image`` upload that hands the raw file to the app instead of decoding it.

            Gradio's own preprocessing opens the file with PIL before the app sees it, so a
            corrupt file or a decompression bomb would fail there with a generic error. This one
            returns the file path (or the bytes of a pasted/webcam data URL) and the app decodes
            it with :func:`core.images.load_image`.
            """

            def preprocess(self, payload):  # type: ignore[override]
                return _raw_upload(payload)

            def get_block_name(self) -> str:
                return "image"
    finally:
        meta.create_or_modify_pyi = hook
    return SafeImage


SafeImage = _define_safe_image()


def read_upload(src: Any, name: str | None = None) -> Image.Image:
    """Decode an upload (path, bytes, PIL, array) into RGB, or raise ``gr.Error`` that says why."""
    if src is None:
        raise gr.Error("Upload an image first (or pick one of the examples).", title="No image")
    label = name or (Path(src).name if isinstance(src, (str, os.PathLike)) else "the upload")
    try:
        return load_image(src, max_pixels=APP_MAX_PIXELS, min_side=APP_MIN_SIDE, name=label)
    except ImageError as err:
        raise gr.Error(upload_message(err), title="Cannot use this image", print_exception=False) from None
    except Exception as err:  # anything else a decoder may throw: still a message, no traceback
        raise gr.Error(f"{label}: could not be read as an image ({type(err).__name__}).",
                       title="Cannot use this image", print_exception=False) from None


def try_upload(src: Any) -> tuple[Image.Image | None, str | None]:
    """``(image, None)``, or ``(None, message)`` after showing the message as a warning toast.

    Apps use this on upload so that a bad file leaves a clear message (toast + status line) and a
    cleared upload box, instead of error badges on every output.
    """
    try:
        return read_upload(src), None
    except gr.Error as err:
        gr.Warning(err.message, title="Cannot use this image")
        return None, err.message


def upload_message(err: Exception) -> str:
    msg = str(err)
    if "decompression-bomb" in msg or "decompression bomb" in msg:
        msg += f". Please upload an image below {APP_MAX_PIXELS / 1e6:.0f} megapixels."
    elif "not an image" in msg:
        msg += ". Please upload a PNG, JPEG, WebP, GIF, BMP or TIFF picture."
    elif "too small" in msg:
        msg += "."
    return msg


def example_images(names: Iterable[str] = ("chelsea", "astronaut", "coffee", "rocket",
                                          "motorcycle_left")) -> list[str]:
    """The packaged scikit-image photos saved once as JPEG files (gradio examples need files)."""
    from saescope.core.paths import cache_dir

    folder = cache_dir("app_examples")
    out = []
    for name in names:
        path = folder / f"{name}.jpg"
        if not path.is_file():
            try:
                import skimage.data as data

                arr = getattr(data, "stereo_motorcycle")()[0] if name == "motorcycle_left" \
                    else getattr(data, name)()
                img = load_image(arr)
                img.thumbnail((640, 640))
                tmp = path.with_suffix(".tmp.jpg")
                img.save(tmp, "JPEG", quality=90)
                os.replace(tmp, path)
            except Exception:
                continue
        out.append(str(path))
    return out


# ------------------------------------------------------------------------------ selection
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


# ------------------------------------------------------------------------------ images
def to_data_url(image: Image.Image, fmt: str = "JPEG", quality: int = 88) -> str:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=quality)
    mime = "jpeg" if fmt.upper() == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


_picker_nonce = 0


def picker_html(view: Image.Image | None, grid: tuple[int, int] | None,
                selected: Iterable[tuple[int, int]] = (), heat: Image.Image | None = None) -> str:
    """The patch picker: the model's view with its patch grid; selected cells highlighted.

    Each render carries a fresh nonce so that re-rendering the same selection still replaces
    cells the user changed in the browser.
    """
    global _picker_nonce
    _picker_nonce += 1
    if view is None or grid is None:
        return ('<div class="pp-empty" data-nonce="%d">Upload an image (or click an example) to '
                'see its patch grid here.</div>' % _picker_nonce)
    rows, cols = grid
    sel = {(int(r), int(c)) for r, c in selected}
    cells = "".join(
        f'<div class="pp-cell{" on" if (i // cols, i % cols) in sel else ""}" data-i="{i}"></div>'
        for i in range(rows * cols))
    src = to_data_url(heat if heat is not None else view)
    return (f'<div class="pp" data-rows="{rows}" data-cols="{cols}" data-nonce="{_picker_nonce}" '
            f'style="aspect-ratio:{view.width}/{view.height}">'
            f'<img src="{src}" alt="the image as the model sees it" draggable="false"/>'
            f'<div class="pp-grid" style="grid-template-columns:repeat({cols},1fr);'
            f'grid-template-rows:repeat({rows},1fr)">{cells}</div></div>'
            f'<div class="pp-count">{len(sel)} selected</div>')


# Click toggles a patch; a drag selects the rectangle between the press and the pointer (or
# removes it, when the drag starts on a selected patch), previewed live. On release the selection
# goes to Python through the custom 'pick' event.
PICKER_JS = r"""
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
  cells().forEach((c, i) => { if (c.classList.contains('on')) sel.push(Math.floor(i / cols) + ',' + (i % cols)); });
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

PICKER_CSS = """
.pp { position: relative; width: 100%; max-width: 448px; margin: 0 auto; user-select: none;
      touch-action: none; cursor: crosshair; border-radius: 6px; overflow: hidden; }
.pp img { display: block; width: 100%; height: 100%; object-fit: fill; pointer-events: none; }
.pp-grid { position: absolute; inset: 0; display: grid; }
.pp-cell { border-right: 1px solid rgba(255,255,255,.28); border-bottom: 1px solid rgba(255,255,255,.28); }
.pp-cell:hover { background: rgba(255,255,255,.22); }
.pp-cell.on { background: rgba(0, 200, 255, .38); box-shadow: inset 0 0 0 2px rgba(0, 230, 255, .95); }
.pp-count { text-align: center; font-size: .85em; opacity: .75; margin-top: 4px; }
.pp-empty { display: flex; align-items: center; justify-content: center; min-height: 260px;
            border: 2px dashed rgba(127,127,127,.35); border-radius: 8px; opacity: .7;
            text-align: center; padding: 1em; }
"""


def outline_patches(image: Image.Image, grid: tuple[int, int], patches: Iterable[tuple[int, int]],
                    colour=(0, 230, 255)) -> Image.Image:
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


# ------------------------------------------------------------------------------ plots
def _fig_to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def histogram_image(hist: np.ndarray | None, edges: np.ndarray | None, feature: int,
                    size=(420, 200)) -> Image.Image | None:
    """The feature's activation histogram (log-spaced bins) as a small bar chart."""
    if hist is None or edges is None or np.asarray(hist).sum() == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    nz = np.nonzero(hist)[0]
    lo, hi = max(nz[0] - 1, 0), min(nz[-1] + 2, len(hist))
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax.bar(edges[lo:hi], hist[lo:hi], width=np.diff(edges)[lo:hi], align="edge",
           color="#f97316", edgecolor="white", linewidth=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("activation (when firing)", fontsize=8)
    ax.set_ylabel("patches", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"Activation histogram of feature {feature}", fontsize=9)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    fig.tight_layout()
    return _fig_to_image(fig)


class FeatureScatter:
    """Every feature as a point (log frequency vs log mean activation when firing).

    The plot is drawn once per filter; clicking the image picks the nearest feature (the pixel
    positions of all points are kept for that).
    """

    def __init__(self, frequency: np.ndarray, mean_active: np.ndarray, size=(460, 330)):
        self.freq = np.asarray(frequency, np.float64)
        self.mean = np.asarray(mean_active, np.float64)
        self.alive = self.freq > 0
        self.size = size
        self.x = np.log10(np.where(self.alive, self.freq, np.nan))
        self.y = np.log10(np.where(self.alive & (self.mean > 0), self.mean, np.nan))
        self._px: np.ndarray | None = None
        self._image: Image.Image | None = None
        self._key: Any = None

    def bounds(self) -> tuple[float, float, float, float]:
        """(min, max) of log10 frequency and log10 mean activation over live features."""
        x = self.x[np.isfinite(self.x)]
        y = self.y[np.isfinite(self.y)]
        if not len(x):
            return (-6.0, 0.0, -3.0, 3.0)
        return (float(np.floor(x.min() * 10) / 10), float(np.ceil(x.max() * 10) / 10),
                float(np.floor(y.min() * 10) / 10), float(np.ceil(y.max() * 10) / 10))

    def in_range(self, fmin: float, fmax: float, amin: float, amax: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (self.x >= fmin) & (self.x <= fmax) & (self.y >= amin) & (self.y <= amax)

    def render(self, selected: np.ndarray | None = None, current: int | None = None) -> Image.Image:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        key = (None if selected is None else selected.tobytes())
        if self._image is None or key != self._key:
            fig, ax = plt.subplots(figsize=(self.size[0] / 100, self.size[1] / 100), dpi=100)
            ok = np.isfinite(self.x) & np.isfinite(self.y)
            sel = ok if selected is None else ok & selected
            ax.scatter(self.x[ok & ~sel], self.y[ok & ~sel], s=3, c="#cbd5e1", linewidths=0)
            ax.scatter(self.x[sel], self.y[sel], s=4, c="#2563eb", linewidths=0, alpha=.7)
            ax.set_xlabel("log10 firing frequency (fraction of patches)", fontsize=8)
            ax.set_ylabel("log10 mean activation when firing", fontsize=8)
            ax.tick_params(labelsize=7)
            dead = int((~self.alive).sum())
            ax.set_title(f"{int(ok.sum())} live features" + (f", {dead} never fired" if dead else "")
                         + " — click a point", fontsize=9)
            for s in ("top", "right"):
                ax.spines[s].set_visible(False)
            fig.tight_layout()
            fig.canvas.draw()
            xy = np.column_stack([np.nan_to_num(self.x, nan=-1e9), np.nan_to_num(self.y, nan=-1e9)])
            px = ax.transData.transform(xy)
            h = fig.canvas.get_width_height()[1]
            px[:, 1] = h - px[:, 1]  # image rows count from the top
            px[~ok] = np.nan
            self._px = px
            self._image = _fig_to_image(fig)
            self._key = key
        img = self._image
        if current is not None and self._px is not None and np.isfinite(self._px[current]).all():
            from PIL import ImageDraw

            img = img.copy()
            d = ImageDraw.Draw(img)
            x, y = self._px[current]
            d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=(234, 88, 12), width=3)
        return img

    def nearest(self, x: float, y: float, among: np.ndarray | None = None) -> int | None:
        if self._px is None:
            self.render()
        px = self._px
        d = (px[:, 0] - x) ** 2 + (px[:, 1] - y) ** 2
        d = np.where(np.isfinite(d), d, np.inf)
        if among is not None and among.any():
            d = np.where(among, d, np.inf)
        i = int(np.argmin(d))
        return i if np.isfinite(d[i]) else None


# ------------------------------------------------------------------------------ text
def fmt_freq(f: float) -> str:
    if f <= 0:
        return "never fires"
    if f >= 0.01:
        return f"{f:.1%} of patches"
    return f"1 in {1 / f:,.0f} patches"


def stats_markdown(feature: int, st: dict | None, title: str = "") -> str:
    head = f"### Feature {feature}" + (f" · {html.escape(title)}" if title else "")
    if not st:
        return head + "\n\n_No statistics in this bundle._"
    return (head + "\n\n"
            f"- fires on **{fmt_freq(st['frequency'])}**\n"
            f"- mean activation when firing **{st['mean_active']:.3g}**\n"
            f"- max activation **{st['max']:.3g}**")


def error_box(message: str) -> str:
    return f'<div class="sae-error">⚠️ {html.escape(message)}</div>'


# the steering apps (apps/segment.py, apps/classify.py): class legend, callouts, slider rows
STEER_CSS = """
.seg-legend { display: flex; flex-wrap: wrap; gap: 4px 10px; font-size: .85em; margin: .2em 0 .4em; }
.seg-chip { display: inline-flex; align-items: center; gap: 4px; white-space: nowrap; }
.seg-swatch { width: 12px; height: 12px; border-radius: 3px; display: inline-block;
              border: 1px solid rgba(0,0,0,.25); }
.seg-share { opacity: .7; }
.steer-callout { border-radius: 6px; padding: .5em .8em; margin: .3em 0; font-size: 1.05em; }
.steer-callout.changed { background: #fff7ed; border: 1px solid #fdba74; color: #9a3412; }
.steer-callout.same { background: #f1f5f9; border: 1px solid #cbd5e1; color: #334155; }
.steer-slot { align-items: center !important; }
"""

HEAD_LABELS = {"saliency": "saliency"}

THEME = gr.themes.Soft(
    primary_hue="blue", secondary_hue="orange", neutral_hue="slate",
    # system fonts: nothing is fetched from a font CDN (works offline)
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)

CSS = """
.sae-header h1 { margin-bottom: .1em; }
.sae-sub { opacity: .8; margin-top: 0; }
.sae-error { background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; border-radius: 6px;
             padding: .6em .8em; }
.sae-note { font-size: .9em; opacity: .85; }
.sae-section { margin-top: .6em; }
.sae-tight .gallery-item { border-radius: 6px; }
footer { display: none !important; }
.cmp-side { padding: .4em .6em; border-left: 4px solid var(--color-accent); }
.cmp-tag { font-size: .75em; letter-spacing: .08em; opacity: .7; }
""" + PICKER_CSS + STEER_CSS


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False,
           name: str = "app", prevent_thread_lock: bool = False, quiet: bool = False,
           max_concurrency: int = 1):
    """Queue on, launch with the app's theme/CSS, print the URL; returns ``(app, local_url)``."""
    demo.queue(default_concurrency_limit=max_concurrency, max_size=64)
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT", "0") or 0) or None
    app, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
        show_error=False, theme=THEME, css=CSS, max_file_size=MAX_FILE_SIZE, ssr_mode=False,
        footer_links=["api"])
    if not quiet:
        print(f"saescope {name} running at {local_url}" + (f" (public: {share_url})" if share_url else ""),
              flush=True)
    if not prevent_thread_lock:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
    return app, local_url


def image_upload(height: int, examples: bool = True):
    """The safe upload box with the example photos under it (in the current layout context)."""
    upload = SafeImage(label="Upload an image", type="filepath", sources=["upload", "clipboard"],
                       height=height, elem_id="upload")
    if examples:
        ex_files = example_images()
        if ex_files:
            gr.Examples(ex_files, inputs=upload, label="Examples", examples_per_page=6)
    return upload


def patch_picker_controls() -> tuple:
    """The patch picker, its hidden selection text, Clear / Select-all buttons and info line,
    created in the current Gradio layout context (the elem_ids are what PICKER_JS and the browser
    tests use). Returns ``(picker, sel_text, clear_btn, all_btn, sel_info)``."""
    picker = gr.HTML(picker_html(None, None), js_on_load=PICKER_JS, apply_default_css=False,
                     elem_id="picker")
    sel_text = gr.Textbox(visible=False, elem_id="selection")
    with gr.Row():
        clear_btn = gr.Button("Clear selection", size="sm", elem_id="clear-sel")
        all_btn = gr.Button("Select all", size="sm", elem_id="select-all")
    sel_info = gr.Markdown(elem_id="sel-info")
    return picker, sel_text, clear_btn, all_btn, sel_info


def picked_selection(evt) -> str:
    """The selection text a picker event carries (``"r,c;r,c"``, empty when none)."""
    return getattr(evt, "selection", "") or ""


def picker_cleared(an) -> tuple[str, str]:
    """Picker HTML and selection text with nothing selected, for analysed image ``an``."""
    return picker_html(an.view, an.grid, ()), ""


def picker_all(an) -> tuple[str, str]:
    """Picker HTML and selection text with every patch of ``an`` selected."""
    sel = parse_selection("all", an.grid)
    return picker_html(an.view, an.grid, sel), format_selection(sel)


def app_parser(prog: str, description: str, bundle: bool = True):
    """The command line every app shares: ``[--bundle] --host --port --share --no-examples``."""
    import argparse

    from saescope.apps.adapter import ENV_BUNDLE

    p = argparse.ArgumentParser(prog=prog, description=description)
    if bundle:
        p.add_argument("--bundle", default=os.environ.get(ENV_BUNDLE) or None,
                       help="bundle folder or Hub id (default: the offline default bundle, built once)")
    p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--no-examples", dest="examples", action="store_false",
                   help="hide the example images")
    return p


def serve(build, args, name: str, loading: str | None = None) -> int:
    """Build an app with ``build()`` (warm), print how long that took, launch it, print the URL.

    A bundle that cannot be loaded is one ``error:`` line and exit status 2, not a traceback.
    """
    import sys
    import time

    from saescope.apps.adapter import AppSetupError

    t0 = time.perf_counter()
    try:
        if loading:
            print(loading, flush=True)
        demo = build()
    except AppSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ready in {time.perf_counter() - t0:.1f} s", flush=True)
    launch(demo, args.host, args.port, args.share, name=name)
    return 0


def loading_line(bundle: str | None) -> str:
    return "loading bundle" + (f" {bundle}" if bundle else " (offline default)") + " …"


__all__ = ["image_upload", "patch_picker_controls", "picked_selection", "picker_cleared", "picker_all",
           "app_parser", "serve", "loading_line", "SafeImage", "read_upload", "try_upload", "upload_message", "example_images", "parse_selection",
           "format_selection", "describe_selection", "picker_html", "PICKER_JS", "PICKER_CSS",
           "outline_patches", "histogram_image", "FeatureScatter", "stats_markdown", "fmt_freq",
           "error_box", "THEME", "CSS", "launch", "free_port", "to_data_url"]
