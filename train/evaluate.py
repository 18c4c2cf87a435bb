"""SAE evaluation: reconstruction, sparsity, latent health, and downstream recovery.

Metrics (all streaming, never loading a whole store):

- ``mse``: mean squared error per element in raw activation units;
- ``fvu``: sum of squared errors / total variance around the data mean (normalised MSE);
- ``explained_variance``: 1 - FVU;
- ``l0``: mean number of active latents per token;
- ``dead_fraction``: latents with no activation over the evaluated tokens;
- ``dense_fraction``: latents active on more than 1% of tokens;
- downstream recovery: how much a frozen head's output moves when layer L is replaced by the SAE
  reconstruction, relative to replacing it by the mean activation (1 = unchanged, 0 = as bad as
  mean ablation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saescope.core.sae import SAE
from saescope.core.steering import splice
from saescope.train.cli import OutOption, add_step, announce_config

DENSE_THRESHOLD = 0.01


@torch.no_grad()
def evaluate_sae(
    sae: SAE,
    store,
    max_tokens: int = 200_000,
    batch_size: int = 4096,
    seed: int = 1,
    progress: bool = True,
) -> dict:
    """Reconstruction and sparsity metrics of ``sae`` over up to ``max_tokens`` store tokens."""
    sae.eval()
    d, w = sae.cfg.d_in, sae.cfg.d_sae
    if store.d_model != d:
        from saescope.core.sae import ShapeMismatch

        raise ShapeMismatch(f"store has width {store.d_model}, the SAE expects {d}")
    n = 0
    sse = 0.0
    sum_x = torch.zeros(d, dtype=torch.float64)
    sum_sq = 0.0
    l0_sum = 0.0
    counts = torch.zeros(w, dtype=torch.long)
    shuffle = min(2**16, max(batch_size, max_tokens))
    bar = tqdm(total=max_tokens, unit="tok", disable=not progress, desc="evaluate")
    for x in store.iter_batches(batch_size, shuffle_buffer=shuffle, seed=seed, loop=False):
        x = x[: max_tokens - n].float()
        if not len(x):
            break
        z = sae.encode(x)
        recon = sae.decode(z)
        active = z > 0
        sse += float((recon - x).double().pow(2).sum())
        sum_x += x.double().sum(0)
        sum_sq += float(x.double().pow(2).sum())
        l0_sum += float(active.sum())
        counts += active.sum(0)
        n += len(x)
        bar.update(len(x))
        if n >= max_tokens:
            break
    bar.close()
    if n == 0:
        raise ValueError("the store yielded no tokens to evaluate")
    total_var = sum_sq - float((sum_x**2).sum()) / n
    freq = (counts.double() / n).numpy()
    fvu = sse / max(total_var, 1e-12)
    return {
        "n_tokens": n,
        "mse": sse / (n * d),
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l0": l0_sum / n,
        "dead_fraction": float((counts == 0).double().mean()),
        "dense_fraction": float((torch.from_numpy(freq) > DENSE_THRESHOLD).double().mean()),
        "feature_frequency": freq,
    }


@torch.no_grad()
def downstream_recovery(
    sae: SAE, backbone, head, images: Iterable, batch_size: int = 8, progress: bool = True
) -> dict:
    """Head-output change when the SAE's layer is replaced by its reconstruction.

    ``head(final_tokens, layout)`` is any frozen head (the offline model's saliency decoder, a
    probe); its outputs are compared with the mean absolute difference. Only the token kinds the
    SAE was trained on are replaced. Returns the change under the SAE, under mean ablation, and
    ``recovery = 1 - change_sae / change_mean_ablation``.
    """
    if sae.cfg.layer is None:
        raise ValueError("the SAE does not record its layer; cannot splice it into the backbone")
    layer = backbone.resolve_layer(sae.cfg.layer)
    images = list(images)
    d_sae = d_abl = 0.0
    agree = n_px = 0
    bar = tqdm(total=len(images), unit="img", disable=not progress, desc="downstream")
    for i in range(0, len(images), batch_size):
        pixels = backbone.preprocess(images[i : i + batch_size])
        out = backbone.forward_layers(pixels, [layer])
        h, layout = out.tokens[layer], out.layout
        pos = layout.indices(sae.cfg.token_kinds)
        sel = h[:, pos]
        base = head(backbone.run_from(layer, h), layout).float()
        with_sae = head(backbone.run_from(layer, splice(h, pos, sae(sel))), layout).float()
        mean = sae.norm_mean.expand_as(sel)
        ablated = head(backbone.run_from(layer, splice(h, pos, mean)), layout).float()
        d_sae += float((with_sae - base).abs().mean()) * len(pixels)
        d_abl += float((ablated - base).abs().mean()) * len(pixels)
        if getattr(head, "kind", "") == "segmentation":
            thr = getattr(head, "threshold", 0.5)
            agree += int(((with_sae > thr) == (base > thr)).sum())
            n_px += base.numel()
        bar.update(len(pixels))
    bar.close()
    n = len(images)
    result = {
        "head": getattr(head, "name", type(head).__name__),
        "n_images": n,
        "change_sae": d_sae / n,
        "change_mean_ablation": d_abl / n,
        "recovery": 1.0 - (d_sae / max(d_abl, 1e-12)),
    }
    if n_px:
        result["mask_agreement"] = agree / n_px
    return result


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class EvaluateConfig(OutOption):
    """``saescope evaluate``: an SAE, the store to measure it on, optional images for a head."""

    sae: str
    """SAE folder, saev .pt file, or Hub id"""
    store: str
    """activation store to evaluate on"""
    max_tokens: int = 200_000
    """tokens evaluated"""
    batch_size: int = 4096
    """tokens per batch"""
    source: str | None = None
    """images for downstream recovery, e.g. builtin:photos (needs a head)"""
    max_images: int = 32
    """images used for downstream recovery"""
    out: str | None = None
    """write metrics JSON here (default: beside the SAE)"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "evaluate",
        EvaluateConfig,
        run,
        help="evaluate an SAE on a store (and a frozen head, if given images)",
        description="Reconstruction (MSE, FVU, explained variance), sparsity (L0), dead and "
        "dense latents\non an activation store; with --source, downstream recovery through "
        "the backbone's frozen\nhead (the offline model's saliency decoder).",
    )


def run(cfg: EvaluateConfig) -> int:
    from saescope.core.sae_io import check_compatible, from_pretrained
    from saescope.core.store import ActivationStore

    store = ActivationStore(cfg.store)
    sae = from_pretrained(cfg.sae)
    check_compatible(sae, store.model_id, store.layer, store.d_model)
    out_dir = Path(cfg.out) if cfg.out else (Path(cfg.sae) if Path(cfg.sae).is_dir() else Path("."))
    announce_config(cfg, "evaluate", out_dir)
    metrics = evaluate_sae(sae, store, cfg.max_tokens, cfg.batch_size)
    metrics.pop("feature_frequency")
    if cfg.source:
        from saescope.core.backbones import load_backbone
        from saescope.core.heads import load_head_for
        from saescope.core.sources import open_source

        backbone = load_backbone(sae.cfg.model_id, sae.cfg.model_revision)
        head = load_head_for(backbone)
        src = open_source(cfg.source)
        images = []
        for _, img in src:
            if not isinstance(img, Exception):
                images.append(img)
            if len(images) >= cfg.max_images:
                break
        metrics["downstream"] = downstream_recovery(sae, backbone, head, images)
    print(json.dumps(metrics, indent=2))
    (out_dir / "eval_metrics.json").write_text(json.dumps(metrics, indent=2))
    return 0
