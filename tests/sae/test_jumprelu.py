"""JumpReLU: learned per-feature thresholds trained through straight-through estimators."""

from __future__ import annotations

import math

import pytest
import torch

from saescope.core.sae import get_architecture


def test_inference_codes_keep_values_above_the_threshold(make_sae) -> None:
    sae = make_sae("jumprelu", jumprelu_init_threshold=0.2)
    assert torch.allclose(sae.log_threshold, torch.full((64,), math.log(0.2)))
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pre = sae.pre_acts(sae.normalize(x))
        assert torch.equal(sae.encode(x), pre * (pre > sae.log_threshold.exp()))


def test_l0_penalty_counts_active_latents_and_trains_the_thresholds(make_sae) -> None:
    sae = make_sae("jumprelu", l1_coefficient=0.01, jumprelu_bandwidth=10.0)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    sae.set_normalization(x)
    out = sae.train_forward(x)
    assert out.sparsity.item() == pytest.approx(out.l0.item())  # the L0 term is the count
    out.loss.backward()
    # the step has no gradient; the straight-through estimator gives the thresholds one
    assert sae.log_threshold.grad is not None and sae.log_threshold.grad.abs().sum() > 0


def test_saelens_thresholds_become_log_thresholds() -> None:
    cls = get_architecture("jumprelu")
    thr = torch.tensor([0.5, 2.0])
    assert torch.allclose(cls.saelens_extra_tensors({"threshold": thr})["log_threshold"], thr.log())
    with pytest.raises(ValueError, match="without a threshold tensor"):
        cls.saelens_extra_tensors({})
