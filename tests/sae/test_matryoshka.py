"""Matryoshka: nested prefixes (defaults and validation) and a loss over every prefix."""

from __future__ import annotations

import pytest
import torch

from saescope.core.sae import SAEConfig, default_matryoshka_prefixes


def test_matryoshka_prefixes_and_validation() -> None:
    assert default_matryoshka_prefixes(1024) == [64, 128, 256, 512, 1024]
    with pytest.raises(ValueError, match="end at d_sae"):
        SAEConfig(d_in=8, d_sae=64, architecture="matryoshka", k=4, matryoshka_prefixes=[8, 32])
    with pytest.raises(ValueError, match="0 < k <= d_sae"):
        SAEConfig(d_in=8, d_sae=64, architecture="matryoshka", k=0)
    cfg = SAEConfig(d_in=8, d_sae=64, architecture="matryoshka", k=4)
    assert cfg.matryoshka_prefixes == [4, 8, 16, 32, 64]  # filled in by the architecture


def test_loss_averages_the_prefix_reconstructions(make_sae) -> None:
    sae = make_sae("matryoshka", k=4, matryoshka_prefixes=[16, 64])
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    sae.set_normalization(x)
    out = sae.train_forward(x)
    # the reported MSE is the full width's; the loss averages it with the 16-latent prefix's
    with torch.no_grad():
        xn = sae.normalize(x)
        codes = sae._activate(sae.pre_acts(xn), training=True)
        dense = codes.to_dense(64)
        mse16 = (dense[:, :16] @ sae.W_dec[:16] + sae.b_dec - xn).pow(2).mean()
        mse64 = (dense @ sae.W_dec + sae.b_dec - xn).pow(2).mean()
    assert out.mse.item() == pytest.approx(mse64.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((mse16.item() + mse64.item()) / 2, rel=1e-5)
    assert out.aux.item() == 0.0 and out.sparsity.item() == 0.0
