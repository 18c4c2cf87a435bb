"""Shared SAE machinery: unit-norm decoder, normalisation, AuxK, sparse decode, errors, and that
every architecture learns; architecture-specific rules live in ``test_<architecture>.py``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saescope.core.sae import ARCHITECTURES, ShapeMismatch
from saescope.train.schedules import lr_at, sparsity_at

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("arch", ARCHITECTURES)
@FAST
@given(lr=st.floats(1e-4, 1e-1), seed=st.integers(0, 1000))
def test_decoder_rows_stay_unit_norm(arch: str, lr: float, seed: int, make_sae) -> None:
    sae = make_sae(arch, seed=seed)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(seed)) * 3 + 1
    sae.set_normalization(x)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(3):
        loss = sae.train_forward(x).loss
        opt.zero_grad()
        loss.backward()
        sae.remove_parallel_grads()
        opt.step()
        sae.normalize_decoder()
    norms = sae.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_remove_parallel_grads_leaves_only_tangent_component(make_sae) -> None:
    sae = make_sae("relu")
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_grads()
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5


@FAST
@given(scale=st.floats(1e-3, 1e3), shift_factor=st.floats(-100, 100), seed=st.integers(0, 1000))
def test_normalisation_is_inverted_and_makes_codes_scale_invariant(
    scale: float, shift_factor: float, seed: int, make_sae
) -> None:
    # the shift is relative to the scale: float32 inputs cannot resolve 1e-3 steps around 1e2
    shift = shift_factor * scale
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=g, dtype=torch.float64).float()
    a = make_sae("relu", seed=seed)  # continuous codes: no top-k near-ties to flip
    a.set_normalization(x)
    # normalise -> denormalise is the identity
    assert torch.allclose(a.denormalize(a.normalize(x)), x, atol=1e-4, rtol=1e-4)
    # normalised data has mean 0 and mean squared norm d_in
    xn = a.normalize(x)
    assert xn.mean(0).abs().max() < 1e-4
    assert math.isclose(float(xn.pow(2).sum(-1).mean()), 16.0, rel_tol=1e-3)
    # the same SAE weights on affinely transformed data (with re-estimated constants) give the
    # same codes and a reconstruction transformed the same way: callers never normalise by hand
    b = make_sae("relu", seed=seed)
    b.load_state_dict(a.state_dict())
    y = x * scale + shift
    b.set_normalization(y)
    assert torch.allclose(a.encode(x), b.encode(y), atol=1e-3, rtol=1e-3)
    assert torch.allclose(b(y), a(x) * scale + shift, atol=1e-3 * max(1.0, scale), rtol=1e-3)


def test_geometric_median_init_is_robust_to_outliers(make_sae) -> None:
    x = torch.zeros(1000, 16)
    x[:10] = 1000.0  # 1% outliers drag the mean far away, not the median
    sae = make_sae("relu", normalization="none")
    sae.init_decoder_bias(x)
    assert sae.b_dec.abs().max() < 1.0
    assert x.mean(0).abs().max() > 5.0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_learns_synthetic_sparse_data(arch: str, make_sae) -> None:
    """A few hundred steps must cut the FVU well below 1 on truly sparse data."""
    torch.manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(96, 24), dim=-1)

    def data(n: int) -> torch.Tensor:
        z = (torch.rand(n, 96) < 0.04).float() * torch.rand(n, 96) * 3
        return z @ dictionary * 4 + 2

    sae = make_sae(
        arch, d=24, w=96, k=6, l1_coefficient={"relu": 0.01, "jumprelu": 0.01}.get(arch, 0.0)
    )
    x0 = data(8000)
    sae.set_normalization(x0)
    sae.init_decoder_bias(x0[:2000])
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(300):
        out = sae.train_forward(data(256), dead_mask=torch.zeros(96, dtype=torch.bool))
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_grads()
        opt.step()
        sae.normalize_decoder()
    x = data(2000)
    with torch.no_grad():
        fvu = float(((sae(x) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        l0 = float((sae.encode(x) > 0).float().sum(-1).mean())
    assert fvu < 0.5, (arch, fvu)
    assert l0 < 48, (arch, l0)


def test_auxk_loss_only_with_dead_latents_and_it_trains_them(make_sae) -> None:
    sae = make_sae("topk", k=2)
    x = torch.randn(128, 16)
    sae.set_normalization(x)
    none = sae.train_forward(x, dead_mask=torch.zeros(64, dtype=torch.bool))
    assert none.aux.item() == 0.0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[32:] = True
    out = sae.train_forward(x, dead_mask=dead)
    assert out.aux.item() > 0
    out.loss.backward()
    assert sae.W_enc.grad[:, 32:].abs().sum() > 0  # dead latents receive gradient


def test_schedules() -> None:
    assert lr_at(0, 1000, 1.0, 100, 0.2) == pytest.approx(0.01)
    assert lr_at(500, 1000, 1.0, 100, 0.2) == 1.0
    assert lr_at(900, 1000, 1.0, 100, 0.2) == pytest.approx(0.5)
    assert lr_at(999, 1000, 1.0, 100, 0.2) > 0
    assert sparsity_at(50, 100, 2.0) == 1.0 and sparsity_at(200, 100, 2.0) == 2.0


def test_wrong_width_and_unknown_feature_errors(make_sae) -> None:
    sae = make_sae("topk")
    sae.cfg.model_id, sae.cfg.layer = "some/model", 10
    with pytest.raises(ShapeMismatch, match="width 16.*some/model layer 10"):
        sae.encode(torch.randn(3, 17))
    with pytest.raises(ShapeMismatch):
        sae.decode(torch.randn(3, 63))
    with pytest.raises(ValueError, match="unknown feature 64"):
        sae.check_feature(64)
    assert sae.check_feature("5") == 5


def test_sparse_decode_matches_embedding_bag_values_and_gradients() -> None:
    from saescope.core.sae import sparse_decode

    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (64, 4), generator=g)
    vals = torch.rand(64, 4, generator=g, requires_grad=True)
    w = torch.randn(50, 8, generator=g, requires_grad=True)
    grad = torch.randn(64, 8, generator=g)
    sparse_decode(idx, vals, w).backward(grad)
    gv, gw = vals.grad.clone(), w.grad.clone()
    vals.grad = w.grad = None
    ref = torch.nn.functional.embedding_bag(idx, w, per_sample_weights=vals, mode="sum")
    ref.backward(grad)
    assert torch.allclose(sparse_decode(idx, vals, w), ref)
    assert torch.allclose(gv, vals.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)
    assert torch.autograd.gradcheck(
        lambda v, ww: sparse_decode(idx[:5, :2], v, ww),
        (
            torch.rand(5, 2, dtype=torch.double, requires_grad=True),
            torch.randn(50, 3, dtype=torch.double, requires_grad=True),
        ),
    )


def test_sae_builds_the_registered_class_and_keeps_its_repr(make_sae) -> None:
    from saescope.core.sae import SAE, SAEConfig, get_architecture

    for arch in ARCHITECTURES:
        sae = make_sae(arch)
        assert type(sae) is get_architecture(arch) and isinstance(sae, SAE)
        assert repr(sae).startswith(f"SAE({sae.cfg.name}, d_in=16, d_sae=64)")
    cfg = SAEConfig(d_in=8, d_sae=32, architecture="relu")
    with pytest.raises(ValueError, match="'topk' SAE, the config asks for 'relu'"):
        get_architecture("topk")(cfg)
