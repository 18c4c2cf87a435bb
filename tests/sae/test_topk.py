"""TopK: exactly the k largest pre-activations per token; k annealing; k validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saescope.core.sae import SAEConfig
from saescope.train.schedules import k_at

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(k=st.integers(1, 32), n=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_topk_keeps_exactly_k(k: int, n: int, seed: int, make_sae) -> None:
    sae = make_sae("topk", w=64, k=k, seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # all pre-activations positive: exactly k must survive
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    z = sae.encode(x)
    assert ((z > 0).sum(-1) == k).all()
    # and they are the k largest pre-activations
    pre = sae.pre_acts(sae.normalize(x))
    top = pre.topk(k, dim=-1).indices.sort(-1).values
    assert torch.equal((z > 0).nonzero()[:, 1].view(n, k).sort(-1).values, top)


def test_k_annealing_really_changes_the_codes_and_loss(make_sae) -> None:
    # k-sparse: annealing k from 4k down to k changes the codes and the reconstruction loss
    x = torch.randn(128, 16)
    topk = make_sae("topk", k=2)
    topk.set_normalization(x)
    k0, k1 = k_at(0, 100, 2, 64), k_at(100, 100, 2, 64)
    assert (k0, k1) == (8, 2)
    assert topk.train_forward(x, k=k0).l0.item() == 8
    assert (
        abs(topk.train_forward(x, k=k0).mse.item() - topk.train_forward(x, k=k1).mse.item()) > 1e-3
    )


def test_k_must_fit_the_width() -> None:
    with pytest.raises(ValueError, match="0 < k <= d_sae"):
        SAEConfig(d_in=8, d_sae=64, architecture="topk", k=0)
    with pytest.raises(ValueError, match="0 < k <= d_sae"):
        SAEConfig(d_in=8, d_sae=64, architecture="topk", k=65)


def test_topk_has_no_penalty_and_a_k_name(make_sae) -> None:
    sae = make_sae("topk", k=4)
    out = sae.train_forward(torch.randn(32, 16))
    assert out.sparsity.item() == 0.0
    assert sae.cfg.name == "topk-k4-x4"
