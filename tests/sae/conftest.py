"""Fixtures of the SAE tests: one factory for small SAEs of any registered architecture."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from saescope.core.sae import SAE, SAEConfig


@pytest.fixture(scope="session")
def make_sae() -> Callable[..., SAE]:
    """``make_sae(arch, d=16, w=64, k=4, seed=0, **cfg)``: a fresh SAE (penalised archs get an
    L1/L0 coefficient of 1e-3 unless given). Session-scoped so hypothesis tests can use it."""

    def make(arch: str, d: int = 16, w: int = 64, k: int = 4, seed: int = 0, **kw) -> SAE:
        coef = kw.pop("l1_coefficient", 1e-3 if arch in ("relu", "jumprelu") else 0.0)
        cfg = SAEConfig(d_in=d, d_sae=w, architecture=arch, k=k, l1_coefficient=coef, **kw)
        return SAE(cfg, seed=seed)

    return make
