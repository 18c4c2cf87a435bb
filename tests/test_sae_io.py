"""Saving, loading, Hub round trips and imports of SAE checkpoints (real files and safetensors)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from saescope.core.sae import ARCHITECTURES, SAE, SAEConfig, ShapeMismatch
from saescope.core.sae_io import (
    CheckpointError,
    check_compatible,
    from_pretrained,
    import_saelens,
    import_saev,
    push_to_hub,
    save_sae,
)

ROOT = Path(__file__).resolve().parents[1]


def trained_like(arch: str, seed: int = 0, d: int = 12, w: int = 48) -> SAE:
    """An SAE with non-trivial values in every tensor (so a round trip can really fail)."""
    cfg = SAEConfig(
        d_in=d,
        d_sae=w,
        architecture=arch,
        k=3,
        l1_coefficient=1e-3,
        model_id="tiny/model",
        model_revision="abc",
        layer=2,
        layer_requested=-1,
        token_kinds=["patch"],
        metrics={"fvu": 0.25},
    )
    sae = SAE(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        sae.set_normalization(torch.randn(100, d, generator=g) * 5 + 2)
        sae.threshold.fill_(0.3)
    return sae


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_round_trip_is_exact(arch: str, tmp_path: Path) -> None:
    sae = trained_like(arch)
    save_sae(sae, tmp_path / "sae")
    loaded = from_pretrained(tmp_path / "sae")
    for (n1, t1), (n2, t2) in zip(sae.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1
    assert loaded.cfg == sae.cfg
    x = torch.randn(20, 12) * 5 + 2
    assert torch.equal(sae.eval()(x), loaded(x))
    files = sorted(p.name for p in (tmp_path / "sae").iterdir())
    assert files == ["config.json", "sae.safetensors"]
    cfg = json.loads((tmp_path / "sae" / "config.json").read_text())
    for key in (
        "architecture",
        "d_in",
        "d_sae",
        "model_id",
        "model_revision",
        "layer",
        "token_kinds",
        "library_version",
        "format_version",
        "metrics",
        "hyperparameters",
    ):
        assert key in cfg


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), arch=st.sampled_from(ARCHITECTURES))
def test_round_trip_property(seed: int, arch: str, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("rt")
    sae = trained_like(arch, seed=seed)
    save_sae(sae, folder)
    loaded = from_pretrained(folder)
    assert all(
        torch.equal(a, b) for a, b in zip(sae.state_dict().values(), loaded.state_dict().values())
    )


def test_corrupt_and_truncated_weights_give_clear_errors(tmp_path: Path) -> None:
    save_sae(trained_like("topk"), tmp_path)
    w = tmp_path / "sae.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(tmp_path)


def test_wrong_shapes_in_weights_are_reported(tmp_path: Path) -> None:
    save_sae(trained_like("topk"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["d_sae"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tensor W_(enc|dec) has shape .* needs"):
        from_pretrained(tmp_path)


def test_mismatched_model_layer_or_width(tmp_path: Path) -> None:
    save_sae(trained_like("topk"), tmp_path)
    with pytest.raises(ShapeMismatch, match="trained on 'tiny/model'"):
        from_pretrained(tmp_path, expected_model="other/model")
    with pytest.raises(ShapeMismatch, match="layer 2, not layer 5"):
        from_pretrained(tmp_path, expected_layer=5)
    with pytest.raises(ShapeMismatch, match="width 12"):
        check_compatible(from_pretrained(tmp_path), d_in=384)
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path / "missing", token=None)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    save_sae(trained_like("relu"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="upgrade saescope"):
        from_pretrained(tmp_path)


# ------------------------------------------------------------------------------ saev
def write_saev(path: Path, header: dict, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes((json.dumps(header) + "\n").encode() + buf.getvalue())


def saev_state(d: int, w: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d, w, generator=g),
        "b_enc": torch.randn(w, generator=g),
        "W_dec": torch.randn(w, d, generator=g),
        "b_dec": torch.randn(d, generator=g),
    }


@pytest.mark.parametrize(
    "header",
    [
        {"d_vit": 16, "exp_factor": 4, "n_reinit_samples": 10, "seed": 0},  # pre-schema (published)
        {"schema": 1, "cls": "Relu", "cfg": {"d_vit": 16, "exp_factor": 4}},
        {
            "schema": 2,
            "cfg": {"d_model": 16, "d_sae": 64, "activation": {"cls": "Relu", "params": {}}},
        },
    ],
)
def test_import_saev_relu_matches_its_forward(header: dict, tmp_path: Path) -> None:
    """saev's forward by era: configs with ``d_vit`` (the paper's saev, which wrote the
    published checkpoints) subtract b_dec before the encoder; ``d_model`` ones (current saev)
    do not. This test used to expect no subtraction for every header, the wrong maths of issue
    14; tests/test_sae_import_peers.py checks both eras against saev's own code."""
    state = saev_state(16, 64)
    write_saev(tmp_path / "sae.pt", header, state)
    sae = from_pretrained(tmp_path / "sae.pt")
    assert sae.cfg.architecture == "relu" and sae.cfg.d_sae == 64
    x = torch.randn(10, 16)
    paper_era = "d_vit" in header.get("cfg", header)
    xin = x - state["b_dec"] if paper_era else x
    codes = torch.relu(xin @ state["W_enc"] + state["b_enc"])  # saev's own forward
    assert torch.allclose(sae.encode(x), codes, atol=1e-4)
    assert torch.allclose(sae.decode(codes), codes @ state["W_dec"] + state["b_dec"], atol=1e-4)


def test_import_saev_topk_and_normalisation(tmp_path: Path) -> None:
    state = saev_state(16, 64)
    header = {
        "schema": 3,
        "cfg": {"d_model": 16, "d_sae": 64, "activation": {"cls": "TopK", "params": {"top_k": 5}}},
    }
    write_saev(tmp_path / "sae.pt", header, state)
    sample = torch.randn(500, 16) * 7 + 3
    sae = import_saev(tmp_path / "sae.pt", normalization_sample=sample)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 5
    assert ((sae.encode(sample) > 0).sum(-1) <= 5).all()
    assert sae.norm_scale.item() == pytest.approx(7.0, rel=0.1)


class Boom:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def test_saev_import_never_unpickles_arbitrary_objects(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save({"W_enc": Boom()}, buf)
    (tmp_path / "evil.pt").write_bytes(b'{"d_vit": 16, "exp_factor": 4}\n' + buf.getvalue())
    with pytest.raises(CheckpointError, match="evil.pt is not a safe checkpoint") as err:
        import_saev(tmp_path / "evil.pt")
    assert "weights_only" not in str(err.value)
    assert not (tmp_path / "pwned.txt").exists()
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="first line must be a JSON"):
        import_saev(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------ SAELens
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_import_saelens_folder(apply_b_dec: bool, tmp_path: Path) -> None:
    state = saev_state(16, 64, seed=3)
    save_file(state, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": 16,
                "d_sae": 64,
                "architecture": "standard",
                "activation_fn_str": "relu",
                "apply_b_dec_to_input": apply_b_dec,
                "normalize_activations": "none",
                "model_name": "vit-x",
                "hook_name": "blocks.9.hook_resid_post",
            }
        )
    )
    sae = from_pretrained(tmp_path)  # detected automatically
    x = torch.randn(10, 16)
    xin = x - state["b_dec"] if apply_b_dec else x
    expected = torch.relu(xin @ state["W_enc"] + state["b_enc"])
    assert torch.allclose(sae.encode(x), expected, atol=1e-4)
    assert sae.cfg.model_id == "vit-x"


def test_import_saelens_jumprelu(tmp_path: Path) -> None:
    state = saev_state(16, 64, seed=4)
    state["threshold"] = torch.rand(64) + 0.1
    save_file(state, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(
        json.dumps({"d_in": 16, "d_sae": 64, "architecture": "jumprelu"})
    )
    sae = import_saelens(tmp_path)
    x = torch.randn(10, 16)
    pre = (x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]
    assert torch.allclose(sae.encode(x), pre * (pre > state["threshold"]), atol=1e-4)


# ------------------------------------------------------------------------------ Hub
def test_push_to_local_hub_target_and_load_back(local_hub, tmp_path: Path) -> None:
    sae = trained_like("batchtopk")
    url = push_to_hub(sae, "me/sae-test", api=local_hub(tmp_path))
    assert url.endswith("me/sae-test")
    repo = tmp_path / "me" / "sae-test"
    assert {p.name for p in repo.iterdir()} == {"config.json", "sae.safetensors", "README.md"}
    loaded = from_pretrained(repo)
    assert all(
        torch.equal(a, b) for a, b in zip(sae.state_dict().values(), loaded.state_dict().values())
    )


def test_from_pretrained_hub_id_resolves_offline_from_the_hub_cache(tmp_path: Path) -> None:
    """The real huggingface_hub code path, offline: a repo in the Hub cache layout."""
    sae = trained_like("topk")
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--me--cached-sae" / "snapshots" / commit
    save_sae(sae, snap)
    (cache / "models--me--cached-sae" / "refs").mkdir(parents=True)
    (cache / "models--me--cached-sae" / "refs" / "main").write_text(commit)
    code = (
        "import torch; from saescope.core.sae_io import from_pretrained\n"
        "s = from_pretrained('me/cached-sae')\n"
        "print(s.cfg.name, float(s.W_enc.sum()))\n"
        "try:\n    from_pretrained('me/not-there')\n"
        "except FileNotFoundError as e:\n    print('MISSING', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    name, total = out.stdout.splitlines()[0].split()
    assert name == sae.cfg.name and float(total) == pytest.approx(
        float(sae.W_enc.detach().sum()), rel=1e-6
    )
    assert "MISSING" in out.stdout and "me/not-there" in out.stdout
