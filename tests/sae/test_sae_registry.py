"""The architecture registry: every name list comes from it, every architecture has its own
test module here, and every architecture round-trips through save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import saescope.core.sae as sae_pkg
from saescope.core.sae import (
    SAE,
    Codes,
    SAEConfig,
    architecture_names,
    get_architecture,
    is_k_sparse,
    k_sparse_names,
    register_architecture,
    registry,
)
from saescope.core.sae_io import _saelens_architecture, from_pretrained, save_sae

HERE = Path(__file__).resolve().parent


def test_the_five_architectures_are_registered_in_order() -> None:
    assert architecture_names() == ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
    assert sae_pkg.ARCHITECTURES == architecture_names()
    assert sae_pkg.K_SPARSE == k_sparse_names() == ("topk", "batchtopk", "matryoshka")
    assert is_k_sparse("topk") and not is_k_sparse("relu") and not is_k_sparse("gated")


@pytest.mark.parametrize("arch", architecture_names())
def test_every_architecture_has_its_own_test_module(arch: str) -> None:
    assert (HERE / f"test_{arch}.py").is_file(), f"add tests/sae/test_{arch}.py"


def test_unknown_architectures_are_refused_with_the_registered_names() -> None:
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        SAEConfig(d_in=8, d_sae=64, architecture="gated")
    with pytest.raises(ValueError, match=r"'gated': expected one of \('relu', 'topk'"):
        get_architecture("gated")


@pytest.mark.parametrize("arch", architecture_names())
def test_every_architecture_round_trips_save_and_load(arch: str, tmp_path: Path) -> None:
    cfg = SAEConfig(d_in=12, d_sae=48, architecture=arch, k=3, l1_coefficient=1e-3)
    sae = SAE(cfg, seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        sae.set_normalization(torch.randn(100, 12, generator=g) * 5 + 2)
        sae.threshold.fill_(0.3)
    save_sae(sae, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is type(sae) is get_architecture(arch)
    assert loaded.cfg == sae.cfg
    assert list(loaded.state_dict()) == list(sae.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(sae.state_dict().values(), loaded.state_dict().values())
    )
    x = torch.randn(20, 12, generator=g) * 5 + 2
    assert torch.equal(sae.eval()(x), loaded(x))
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == arch


def test_a_new_architecture_is_one_registered_class(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_ARCHITECTURES", dict(registry._ARCHITECTURES))

    @register_architecture
    class AbsTopK(SAE):
        architecture = "abstopk"
        k_sparse = True

        def _activate(self, pre: torch.Tensor, training: bool, k: int | None = None) -> Codes:
            vals, idx = pre.abs().topk(k or self.cfg.k, dim=-1, sorted=False)
            return Codes(indices=idx, values=F.relu(vals))

    assert architecture_names()[-1] == "abstopk" and sae_pkg.K_SPARSE[-1] == "abstopk"
    with pytest.raises(ValueError, match="0 < k <= d_sae"):
        SAEConfig(d_in=8, d_sae=32, architecture="abstopk", k=None)
    sae = SAE(SAEConfig(d_in=8, d_sae=32, architecture="abstopk", k=2))
    assert type(sae) is AbsTopK and sae.cfg.name == "abstopk-k2-x4"
    assert ((sae.encode(torch.randn(5, 8)) != 0).sum(-1) <= 2).all()
    with pytest.raises(ValueError, match="already registered"):
        register_architecture(type("Other", (SAE,), {"architecture": "abstopk"}))


def test_importer_names_come_from_the_architectures() -> None:
    cases = {
        ("standard", "relu"): "relu",
        ("relu", "relu"): "relu",
        ("standard", "topk"): "topk",
        ("topk", "relu"): "topk",
        ("gated", "topk"): "topk",
        ("batchtopk", "topk"): "batchtopk",
        ("jumprelu", "relu"): "jumprelu",
        ("gated", "relu"): None,
        ("matryoshka", "x"): None,
    }
    for (name, act), arch in cases.items():
        assert _saelens_architecture(name, act) == arch, (name, act)
    saev = [get_architecture(a).saev_activation for a in architecture_names()]
    assert [s for s in saev if s] == ["Relu", "TopK", "BatchTopK"]
