"""ReLU: dense ReLU codes, an L1 penalty weighted by decoder norms, and its warm-up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saescope.train.schedules import sparsity_at


def test_sparsity_warmup_really_changes_the_loss(make_sae) -> None:
    sae = make_sae("relu", l1_coefficient=0.5)
    x = torch.randn(128, 16)
    sae.set_normalization(x)
    early = sae.train_forward(x, sparsity_coefficient=sparsity_at(0, 100, 0.5)).loss.item()
    late = sae.train_forward(x, sparsity_coefficient=sparsity_at(100, 100, 0.5)).loss.item()
    assert late > early + 1e-3


def test_codes_are_relu_and_the_penalty_weighs_decoder_norms(make_sae) -> None:
    sae = make_sae("relu", l1_coefficient=0.1)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    sae.set_normalization(x)
    with torch.no_grad():
        sae.W_dec.mul_(2.0)  # rows of norm 2: the penalty doubles
        pre = sae.pre_acts(sae.normalize(x))
        assert torch.equal(sae.encode(x), F.relu(pre))
        out = sae.train_forward(x)
    expected = (F.relu(pre) * 2.0).sum(-1).mean()
    assert torch.allclose(out.sparsity, expected, rtol=1e-5)
    assert torch.allclose(out.loss, out.mse + 0.1 * out.sparsity, rtol=1e-5)
    assert sae.cfg.name == "relu-l0.1-x4"


def test_encoder_starts_scaled_towards_the_identity(make_sae) -> None:
    sae = make_sae("relu", d=16, w=64)  # scale 2 d / d_sae = 0.5
    assert torch.allclose(sae.W_enc, sae.W_dec.t() * 0.5)
