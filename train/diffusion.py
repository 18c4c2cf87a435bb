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

The SAE training loop reuses :func:`train.fit._step` (learning-rate schedule, k annealing, AuxK on
dead latents, unit-norm decoder) on activations held in memory: a text corpus is small, and the
activation store is laid out for image tokens (CLS/registers/patch grid).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saescope.core import diffusion as D
from saescope.core.sae import K_SPARSE, SAE
from saescope.train.cli_util import announce_config


# ------------------------------------------------------------------------------ fit
def corpus_prompts(builtin: bool, files: list[str] | None, max_prompts: int | None = None,
                   seed: int = 0) -> list[str]:
    """The training prompts: built-in templated prompts and/or prompt files, de-duplicated."""
    prompts: list[str] = D.builtin_corpus() if builtin else []
    for f in files or []:
        prompts += D.read_prompt_file(f)
    prompts = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if not prompts:
        raise ValueError("the corpus is empty: keep the built-in prompts or give --prompts FILE")
    if max_prompts and len(prompts) > max_prompts:
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(prompts), generator=g)[:max_prompts].tolist())
        prompts = [prompts[i] for i in keep]
    return prompts


@torch.inference_mode()
def collect_activations(pipe, prompts: list[str], positions: str = "all", batch: int = 64,
                        progress: bool = True) -> torch.Tensor:
    """Text-encoder token outputs [N tokens, d] of the steerable positions of every prompt."""
    chunks = []
    for i in tqdm(range(0, len(prompts), batch), desc="encode", disable=not progress,
                  dynamic_ncols=True, unit="batch"):
        enc = D.encode_prompts(pipe, prompts[i:i + batch])
        chunks.append(enc.embeds[enc.mask(positions)].float().cpu())
    return torch.cat(chunks)


def fit_text_sae(acts: torch.Tensor, arch: str = "topk", expansion: float = 4.0, k: int = 8,
                 l1: float = 3e-3, steps: int = 1000, batch_size: int = 1024, lr: float = 1e-3,
                 seed: int = 0, progress: bool = True, **provenance) -> SAE:
    """Train one SAE on in-memory activations with the step of ``train.fit``."""
    from saescope.train.fit import FitConfig, SAESpec, _Member, _step

    if len(acts) < 2:
        raise ValueError(f"need at least 2 activation vectors to fit an SAE, got {len(acts)}")
    if steps < 1:
        raise ValueError(f"--steps must be positive, got {steps}")
    spec = SAESpec(arch, expansion, k=k if arch in K_SPARSE else None,
                   l1_coefficient=l1 if arch not in K_SPARSE else 0.0)
    cfg = FitConfig(store="<memory>", out="<memory>", saes=[spec], batch_size=batch_size, lr=lr,
                    lr_warmup_steps=max(1, min(100, steps // 10)), seed=seed, progress=progress,
                    dead_window_tokens=max(10 * batch_size, steps * batch_size // 5))
    sae_cfg = spec.config(acts.shape[1], **provenance)
    sae_cfg.hyperparameters = {"lr": lr, "batch_size": batch_size, "steps": steps,
                               "tokens": steps * batch_size, "seed": seed, "optimizer": "adam",
                               "unit_norm_decoder": True, "trainer": "train.diffusion"}
    torch.manual_seed(seed)
    sae = SAE(sae_cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    sample = acts[torch.randperm(len(acts), generator=g)[:100_000]]
    sae.set_normalization(sample)
    sae.init_decoder_bias(sample[:20_000])
    member = _Member(sae, torch.optim.Adam(sae.parameters(), lr=lr), torch.zeros(sae_cfg.d_sae, dtype=torch.long))
    order, at = torch.randperm(len(acts), generator=g), 0
    bar = tqdm(total=steps, desc="fit", disable=not progress, dynamic_ncols=True, unit="step")
    for step in range(steps):
        if at + batch_size > len(order):  # a new epoch: reshuffle
            order, at = torch.randperm(len(acts), generator=g), 0
        x = acts[order[at:at + batch_size]]
        at += batch_size
        _step(member, x, step, steps, cfg)
        bar.update(1)
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(fvu=f"{member.last['fvu']:.3f}", l0=f"{member.last['l0']:.1f}")
    bar.close()
    sae.eval()
    return sae


@torch.inference_mode()
def sae_metrics(sae: SAE, acts: torch.Tensor) -> dict:
    """FVU, L0 and dead fraction over ``acts`` (raw units)."""
    recon = sae(acts)
    fvu = float((recon - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum().clamp_min(1e-12))
    z = sae.encode(acts)
    on = z > 0
    return {"fvu": fvu, "l0": float(on.sum(-1).float().mean()),
            "dead_fraction": float((~on.any(0)).float().mean()), "n_tokens": int(len(acts))}


def _threads(args: argparse.Namespace) -> None:
    """Why an option: tiny models gain nothing from intra-op threads, and on a busy 2-core
    machine OpenMP spinning made a tiny-pipeline generation 10-30x slower than one thread."""
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))


def run_fit(args: argparse.Namespace) -> int:
    _threads(args)
    announce_config(args, args.out, "diffusion_fit_config.json")
    out = Path(args.out)
    if (out / D.MANIFEST).exists() and not args.overwrite:
        raise FileExistsError(f"{out} already holds an artefact; pass --overwrite to replace it")
    prompts = corpus_prompts(not args.no_builtin, args.prompts, args.max_prompts, args.seed)
    pipe = D.load_pipeline(args.pipeline, args.device)
    t0 = time.perf_counter()
    acts = collect_activations(pipe, prompts, args.positions, args.encode_batch, args.progress)
    print(f"encoded {len(prompts)} prompts -> {len(acts)} tokens of width {acts.shape[1]} "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    spec = str(args.pipeline) if str(args.pipeline) == D.TINY else D.resolve_pipeline_spec(args.pipeline)
    sae = fit_text_sae(acts, args.arch, args.expansion, args.k, args.l1, args.steps,
                       args.batch_size, args.lr, args.seed, args.progress,
                       model_id=spec, token_kinds=["text"])
    sae.cfg.hyperparameters.update(site=D.SITE, positions=args.positions)
    metrics = sae_metrics(sae, acts)
    sae.cfg.metrics = metrics
    stats = D.feature_stats(sae, acts)
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    manifest = {
        "pipeline": spec, "scorer": args.scorer, "tiny": D.is_tiny(args.pipeline),
        "site": D.SITE, "d_model": D.text_width(pipe),
        "max_length": int(pipe.tokenizer.model_max_length), "positions": args.positions,
        "image_size": D.image_size(pipe),
        "corpus": {"builtin": not args.no_builtin, "files": [str(f) for f in args.prompts or []],
                   "n_prompts": len(prompts), "sha256": digest},
        "fit": {"arch": args.arch, "expansion": args.expansion, "k": args.k, "steps": args.steps,
                "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, **metrics},
    }
    D.save_artefact(out, sae, stats, manifest)
    alive = len(D.alive_features(stats))
    print(f"{sae.cfg.name}: FVU {metrics['fvu']:.4f}  L0 {metrics['l0']:.1f}  "
          f"live features {alive}/{sae.cfg.d_sae}  -> {out}")
    return 0


# ------------------------------------------------------------------------------ name / eval
def _artefact(args: argparse.Namespace) -> D.Artefact:
    """The artefact, with the pipeline/scorer overrides of the command line applied."""
    _threads(args)
    art = D.load_artefact(args.artefact)
    if getattr(args, "pipeline", None):
        art.manifest["pipeline"] = str(args.pipeline)
    if getattr(args, "scorer", None):
        art.manifest["scorer"] = str(args.scorer)
    return art


def _words(args: argparse.Namespace) -> list[str]:
    if args.words:
        words = D.read_prompt_file(args.words)
    else:
        words = D.vocabulary()
    return list(dict.fromkeys(words))


def _setting(prompts: list[str] | None, objects: list[str], seeds: list[int],
             args: argparse.Namespace) -> D.Setting:
    prompts = prompts or D.neutral_prompts(objects)
    for p in prompts:
        D.check_prompt(p)
    return D.Setting(prompts=list(prompts), seeds=list(seeds), steps=args.steps_gen,
                     guidance=args.guidance, negative_prompt=args.negative_prompt,
                     positions=args.positions)


def _features(art: D.Artefact, ids: list[int] | None, n: int | None, seed: int) -> list[int]:
    if ids:
        feats = [art.sae.check_feature(f) for f in ids]
        dead = [f for f in feats if art.stats["max"][f] <= 0]
        if dead:
            raise ValueError(f"features {dead} never fired on the corpus: amplifying them by a "
                             "multiple of their max activation is a no-op")
        return feats
    return D.sample_features(art.stats, n, seed)


def _out_folder(args: argparse.Namespace, art: D.Artefact) -> Path:
    if args.out:
        return Path(args.out)
    if Path(args.artefact).is_dir():
        return Path(args.artefact)
    raise ValueError(f"{args.artefact} is not a local folder: give --out for the results")


def run_name(args: argparse.Namespace) -> int:
    art = _artefact(args)
    out = _out_folder(args, art)
    announce_config(args, out, "diffusion_name_config.json")
    st = D.Steerer(art, device=args.device)
    words = _words(args)
    feats = _features(art, args.features, args.n_features, args.seed)
    setting = _setting(args.name_prompts, args.objects, args.seeds, args)
    probes = D.feature_probes(art.sae, art.stats, feats, args.strength)
    rows = D.name_probes(st.pipe, st.scorer, probes, words, setting, args.progress)
    names = {r["feature"]: {k: v for k, v in r.items() if k not in ("label", "feature")} for r in rows}
    naming = {"strength": args.strength, "words": words, "prompts": setting.prompts,
              "seeds": setting.seeds, "steps": setting.steps, "guidance": setting.guidance,
              "negative_prompt": setting.negative_prompt, "positions": setting.positions,
              "scorer": art.scorer, "sample_seed": args.seed}
    manifest = {**art.manifest, "naming": naming}
    D.save_artefact(out, art.sae, art.stats, manifest, names)
    for f, n in sorted(names.items()):
        print(f"feature {f:>5}: {n['name']:<12} (relative CLIP score {n['delta']:+.3f}, "
              f"raw {n['delta_raw']:+.3f}, margin {n['margin']:.3f})")
    print(f"named {len(names)} features -> {out / D.NAMES_FILE}")
    if args.push_to_hub:
        print(D.push_artefact(out, args.push_to_hub, private=args.private))
    return 0


def eval_markdown(result: dict) -> str:
    """The evaluation as markdown: a summary table (features vs random control) and per feature."""
    head = ("| directions | n | amplify raises named word (vs vocabulary) | suppress lowers it | "
            "amplify raises raw CLIP score | suppress lowers raw | named word top-1 (chance) | "
            "mean Δ relative score (amplify / suppress) |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for label, s in (("SAE features", result["features"]), ("random directions (control)", result.get("control"))):
        if not s or not s.get("n"):
            continue
        lines.append(f"| {label} | {s['n']} | **{s['fraction_amplify_raises']:.0%}** | "
                     f"{s['fraction_suppress_lowers']:.0%} | {s['fraction_amplify_raises_raw']:.0%} | "
                     f"{s['fraction_suppress_lowers_raw']:.0%} | "
                     f"{s['fraction_top1']:.0%} ({s['chance_top1']:.1%}) | "
                     f"{s['mean_delta_amplify']:+.3f} / {s['mean_delta_suppress']:+.3f} |")
    per = ["", "| feature | name | Δ when naming | Δ held-out amplify | Δ held-out suppress | "
           "Δ raw held-out amplify |", "|---|---|---|---|---|---|"]
    for r in result["features"]["rows"]:
        per.append(f"| {r['feature']} | {r['name']} | {r.get('delta_naming', float('nan')):+.3f} | "
                   f"{r['delta_amplify']:+.3f} | {r['delta_suppress']:+.3f} | {r['delta_amplify_raw']:+.3f} |")
    return head + "\n".join(lines) + "\n" + "\n".join(per) + "\n"


def evaluate_artefact(st: D.Steerer, art: D.Artefact, eval_setting: D.Setting, control: bool = True,
                      progress: bool = True, seed: int = 0) -> dict:
    """Held-out evaluation of the artefact's names, plus the random-direction control named and
    evaluated with exactly the same settings and push norms."""
    if not art.names:
        raise ValueError(f"{art.path} has no feature names yet: run 'saescope diffusion-name' first")
    naming = art.manifest.get("naming") or {}
    words = naming.get("words") or D.vocabulary()
    strength = float(naming.get("strength", 8.0))
    feats = sorted(art.names)
    probes = D.feature_probes(art.sae, art.stats, feats, strength)
    res = D.evaluate_probes(st.pipe, st.scorer, probes, [art.names[f]["name"] for f in feats],
                            words, eval_setting, progress, desc="eval features")
    for r in res["rows"]:
        r["delta_naming"] = art.names[r["feature"]]["delta"]
    result = {"features": res, "strength": strength, "n_words": len(words),
              "eval_setting": vars(eval_setting), "naming_setting": {k: v for k, v in naming.items() if k != "words"}}
    if control:
        name_setting = D.Setting(prompts=naming["prompts"], seeds=naming["seeds"], steps=naming["steps"],
                                 guidance=naming["guidance"], negative_prompt=naming.get("negative_prompt", ""),
                                 positions=naming.get("positions", "all"))
        rnd = D.random_probes(probes, seed)
        named = D.name_probes(st.pipe, st.scorer, rnd, words, name_setting, progress, desc="name control")
        result["control"] = D.evaluate_probes(st.pipe, st.scorer, rnd, [n["name"] for n in named],
                                              words, eval_setting, progress, desc="eval control")
    return result


def run_eval(args: argparse.Namespace) -> int:
    art = _artefact(args)
    out = _out_folder(args, art)
    if not art.names:
        raise ValueError(f"{art.path} has no feature names yet: run 'saescope diffusion-name' first")
    naming = art.manifest.get("naming") or {}
    overlap = set(args.seeds) & set(naming.get("seeds", []))
    if overlap and not args.allow_seen_seeds:
        raise ValueError(f"seeds {sorted(overlap)} were used for naming; held-out evaluation needs "
                         "other seeds (or pass --allow-seen-seeds)")
    recipe = {"steps_gen": naming.get("steps", 4), "guidance": naming.get("guidance", 5.0),
              "negative_prompt": naming.get("negative_prompt", ""),
              "positions": naming.get("positions", "all")}
    for attr, default in recipe.items():  # unless overridden: the same image recipe as naming
        if getattr(args, attr) is None:
            setattr(args, attr, default)
    announce_config(args, out, "diffusion_eval_config.json")
    st = D.Steerer(art, device=args.device)
    setting = _setting(args.eval_prompts, args.objects, args.seeds, args)
    result = evaluate_artefact(st, art, setting, control=args.control, progress=args.progress,
                               seed=args.seed)
    md = eval_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    D.write_json_atomic(out / "eval.json", result)
    (out / "eval.md").write_text(md)
    print(md)
    f = result["features"]
    print(f"fraction of features whose amplification raises the CLIP score of their name "
          f"(relative to the vocabulary): "
          f"{f['fraction_amplify_raises']:.3f} ({f['n']} features)"
          + (f"; random-direction control: {result['control']['fraction_amplify_raises']:.3f}"
             if "control" in result else ""))
    return 0


def run_tiny(args: argparse.Namespace) -> int:
    folder = D.save_tiny(args.out, seed=args.seed, size=args.size)
    print(f"tiny random pipeline (images are noise) -> {folder}")
    return 0


# ------------------------------------------------------------------------------ CLI
def _generation_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    p.add_argument("--steps-gen", type=int, default=4 if defaults else None,
                   help="diffusion steps per image" + ("" if defaults else " (default: as in naming)"))
    p.add_argument("--guidance", type=float, default=5.0 if defaults else None,
                   help="classifier-free guidance scale (<= 1 disables it)")
    p.add_argument("--negative-prompt", default="" if defaults else None,
                   help="negative prompt (its embeddings are never steered)")
    p.add_argument("--positions", default="all" if defaults else None, choices=["all", "prompt"],
                   help="token positions to steer: all but the start token, or the prompt's own")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artefact", required=True, help="artefact folder or Hub repo id (from diffusion-fit)")
    p.add_argument("--pipeline", default=None, help="override the artefact's pipeline (folder, Hub id, tiny)")
    p.add_argument("--scorer", default=None, help="override the CLIP scorer (folder or Hub id)")
    p.add_argument("--out", default=None, help="where to write (default: the artefact folder)")
    p.add_argument("--words", default=None, help="text file of attribute words, one a line "
                   "(default: the built-in vocabulary)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest for tiny models)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling features / controls")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def add_parser(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("diffusion-tiny", formatter_class=fmt,
                       help="save a tiny random StableDiffusion pipeline + CLIP scorer (offline)",
                       description="Build a tiny random StableDiffusion pipeline and CLIP scorer "
                       "from configs and save them (images are noise; for tests and demos).")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (multiple of 8)")
    p.set_defaults(func=run_tiny, step="diffusion-tiny")

    p = sub.add_parser("diffusion-fit", formatter_class=fmt,
                       help="fit an SAE on a diffusion pipeline's text-encoder token outputs",
                       description="Encode a prompt corpus with the pipeline's CLIP text encoder "
                       "and fit an SAE on the token outputs the UNet attends to.")
    p.add_argument("--pipeline", required=True,
                   help="diffusers pipeline folder, Hub id (e.g. stabilityai/sd-turbo) or 'tiny'")
    p.add_argument("--out", required=True, help="artefact folder to write")
    p.add_argument("--prompts", nargs="*", default=None, help="text files of prompts, one a line")
    p.add_argument("--no-builtin", action="store_true", help="leave out the built-in templated prompts")
    p.add_argument("--max-prompts", type=int, default=None, help="random subset of the corpus")
    p.add_argument("--positions", default="all", choices=["all", "prompt"],
                   help="token positions to train on: all but the start token, or the prompt's own")
    p.add_argument("--arch", default="topk", choices=["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
    p.add_argument("--expansion", type=float, default=4.0, help="d_sae / text-encoder width")
    p.add_argument("--k", type=int, default=8, help="active latents (k-sparse archs)")
    p.add_argument("--l1", type=float, default=3e-3, help="L1 (relu) / L0 (jumprelu) coefficient")
    p.add_argument("--steps", type=int, default=1000, help="training steps")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encode-batch", type=int, default=64, help="prompts per text-encoder batch")
    p.add_argument("--scorer", default=None, help="CLIP scorer for naming (default: the pipeline's "
                   f"clip_scorer folder, else {D.DEFAULT_SCORER})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest for tiny models)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_fit, step="diffusion-fit")

    p = sub.add_parser("diffusion-name", formatter_class=fmt,
                       help="name features by amplifying them and scoring images with CLIP",
                       description="For each sampled feature, generate with it amplified and not "
                       "(same seeds) and name it after the vocabulary word whose CLIP score rises most "
                       "relative to the other words.")
    _common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--n-features", type=int, default=32, help="live features sampled at random")
    g.add_argument("--features", type=int, nargs="+", default=None, help="these feature ids instead")
    p.add_argument("--strength", type=float, default=8.0,
                   help="amplification, in units of the feature's max activation on the corpus")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--objects", nargs="+", default=D.OBJECTS[:4],
                   help="objects of the neutral naming prompts 'a photo of a OBJECT'")
    p.add_argument("--name-prompts", nargs="+", default=None, help="naming prompts instead of --objects")
    _generation_args(p)
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="then upload the artefact")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=run_name, step="diffusion-name")

    p = sub.add_parser("diffusion-eval", formatter_class=fmt,
                       help="held-out test: does amplifying a named feature raise its name's CLIP score?",
                       description="On seeds and prompts not used for naming, measure the fraction "
                       "of named features whose amplification raises the CLIP score of their name "
                       "(and whose suppression lowers it), against random directions of equal norm "
                       "named the same way. Writes eval.json and eval.md.")
    _common(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002, 1003])
    p.add_argument("--objects", nargs="+", default=D.OBJECTS[4:8],
                   help="objects of the held-out prompts 'a photo of a OBJECT'")
    p.add_argument("--eval-prompts", nargs="+", default=None, help="held-out prompts instead of --objects")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the random-direction control")
    p.add_argument("--allow-seen-seeds", action="store_true")
    _generation_args(p, defaults=False)
    p.set_defaults(func=run_eval, step="diffusion-eval")


__all__ = ["corpus_prompts", "collect_activations", "fit_text_sae", "sae_metrics",
           "evaluate_artefact", "eval_markdown", "add_parser"]
