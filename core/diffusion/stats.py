"""Per-feature statistics over the corpus: the unit steering strengths are measured in.

Why: "amplify by 2" means twice the feature's max activation on the corpus, so strengths are
comparable across features and SAEs.
"""

from __future__ import annotations

import random

import torch

from saescope.core.sae import SAE


@torch.inference_mode()
def feature_stats(sae: SAE, acts: torch.Tensor, batch: int = 8192) -> dict[str, list[float]]:
    """Firing frequency, mean activation when firing and max activation of every feature over
    raw activations [N, d_in] (the unit steering strengths are measured in)."""
    w = sae.cfg.d_sae
    count = torch.zeros(w, dtype=torch.float64)
    total = torch.zeros(w, dtype=torch.float64)
    mx = torch.zeros(w)
    for i in range(0, len(acts), batch):
        z = sae.encode(acts[i : i + batch].float())
        on = z > 0
        count += on.sum(0).double()
        total += z.sum(0).double()
        mx = torch.maximum(mx, z.max(0).values)
    n = max(1, len(acts))
    mean = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    return {
        "frequency": (count / n).tolist(),
        "mean_active": mean.tolist(),
        "max": mx.tolist(),
        "n_tokens": int(len(acts)),
    }


def alive_features(stats: dict) -> list[int]:
    return [i for i, m in enumerate(stats["max"]) if m > 0]


def sample_features(stats: dict, n: int | None, seed: int = 0) -> list[int]:
    """``n`` live features drawn uniformly at random (all live ones if ``n`` is None/larger)."""
    alive = alive_features(stats)
    if not alive:
        raise ValueError("no feature of this SAE ever fired on the corpus: nothing to name")
    if n is None or n >= len(alive):
        return alive
    return sorted(random.Random(seed).sample(alive, int(n)))


__all__ = ["feature_stats", "alive_features", "sample_features"]
