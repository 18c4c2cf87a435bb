"""BatchTopK: k x batch codes in training, a learned global threshold at inference."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(k=st.integers(1, 8), n=st.integers(2, 64), seed=st.integers(0, 10_000))
def test_batchtopk_keeps_at_most_k_per_token_on_average(
    k: int, n: int, seed: int, make_sae
) -> None:
    sae = make_sae("batchtopk", w=64, k=k, seed=seed)
    sae.train()
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    out = sae.train_forward(x)
    assert out.l0.item() <= k + 1e-6
    assert sae.threshold.item() > 0  # an inference threshold was learned


def test_inference_uses_topk_until_a_threshold_is_learned_then_the_threshold(make_sae) -> None:
    sae = make_sae("batchtopk", k=3)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
        assert ((sae.encode(x) > 0).sum(-1) == 3).all()  # threshold 0: plain TopK
        sae.threshold.fill_(100.5)
        pre = sae.pre_acts(sae.normalize(x))
        assert torch.equal(sae.encode(x), pre * (pre > 100.5))
