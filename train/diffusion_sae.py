"""Collect a diffusion pipeline's text-encoder token outputs and fit an SAE on them in memory.

A module of its own so that the app's offline demo, the benchmark and ``saescope diffusion-fit``
share one corpus -> activations -> SAE path without loading the CLI steps. The training loop reuses
:func:`train.fit._step` (learning-rate schedule, k annealing, AuxK on dead latents, unit-norm
decoder) on activations held in memory: a text corpus is small, and the activation store is laid
out for image tokens (CLS/registers/patch grid).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from saescope.core import diffusion as D
from saescope.core.sae import SAE, is_k_sparse


def corpus_prompts(
    builtin: bool, files: list[str] | None, max_prompts: int | None = None, seed: int = 0
) -> list[str]:
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
def collect_activations(
    pipe: Any, prompts: list[str], positions: str = "all", batch: int = 64, progress: bool = True
) -> torch.Tensor:
    """Text-encoder token outputs [N tokens, d] of the steerable positions of every prompt."""
    chunks = []
    for i in tqdm(
        range(0, len(prompts), batch),
        desc="encode",
        disable=not progress,
        dynamic_ncols=True,
        unit="batch",
    ):
        enc = D.encode_prompts(pipe, prompts[i : i + batch])
        chunks.append(enc.embeds[enc.mask(positions)].float().cpu())
    return torch.cat(chunks)


def fit_text_sae(
    acts: torch.Tensor,
    arch: str = "topk",
    expansion: float = 4.0,
    k: int = 8,
    l1: float = 3e-3,
    steps: int = 1000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    **provenance: Any,
) -> SAE:
    """Train one SAE on in-memory activations with the step of ``train.fit``."""
    from saescope.train.fit import FitConfig, SAESpec, _Member, _step

    if len(acts) < 2:
        raise ValueError(f"need at least 2 activation vectors to fit an SAE, got {len(acts)}")
    if steps < 1:
        raise ValueError(f"--steps must be positive, got {steps}")
    spec = SAESpec(
        arch,
        expansion,
        k=k if is_k_sparse(arch) else None,
        l1_coefficient=0.0 if is_k_sparse(arch) else l1,
    )
    cfg = FitConfig(
        store="<memory>",
        out="<memory>",
        saes=[spec],
        batch_size=batch_size,
        lr=lr,
        lr_warmup_steps=max(1, min(100, steps // 10)),
        seed=seed,
        progress=progress,
        dead_window_tokens=max(10 * batch_size, steps * batch_size // 5),
    )
    sae_cfg = spec.config(acts.shape[1], **provenance)
    sae_cfg.hyperparameters = {
        "lr": lr,
        "batch_size": batch_size,
        "steps": steps,
        "tokens": steps * batch_size,
        "seed": seed,
        "optimizer": "adam",
        "unit_norm_decoder": True,
        "trainer": "train.diffusion",
    }
    torch.manual_seed(seed)
    sae = SAE(sae_cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    sample = acts[torch.randperm(len(acts), generator=g)[:100_000]]
    sae.set_normalization(sample)
    sae.init_decoder_bias(sample[:20_000])
    member = _Member(
        sae, torch.optim.Adam(sae.parameters(), lr=lr), torch.zeros(sae_cfg.d_sae, dtype=torch.long)
    )
    order, at = torch.randperm(len(acts), generator=g), 0
    bar = tqdm(total=steps, desc="fit", disable=not progress, dynamic_ncols=True, unit="step")
    for step in range(steps):
        if at + batch_size > len(order):  # a new epoch: reshuffle
            order, at = torch.randperm(len(acts), generator=g), 0
        x = acts[order[at : at + batch_size]]
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
    return {
        "fvu": fvu,
        "l0": float(on.sum(-1).float().mean()),
        "dead_fraction": float((~on.any(0)).float().mean()),
        "n_tokens": int(len(acts)),
    }


__all__ = ["corpus_prompts", "collect_activations", "fit_text_sae", "sae_metrics"]
