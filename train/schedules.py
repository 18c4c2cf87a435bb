"""Learning-rate and sparsity schedules, as pure functions of the step (so resuming is exact)."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, base_lr: float, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up over ``warmup`` steps, constant, then linear decay to 0 over the last
    ``decay_fraction`` of training (the schedule of Conerly et al. 2024)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = int(total * decay_fraction)
    decay_start = total - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return base_lr * max(0.0, (total - step) / decay_steps)
    return base_lr


def sparsity_at(step: int, warmup: int, final: float) -> float:
    """L1/L0 coefficient ramped linearly from 0 to ``final`` over ``warmup`` steps."""
    if warmup <= 0 or step >= warmup:
        return final
    return final * step / warmup


def k_at(step: int, warmup: int, final_k: int, d_sae: int, start_factor: int = 4) -> int:
    """k for k-sparse SAEs, annealed geometrically from ``start_factor * k`` down to ``k``.

    Starting with more active latents keeps early gradients flowing to many latents (fewer dead
    ones), the k-sparse analogue of ramping the L1 coefficient.
    """
    start = min(d_sae, final_k * start_factor)
    if warmup <= 0 or step >= warmup or start <= final_k:
        return final_k
    frac = step / warmup
    return max(final_k, int(round(start * math.exp(frac * math.log(final_k / start)))))
