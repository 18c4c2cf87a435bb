"""Diffusion steering steps: an SAE on a diffusion pipeline's CLIP text encoder, named and tested.

``saescope diffusion-tiny --out F``
    save a tiny random StableDiffusion pipeline (+ a tiny CLIP scorer) to a folder (offline).
``saescope diffusion-fit --pipeline SPEC --out ARTEFACT``
    encode a prompt corpus (built-in templated attribute/object prompts, plus ``--prompts FILE``)
    with the pipeline's text encoder, fit an SAE on the token outputs, save the artefact folder.
``saescope diffusion-name --artefact ARTEFACT``
    name sampled features: generate with each amplified vs. not (same seeds) and pick the
    vocabulary word whose CLIP score rises most (relative to the other words).
``saescope diffusion-eval --artefact ARTEFACT``
    on held-out seeds and prompts, the fraction of named features whose amplification raises
    the CLIP score of their name, relative to the vocabulary and raw (and, as a control, the
    same for random directions of equal norm, named the same way).

This module holds the four steps (config dataclasses, ``run_*`` and :func:`add_parser`); the
corpus -> activations -> SAE path is :mod:`saescope.train.diffusion_sae` and the held-out
evaluation :mod:`saescope.train.diffusion_eval`, both re-exported here.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from saescope.core import diffusion as D
from saescope.core.sae import architecture_names
from saescope.train.cli import (
    DeviceOption,
    OutOption,
    ProgressOption,
    SeedOption,
    add_step,
    announce_config,
    option,
)
from saescope.train.diffusion_eval import eval_markdown, evaluate_artefact
from saescope.train.diffusion_sae import (
    collect_activations,
    corpus_prompts,
    fit_text_sae,
    sae_metrics,
)


# ------------------------------------------------------------------------------ fit
def _threads(cfg: DeviceOption) -> None:
    """Why an option: tiny models gain nothing from intra-op threads, and on a busy 2-core
    machine OpenMP spinning made a tiny-pipeline generation 10-30x slower than one thread."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))


def run_fit(cfg: DiffusionFitConfig) -> int:
    _threads(cfg)
    announce_config(cfg, "diffusion-fit", cfg.out, "diffusion_fit_config.json")
    out = Path(cfg.out)
    if (out / D.MANIFEST).exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds an artefact; pass --overwrite to replace it")
    prompts = corpus_prompts(cfg.builtin, cfg.prompts, cfg.max_prompts, cfg.seed)
    pipe = D.load_pipeline(cfg.pipeline, cfg.device)
    t0 = time.perf_counter()
    acts = collect_activations(pipe, prompts, cfg.positions, cfg.encode_batch, cfg.progress)
    print(
        f"encoded {len(prompts)} prompts -> {len(acts)} tokens of width {acts.shape[1]} "
        f"in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    spec = (
        str(cfg.pipeline) if str(cfg.pipeline) == D.TINY else D.resolve_pipeline_spec(cfg.pipeline)
    )
    sae = fit_text_sae(
        acts,
        cfg.arch,
        cfg.expansion,
        cfg.k,
        cfg.l1,
        cfg.steps,
        cfg.batch_size,
        cfg.lr,
        cfg.seed,
        cfg.progress,
        model_id=spec,
        token_kinds=["text"],
    )
    sae.cfg.hyperparameters.update(site=D.SITE, positions=cfg.positions)
    metrics = sae_metrics(sae, acts)
    sae.cfg.metrics = metrics
    stats = D.feature_stats(sae, acts)
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    manifest = {
        "pipeline": spec,
        "scorer": cfg.scorer,
        "tiny": D.is_tiny(cfg.pipeline),
        "site": D.SITE,
        "d_model": D.text_width(pipe),
        "max_length": int(pipe.tokenizer.model_max_length),
        "positions": cfg.positions,
        "image_size": D.image_size(pipe),
        "corpus": {
            "builtin": cfg.builtin,
            "files": [str(f) for f in cfg.prompts or []],
            "n_prompts": len(prompts),
            "sha256": digest,
        },
        "fit": {
            "arch": cfg.arch,
            "expansion": cfg.expansion,
            "k": cfg.k,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": cfg.seed,
            **metrics,
        },
    }
    D.save_artefact(out, sae, stats, manifest)
    alive = len(D.alive_features(stats))
    print(
        f"{sae.cfg.name}: FVU {metrics['fvu']:.4f}  L0 {metrics['l0']:.1f}  "
        f"live features {alive}/{sae.cfg.d_sae}  -> {out}"
    )
    return 0


# ------------------------------------------------------------------------------ name / eval
def _artefact(cfg: ArtefactOptions) -> D.Artefact:
    """The artefact, with the pipeline/scorer overrides of the command line applied."""
    _threads(cfg)
    art = D.load_artefact(cfg.artefact)
    if cfg.pipeline:
        art.manifest["pipeline"] = str(cfg.pipeline)
    if cfg.scorer:
        art.manifest["scorer"] = str(cfg.scorer)
    return art


def _words(cfg: ArtefactOptions) -> list[str]:
    if cfg.words:
        words = D.read_prompt_file(cfg.words)
    else:
        words = D.vocabulary()
    return list(dict.fromkeys(words))


def _setting(
    prompts: list[str] | None,
    objects: list[str],
    seeds: list[int],
    cfg: DiffusionNameConfig | DiffusionEvalConfig,
) -> D.Setting:
    prompts = prompts or D.neutral_prompts(objects)
    for p in prompts:
        D.check_prompt(p)
    return D.Setting(
        prompts=list(prompts),
        seeds=list(seeds),
        steps=cfg.steps_gen,
        guidance=cfg.guidance,
        negative_prompt=cfg.negative_prompt,
        positions=cfg.positions,
    )


def _features(art: D.Artefact, ids: list[int] | None, n: int | None, seed: int) -> list[int]:
    if ids:
        feats = [art.sae.check_feature(f) for f in ids]
        dead = [f for f in feats if art.stats["max"][f] <= 0]
        if dead:
            raise ValueError(
                f"features {dead} never fired on the corpus: amplifying them by a "
                "multiple of their max activation is a no-op"
            )
        return feats
    return D.sample_features(art.stats, n, seed)


def _out_folder(cfg: ArtefactOptions, art: D.Artefact) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if Path(cfg.artefact).is_dir():
        return Path(cfg.artefact)
    raise ValueError(f"{cfg.artefact} is not a local folder: give --out for the results")


def run_name(cfg: DiffusionNameConfig) -> int:
    art = _artefact(cfg)
    out = _out_folder(cfg, art)
    announce_config(cfg, "diffusion-name", out, "diffusion_name_config.json")
    st = D.Steerer(art, device=cfg.device)
    words = _words(cfg)
    feats = _features(art, cfg.features, cfg.n_features, cfg.seed)
    setting = _setting(cfg.name_prompts, cfg.objects, cfg.seeds, cfg)
    probes = D.feature_probes(art.sae, art.stats, feats, cfg.strength)
    rows = D.name_probes(st.pipe, st.scorer, probes, words, setting, cfg.progress)
    names = {
        r["feature"]: {k: v for k, v in r.items() if k not in ("label", "feature")} for r in rows
    }
    naming = {
        "strength": cfg.strength,
        "words": words,
        "prompts": setting.prompts,
        "seeds": setting.seeds,
        "steps": setting.steps,
        "guidance": setting.guidance,
        "negative_prompt": setting.negative_prompt,
        "positions": setting.positions,
        "scorer": art.scorer,
        "sample_seed": cfg.seed,
    }
    manifest = {**art.manifest, "naming": naming}
    D.save_artefact(out, art.sae, art.stats, manifest, names)
    for f, n in sorted(names.items()):
        print(
            f"feature {f:>5}: {n['name']:<12} (relative CLIP score {n['delta']:+.3f}, "
            f"raw {n['delta_raw']:+.3f}, margin {n['margin']:.3f})"
        )
    print(f"named {len(names)} features -> {out / D.NAMES_FILE}")
    if cfg.push_to_hub:
        print(D.push_artefact(out, cfg.push_to_hub, private=cfg.private))
    return 0


def run_eval(cfg: DiffusionEvalConfig) -> int:
    art = _artefact(cfg)
    out = _out_folder(cfg, art)
    if not art.names:
        raise ValueError(
            f"{art.path} has no feature names yet: run 'saescope diffusion-name' first"
        )
    naming = art.manifest.get("naming") or {}
    overlap = set(cfg.seeds) & set(naming.get("seeds", []))
    if overlap and not cfg.allow_seen_seeds:
        raise ValueError(
            f"seeds {sorted(overlap)} were used for naming; held-out evaluation needs "
            "other seeds (or pass --allow-seen-seeds)"
        )
    recipe = {
        "steps_gen": naming.get("steps", 4),
        "guidance": naming.get("guidance", 5.0),
        "negative_prompt": naming.get("negative_prompt", ""),
        "positions": naming.get("positions", "all"),
    }
    # unless overridden: the same image recipe as naming
    cfg = replace(
        cfg, **{attr: default for attr, default in recipe.items() if getattr(cfg, attr) is None}
    )
    announce_config(cfg, "diffusion-eval", out, "diffusion_eval_config.json")
    st = D.Steerer(art, device=cfg.device)
    setting = _setting(cfg.eval_prompts, cfg.objects, cfg.seeds, cfg)
    result = evaluate_artefact(
        st, art, setting, control=cfg.control, progress=cfg.progress, seed=cfg.seed
    )
    md = eval_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    D.write_json_atomic(out / "eval.json", result)
    (out / "eval.md").write_text(md)
    print(md)
    f = result["features"]
    print(
        f"fraction of features whose amplification raises the CLIP score of their name "
        f"(relative to the vocabulary): "
        f"{f['fraction_amplify_raises']:.3f} ({f['n']} features)"
        + (
            f"; random-direction control: {result['control']['fraction_amplify_raises']:.3f}"
            if "control" in result
            else ""
        )
    )
    return 0


def run_tiny(cfg: DiffusionTinyConfig) -> int:
    out = Path(cfg.out)  # replaced atomically: never a folder that is not a tiny pipeline
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / "saescope_tiny.json").is_file():
            raise FileExistsError(f"{out} exists and is not a tiny pipeline; choose another --out")
    folder = D.save_tiny(cfg.out, seed=cfg.seed, size=cfg.size)
    print(f"tiny random pipeline (images are noise) -> {folder}")
    return 0


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class DiffusionTinyConfig(OutOption, SeedOption):
    """The options of ``saescope diffusion-tiny``."""

    size: int = 32
    """image side in pixels (multiple of 8)"""


@dataclass(kw_only=True)
class DiffusionFitConfig(OutOption, DeviceOption, SeedOption, ProgressOption):
    """The options of ``saescope diffusion-fit`` (``--out``: the artefact folder to write)."""

    pipeline: str
    """diffusers pipeline folder, Hub id (e.g. stabilityai/sd-turbo) or 'tiny'"""
    prompts: list[str] | None = option(None, nargs="*", metavar="FILE")
    """text files of prompts, one a line"""
    builtin: bool = True
    """train on the built-in templated prompts too"""
    max_prompts: int | None = None
    """random subset of the corpus"""
    positions: Literal["all", "prompt"] = "all"
    """token positions to train on: all but the start token, or the prompt's own"""
    arch: str = option("topk", choices=architecture_names)
    """SAE architecture"""
    expansion: float = 4.0
    """d_sae / text-encoder width"""
    k: int = 8
    """active latents (k-sparse archs)"""
    l1: float = 3e-3
    """L1 (relu) / L0 (jumprelu) coefficient"""
    steps: int = 1000
    """training steps"""
    batch_size: int = 1024
    """activation vectors per training step"""
    lr: float = 1e-3
    """Adam learning rate"""
    encode_batch: int = 64
    """prompts per text-encoder batch"""
    scorer: str | None = None
    """CLIP scorer for naming (default: the pipeline's clip_scorer folder, else
    openai/clip-vit-base-patch32)"""
    overwrite: bool = False
    """replace an artefact already in --out"""


@dataclass(kw_only=True)
class ArtefactOptions(DeviceOption, SeedOption, ProgressOption):
    """Options shared by ``diffusion-name`` and ``diffusion-eval`` (``--seed``: sampling features
    and the random-direction controls)."""

    artefact: str
    """artefact folder or Hub repo id (from diffusion-fit)"""
    pipeline: str | None = None
    """override the artefact's pipeline (folder, Hub id, tiny)"""
    scorer: str | None = None
    """override the CLIP scorer (folder or Hub id)"""
    out: str | None = None
    """where to write (default: the artefact folder)"""
    words: str | None = None
    """text file of attribute words, one a line (default: the built-in vocabulary)"""


@dataclass(kw_only=True)
class GenerationOptions:
    """How images are generated while naming."""

    steps_gen: int = 4
    """diffusion steps per image"""
    guidance: float = 5.0
    """classifier-free guidance scale (<= 1 disables it)"""
    negative_prompt: str = ""
    """negative prompt (its embeddings are never steered; default: none)"""
    positions: Literal["all", "prompt"] = "all"
    """token positions to steer: all but the start token, or the prompt's own"""


@dataclass(kw_only=True)
class DiffusionNameConfig(GenerationOptions, ArtefactOptions):
    """The options of ``saescope diffusion-name``."""

    n_features: int = option(32, exclusive="features")
    """live features sampled at random"""
    features: list[int] | None = option(None, exclusive="features")
    """these feature ids instead"""
    strength: float = 8.0
    """amplification, in units of the feature's max activation on the corpus"""
    seeds: list[int] = option(default_factory=lambda: [0, 1, 2, 3])
    """generation seeds"""
    objects: list[str] = option(default_factory=lambda: list(D.OBJECTS[:4]))
    """objects of the neutral naming prompts 'a photo of a OBJECT'"""
    name_prompts: list[str] | None = None
    """naming prompts instead of --objects"""
    push_to_hub: str | None = option(None, metavar="REPO")
    """then upload the artefact"""
    private: bool = False
    """make the uploaded Hub repo private"""


@dataclass(kw_only=True)
class DiffusionEvalConfig(ArtefactOptions):
    """The options of ``saescope diffusion-eval``; the image recipe defaults to naming's."""

    seeds: list[int] = option(default_factory=lambda: [1000, 1001, 1002, 1003])
    """held-out generation seeds (not those used for naming)"""
    objects: list[str] = option(default_factory=lambda: list(D.OBJECTS[4:8]))
    """objects of the held-out prompts 'a photo of a OBJECT'"""
    eval_prompts: list[str] | None = None
    """held-out prompts instead of --objects"""
    control: bool = True
    """name and evaluate random directions of equal norm as a control"""
    allow_seen_seeds: bool = False
    """allow seeds that were used for naming"""
    steps_gen: int | None = None
    """diffusion steps per image (default: as in naming)"""
    guidance: float | None = None
    """classifier-free guidance scale, <= 1 disables it (default: as in naming)"""
    negative_prompt: str | None = None
    """negative prompt, never steered (default: as in naming)"""
    positions: Literal["all", "prompt"] | None = None
    """token positions to steer: all but the start token, or the prompt's own (default: as in
    naming)"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "diffusion-tiny",
        DiffusionTinyConfig,
        run_tiny,
        help="save a tiny random StableDiffusion pipeline + CLIP scorer (offline)",
        description="Build a tiny random StableDiffusion pipeline and CLIP scorer from "
        "configs and save them\n(images are noise; for tests and demos).",
    )
    add_step(
        sub,
        "diffusion-fit",
        DiffusionFitConfig,
        run_fit,
        help="fit an SAE on a diffusion pipeline's text-encoder token outputs",
        description="Encode a prompt corpus with the pipeline's CLIP text encoder and fit "
        "an SAE on the token\noutputs the UNet attends to.",
    )
    add_step(
        sub,
        "diffusion-name",
        DiffusionNameConfig,
        run_name,
        help="name features by amplifying them and scoring images with CLIP",
        description="For each sampled feature, generate with it amplified and not (same "
        "seeds) and name it after\nthe vocabulary word whose CLIP score rises most relative "
        "to the other words.",
    )
    add_step(
        sub,
        "diffusion-eval",
        DiffusionEvalConfig,
        run_eval,
        help="held-out test: does amplifying a named feature raise its name's CLIP score?",
        description="On seeds and prompts not used for naming, measure the fraction of "
        "named features whose\namplification raises the CLIP score of their name (and "
        "whose suppression lowers it), against\nrandom directions of equal norm named the "
        "same way. Writes eval.json and eval.md.",
    )


__all__ = [
    "corpus_prompts",
    "collect_activations",
    "fit_text_sae",
    "sae_metrics",
    "evaluate_artefact",
    "eval_markdown",
    "add_parser",
]
