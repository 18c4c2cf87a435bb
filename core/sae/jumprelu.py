"""JumpReLU SAE: per-feature learned thresholds and an L0 penalty (Rajamanoharan et al. 2024).

Why: a threshold separates "is the feature present" from "how strong is it", removing the
shrinkage an L1 penalty causes. The step function has no useful gradient, so the thresholds are
trained with straight-through estimators (a rectangle kernel of width ``jumprelu_bandwidth``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from saescope.core.sae.base import SAE, Codes
from saescope.core.sae.registry import register_architecture


class _StepSTE(torch.autograd.Function):
    """Heaviside step with a rectangle-kernel pseudo-gradient w.r.t. the threshold."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        g_thr = (-(1.0 / bw) * near * grad_out).sum(dim=tuple(range(pre.dim() - 1)))
        return None, g_thr, None


class _JumpReLUSTE(torch.autograd.Function):
    """``pre * H(pre - threshold)`` with a pseudo-gradient for the threshold."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        active = (pre > threshold).to(pre.dtype)
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        g_pre = grad_out * active
        g_thr = (-(threshold / bw) * near * grad_out).sum(dim=tuple(range(pre.dim() - 1)))
        return g_pre, g_thr, None


@register_architecture
class JumpReLUSAE(SAE):
    """``pre * (pre > exp(log_threshold))``; ``l1_coefficient`` weighs the L0 penalty."""

    architecture = "jumprelu"
    description = "per-feature learned thresholds trained with an L0 penalty"
    penalty_option = "l0"
    default_hyperparameters = {"l1_coefficient": 1e-3}
    saelens_names = (("jumprelu", None),)

    def _init_extra_parameters(self) -> None:
        self.log_threshold = nn.Parameter(
            torch.full((self.cfg.d_sae,), math.log(self.cfg.jumprelu_init_threshold))
        )

    @classmethod
    def saelens_extra_tensors(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "threshold" not in state:
            raise ValueError("JumpReLU SAE without a threshold tensor")
        return {"log_threshold": state["threshold"].float().clamp_min(1e-12).log()}

    def _activate(self, pre: torch.Tensor, training: bool, k: int | None = None) -> Codes:
        thr = self.log_threshold.exp()
        if training:
            return Codes(dense=_JumpReLUSTE.apply(pre, thr, self.cfg.jumprelu_bandwidth))
        return Codes(dense=pre * (pre > thr))

    def _sparsity_term(self, pre: torch.Tensor, codes: Codes) -> torch.Tensor:
        step = _StepSTE.apply(pre, self.log_threshold.exp(), self.cfg.jumprelu_bandwidth)
        return step.sum(-1).mean()
