"""Diffusion steering app: ``saescope-diffusion [--artefact PATH_OR_HUB_ID] [--port N] [--host H]``.

Type a prompt, pick a named SAE feature of the pipeline's text encoder, set a strength (negative
suppresses, positive amplifies) and generate: the unsteered and the steered image side by side
(same seed), with the CLIP score of the feature's name on both.

Without ``--artefact`` it builds, once, a tiny random StableDiffusion pipeline with an SAE and
named features (offline, cached under the saescope cache) and says so on the page: its images
are noise. ``build_app(artefact)`` returns the ``gr.Blocks`` for the Space and the tests.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from PIL import Image

from saescope.apps.components import RawNumber, RawSlider, ServedImage
from saescope.apps.launch import check_port, launch
from saescope.apps.text import error_box
from saescope.apps.validate import number_between, whole_number
from saescope.core.fileio import atomic_dir

ENV_ARTEFACT = "SAESCOPE_DIFFUSION_ARTEFACT"
DEMO_VERSION = 1
MAX_CHOICES = 500  # feature picker entries shown at once (search narrows them)
MAX_SEED = 2**32 - 1  # the seed box takes what a torch generator (and a visitor) can reproduce
MAX_STEPS = 50
MAX_GUIDANCE = 15.0
MAX_STRENGTH = 20.0  # at least; twice the naming strength when that is larger
DISPLAY_MIN = 256  # tiny images are upscaled (nearest) to at least this many pixels for display

HELP = """
**What this does.** A *sparse autoencoder* (SAE) rewrites each token output of the pipeline's CLIP
text encoder — what the image model reads — as a sum of a few *features*. Each feature was named
automatically: images were generated with the feature amplified and without it (same seeds), and
the feature got the attribute word whose CLIP score rose most against the other words.

**Steering.** Your prompt is encoded; on every token position but the start token the chosen
feature's code is changed by *strength × its largest activation on the training prompts*, and the
embedding becomes `e + decode(edited codes) − decode(codes)` (the SAE's error term is kept, so
strength 0 changes nothing). Positive strength amplifies the feature, negative suppresses it.
Only the prompt's embeddings are steered; the negative prompt's embeddings used by
classifier-free guidance are left alone. Both images use the same seed.

**Scores.** CLIP score = 100 × cosine similarity between the image and the feature's name;
*relative* = the same minus the mean over the whole attribute vocabulary (a change of the image
that moves every word alike does not count).
"""


# ------------------------------------------------------------------------------ the demo artefact
def build_demo_artefact(
    folder: str | os.PathLike, n_features: int = 12, seed: int = 0, progress: bool = False
) -> Path:
    """A tiny random pipeline + SAE + automatically named features, built offline.

    Small settings (a subset of the built-in corpus, a short fit, 2 prompts x 2 seeds x 2 steps
    for naming) so it takes seconds; the real thing is ``saescope diffusion-fit/-name``.
    """

    from saescope.core import diffusion as D
    from saescope.train.diffusion import (
        collect_activations,
        corpus_prompts,
        fit_text_sae,
        sae_metrics,
    )

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        pipe_dir = D.save_tiny(tmp / "pipeline", seed=seed)
        pipe = D.load_pipeline(pipe_dir)
        prompts = corpus_prompts(True, None, max_prompts=600, seed=seed)
        acts = collect_activations(pipe, prompts, "all", progress=progress)
        sae = fit_text_sae(
            acts,
            "topk",
            4.0,
            8,
            steps=150,
            batch_size=512,
            lr=2e-3,
            seed=seed,
            progress=progress,
            model_id=str(folder / "pipeline"),
            token_kinds=["text"],
        )
        sae.cfg.metrics = sae_metrics(sae, acts)
        stats = D.feature_stats(sae, acts)
        art_dir = tmp / "artefact"
        manifest = {
            "pipeline": str(folder / "pipeline"),
            "scorer": None,
            "tiny": True,
            "site": D.SITE,
            "d_model": D.text_width(pipe),
            "positions": "all",
            "image_size": D.image_size(pipe),
            "corpus": {"builtin": True, "n_prompts": len(prompts)},
            "fit": sae.cfg.metrics,
        }
        words = D.vocabulary()
        setting = D.Setting(
            prompts=D.neutral_prompts(D.OBJECTS[:2]), seeds=[0, 1], steps=2, guidance=5.0
        )
        feats = D.sample_features(stats, n_features, seed)
        strength = 8.0
        scorer = D.ClipScorer(str(pipe_dir / D.SCORER_DIR))
        rows = D.name_probes(
            pipe,
            scorer,
            D.feature_probes(sae, stats, feats, strength),
            words,
            setting,
            progress=progress,
        )
        names = {
            r["feature"]: {k: v for k, v in r.items() if k not in ("label", "feature")}
            for r in rows
        }
        manifest["naming"] = {
            "strength": strength,
            "words": words,
            "prompts": setting.prompts,
            "seeds": setting.seeds,
            "steps": setting.steps,
            "guidance": setting.guidance,
            "negative_prompt": "",
            "positions": "all",
        }
        D.save_artefact(art_dir, sae, stats, manifest, names)
        # the artefact lives beside its pipeline: folder/{pipeline, artefact}
    return folder / "artefact"


def demo_artefact() -> Path:
    """The tiny demo artefact under the saescope cache, built on first use."""
    from saescope.core.paths import cache_dir

    folder = cache_dir("diffusion") / f"demo-v{DEMO_VERSION}"
    if not (folder / "artefact" / "diffusion.json").is_file():
        print("building the tiny offline demo (random pipeline + SAE, once) …", flush=True)
        build_demo_artefact(folder)
    return folder / "artefact"


# ------------------------------------------------------------------------------ helpers
def feature_choices(art, query: str = "", limit: int = MAX_CHOICES) -> list[str]:
    """Picker entries ``#id · name``: named features first, then the other live ones; ``query``
    keeps those whose id or name contains it."""
    from saescope.core import diffusion as D

    named = sorted(art.names)
    rest = [f for f in D.alive_features(art.stats) if f not in art.names]
    q = (query or "").strip().lower().lstrip("#").strip()
    order = named + rest
    if q.isdigit() and int(q) in set(order):  # an exact id goes first
        order = [int(q)] + [f for f in order if f != int(q)]
    out = []
    for f in order:
        label = art.label(f)
        if not q or q in label.lower():
            out.append(label)
        if len(out) >= limit:
            break
    return out


def parse_feature(value, d_sae: int) -> int:
    """``#12 · striped``, ``#12`` or ``12`` -> 12 (ValueError with a clear message otherwise)."""
    if value is None or str(value).strip() == "":
        raise ValueError("pick a feature first (type a name or an id to search)")
    text = str(value).strip().lstrip("#").split("·")[0].strip()
    try:
        f = int(float(text))
        if float(text) != f:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"unknown feature {value!r}: pick one from the list or type an id"
        ) from None
    if not 0 <= f < d_sae:
        raise ValueError(f"unknown feature {f}: this SAE has features 0..{d_sae - 1}")
    return f


def _display(img: Image.Image) -> Image.Image:
    if min(img.size) >= DISPLAY_MIN:
        return img
    s = -(-DISPLAY_MIN // min(img.size))
    return img.resize((img.width * s, img.height * s), Image.NEAREST)


def scores_markdown(info: dict) -> str:
    f = info["feature"]
    head = (
        f"**Feature #{f}**, strength {info['strength']:+g} "
        f"(prompt embeddings moved by {info['embedding_change']:.3g} in norm)."
    )
    if "name" not in info:
        return head + "\n\nThis feature has no name yet (name it with `saescope diffusion-name`)."
    name = html.escape(info["name"])
    d = info["score_after"] - info["score_before"]
    dr = info["relative_after"] - info["relative_before"]
    verdict = "rose" if dr > 0 else "fell" if dr < 0 else "did not change"
    return (
        head
        + f"\n\n| CLIP score of **{name}** | unsteered | steered | change |\n|---|---|---|---|\n"
        f"| 100 · cos | {info['score_before']:.2f} | {info['score_after']:.2f} | {d:+.2f} |\n"
        f"| relative to the vocabulary | {info['relative_before']:+.2f} | "
        f"{info['relative_after']:+.2f} | {dr:+.2f} |\n\n"
        f"The relative score of *{name}* {verdict}."
    )


# ------------------------------------------------------------------------------ the app
def _steerer_for(artefact, steerer, device: str):
    """The given steerer, or one for ``artefact`` (None: the tiny offline demo)."""
    from saescope.core import diffusion as D

    if steerer is not None:
        return steerer
    art = (
        artefact
        if isinstance(artefact, D.Artefact)
        else D.load_artefact(artefact or demo_artefact())
    )
    return D.Steerer(art, device=device)


def _handlers(steerer, max_strength: float = MAX_STRENGTH) -> tuple[Callable, Callable]:
    """The app's event handlers ``(on_search, on_generate)`` for ``steerer``."""
    from saescope.core import diffusion as D

    art = steerer.art

    def checked(seed, steps, guidance, strength) -> tuple[int, int, float, float]:
        """The sliders and the seed box as sent (an API caller can send anything), checked."""
        return (
            whole_number(seed, "seed", 0, MAX_SEED),
            whole_number(steps, "steps", 1, MAX_STEPS),
            number_between(guidance, "guidance", 0.0, MAX_GUIDANCE),
            number_between(strength, "strength", -max_strength, max_strength),
        )

    def on_search(query):
        found = feature_choices(art, query)
        msg = (
            f"{len(found)} feature(s) match."
            if found
            else "No feature matches; try another name or id."
        )
        return gr.Dropdown(choices=found, value=found[0] if found else None), msg

    def on_generate(prompt, negative, seed, steps, guidance, feature, strength):
        try:
            f = parse_feature(feature, art.sae.cfg.d_sae)
            art.sae.check_feature(f)
            prompt = D.check_prompt(prompt or "")
            seed, steps, guidance, strength = checked(seed, steps, guidance, strength)
            before, after, info = steerer.pair(
                prompt,
                f,
                strength,
                seed=seed,
                steps=steps,
                guidance=guidance,
                negative_prompt=negative or "",
            )
        except ValueError as err:
            gr.Warning(str(err), title="Cannot generate")
            return None, None, "", error_box(str(err))
        return _display(before), _display(after), scores_markdown(info), ""

    return on_search, on_generate


def _header_panel(art, pipe_name: str, tiny: bool) -> None:
    """The page header, the tiny-model warning (if any) and the help accordion."""
    gr.HTML(
        "<div class='sae-header'><h1>Diffusion steering</h1>"
        f"<p class='sae-sub'><b>{html.escape(pipe_name)}</b> — "
        f"SAE {html.escape(art.sae.cfg.name)} "
        f"on the text encoder's token outputs ({art.sae.cfg.d_sae:,} features, "
        f"{len(art.names)} named)</p></div>"
    )
    if tiny:
        gr.HTML(
            error_box(
                "This is a tiny random test model: the pipeline, the SAE and the CLIP "
                "scorer have random weights, so the images are noise and the feature "
                "names carry no meaning. It shows the mechanism only; start the app "
                "with --artefact for a real pipeline."
            ),
            elem_id="tiny-note",
        )
    with gr.Accordion("How to read this page", open=False):
        gr.Markdown(HELP)


def _prompt_panel(naming: dict) -> SimpleNamespace:
    """Prompt, negative prompt, seed, steps and guidance (inside the current column)."""
    prompt = gr.Textbox(label="Prompt", value="a photo of a house", lines=2, elem_id="prompt")
    negative = gr.Textbox(label="Negative prompt (never steered)", value="", elem_id="negative")
    with gr.Row():
        seed = RawNumber(
            label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed"
        )
        steps = RawSlider(
            1, MAX_STEPS, int(naming.get("steps", 4)), step=1, label="Steps", elem_id="steps"
        )
        guidance = RawSlider(
            0,
            MAX_GUIDANCE,
            float(naming.get("guidance", 5.0)),
            step=0.5,
            label="Guidance (≤ 1: off)",
            elem_id="guidance",
        )
    return SimpleNamespace(
        prompt=prompt, negative=negative, seed=seed, steps=steps, guidance=guidance
    )


def _feature_panel(
    choices: list[str], default_strength: float, max_strength: float
) -> SimpleNamespace:
    """Feature search, feature picker, strength and the Generate button (current column)."""
    search = gr.Textbox(
        label="Search features by name or id",
        placeholder="e.g. red, 12",
        elem_id="feature-search",
    )
    feature = gr.Dropdown(
        choices=choices,
        value=choices[0] if choices else None,
        label="Feature",
        filterable=True,
        allow_custom_value=True,
        elem_id="feature",
    )
    search_md = gr.Markdown(
        f"{len(choices)} feature(s).", elem_id="search-info", elem_classes="sae-note"
    )
    strength = RawSlider(
        -max_strength,
        max_strength,
        default_strength,
        step=0.5,
        label="Strength (× max activation; negative suppresses)",
        elem_id="strength",
    )
    go = gr.Button("Generate", variant="primary", elem_id="generate")
    return SimpleNamespace(
        search=search, feature=feature, search_md=search_md, strength=strength, go=go
    )


def _output_panel() -> SimpleNamespace:
    """The error box, the unsteered/steered images and the scores table."""
    err = gr.HTML("", elem_id="error")
    with gr.Row():
        before = ServedImage(
            label="Unsteered",
            interactive=False,
            format="png",
            height=300,
            elem_id="img-before",
            buttons=[],
        )
        after = ServedImage(
            label="Steered",
            interactive=False,
            format="png",
            height=300,
            elem_id="img-after",
            buttons=[],
        )
    scores = gr.Markdown(elem_id="scores")
    return SimpleNamespace(err=err, before=before, after=after, scores=scores)


def _wire(p: SimpleNamespace, f: SimpleNamespace, o: SimpleNamespace, on_search, on_generate):
    """Connect the panels' events: search narrows the picker; Generate / Enter generate."""
    f.search.change(
        on_search, f.search, [f.feature, f.search_md], api_visibility="private", queue=False
    )
    inputs = [p.prompt, p.negative, p.seed, p.steps, p.guidance, f.feature, f.strength]
    outputs = [o.before, o.after, o.scores, o.err]
    f.go.click(on_generate, inputs, outputs, api_name="generate")
    p.prompt.submit(on_generate, inputs, outputs, api_visibility="private")


def build_app(
    artefact=None, *, steerer=None, device: str = "cpu", title: str | None = None
) -> gr.Blocks:
    """The steering app for ``artefact`` (folder, Hub id, loaded Artefact, or None for the tiny
    offline demo)."""
    steerer = _steerer_for(artefact, steerer, device)
    art = steerer.art
    naming = art.manifest.get("naming") or {}
    tiny = art.tiny
    default_strength = float(naming.get("strength", 8.0))
    max_strength = max(MAX_STRENGTH, abs(default_strength) * 2)
    choices = feature_choices(art)
    pipe_name = art.pipeline if not tiny else "tiny random StableDiffusion (built from configs)"
    on_search, on_generate = _handlers(steerer, max_strength)

    with gr.Blocks(title=title or "saescope · diffusion steering", analytics_enabled=False) as demo:
        _header_panel(art, pipe_name, tiny)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=280):
                p = _prompt_panel(naming)
            with gr.Column(scale=5, min_width=280):
                f = _feature_panel(choices, default_strength, max_strength)
        o = _output_panel()
        _wire(p, f, o, on_search, on_generate)
    demo.steerer = steerer  # for tests
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="saescope-diffusion",
        description="Diffusion steering: generate with an SAE feature of the text encoder "
        "amplified or suppressed, next to the unsteered image. Prints the local URL when ready.",
    )
    p.add_argument(
        "--artefact",
        default=os.environ.get(ENV_ARTEFACT) or None,
        help="artefact folder or Hub id from 'saescope diffusion-fit' "
        "(default: a tiny random offline demo, built once)",
    )
    p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 is fastest for the tiny demo on a busy small machine)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        check_port(args.host, args.port)  # a taken port fails before loading anything
        print("loading " + (args.artefact or "the tiny offline demo") + " …", flush=True)
        demo = build_app(args.artefact, device=args.device)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ready in {time.perf_counter() - t0:.1f} s", flush=True)
    launch(demo, args.host, args.port, args.share, name="diffusion steering")
    return 0


if __name__ == "__main__":
    sys.exit(main())
