"""Imported SAEs give the peer tools' own codes and reconstructions (issue 14, defects 1, 2, 6).

The checkpoints under ``tests/data/peer_checkpoints`` were written by saev (paper-era 0.1.0 and
current), SAELens and sparsify themselves, and ``expected.safetensors`` beside each holds the
codes and reconstructions their own code computes on ``inputs.safetensors``
(``bench/make_peer_fixtures.py``, versions in ``peer_versions.json``). No peer is needed here.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saescope.core.sae_import import saev_subtracts_b_dec
from saescope.core.sae_io import (
    CheckpointError,
    from_pretrained,
    import_folder,
    import_saelens,
    import_saev,
    import_sparsify,
    read_saev_checkpoint,
)
from saescope.train.__main__ import main as cli

DATA = Path(__file__).resolve().parent / "data" / "peer_checkpoints"
TOL = 1e-5

# case -> (how our importer is called on the peer's files, the architecture it must become)
MATCHES = {
    "saev_paper_relu": (lambda d: import_saev(d / "sae.pt"), "relu"),
    "saev_head_relu": (lambda d: from_pretrained(d / "sae.pt"), "relu"),
    "saev_head_topk": (lambda d: from_pretrained(d / "sae.pt"), "topk"),
    "saev_head_batchtopk": (lambda d: import_saev(d / "sae.pt"), "batchtopk"),
    "saelens_topk_training": (lambda d: from_pretrained(d / "checkpoint"), "topk"),
    "saelens_topk_inference": (lambda d: import_saelens(d / "checkpoint"), "topk"),
    "saelens_topk_scaled_training": (lambda d: from_pretrained(d / "checkpoint"), "topk"),
    "saelens_standard_no_b_dec": (lambda d: import_saelens(d / "checkpoint"), "relu"),
    "saelens_standard_whitened_training": (lambda d: import_folder(d / "checkpoint"), "relu"),
    "saelens_jumprelu_training": (lambda d: from_pretrained(d / "checkpoint"), "jumprelu"),
    "saelens_batchtopk_training": (lambda d: from_pretrained(d / "checkpoint"), "batchtopk"),
    "saelens_batchtopk_inference": (lambda d: from_pretrained(d / "checkpoint"), "jumprelu"),
    "saelens_matryoshka_training": (lambda d: import_saelens(d / "checkpoint"), "matryoshka"),
    "saelens_matryoshka_inference": (lambda d: import_saelens(d / "checkpoint"), "jumprelu"),
    "sparsify_topk": (
        lambda d: from_pretrained(d / "checkpoint", subfolder="layers.3"),
        "topk",
    ),
}

# case folder -> (importer, what the one-line refusal must say)
REFUSALS = {
    "refused_saelens_layer_norm/checkpoint": (import_saelens, "normalize_activations='layer_norm'"),
    "refused_saelens_constant_norm_rescale/checkpoint": (
        from_pretrained,
        "normalize_activations='constant_norm_rescale'",
    ),
    "refused_saelens_scaled_without_factor/checkpoint": (
        from_pretrained,
        "'expected_average_only_in' needs the activation scaling factor.*activation_scaler.json",
    ),
    "refused_saelens_gated/checkpoint": (import_saelens, "SAELens architecture 'gated'"),
    "refused_sparsify_transcoder/layers.0": (from_pretrained, r"transcoders \(transcode: true\)"),
    "refused_sparsify_skip/layers.0": (import_sparsify, r"skip_connection: true"),
    "refused_sparsify_groupmax/layers.0": (import_folder, "activation 'groupmax'"),
    "sparsify_topk/checkpoint": (from_pretrained, r"one SAE per sub-folder \(layers\.3\)"),
}


def inputs() -> torch.Tensor:
    return load_file(str(DATA / "inputs.safetensors"))["x"]


def assert_matches(sae, case: str) -> None:
    expected = load_file(str(DATA / case / "expected.safetensors"))
    x = inputs()
    with torch.no_grad():
        codes, recon = sae.encode(x), sae(x)
    assert (expected["codes"] != 0).any()
    err_codes = float((codes - expected["codes"]).abs().max())
    err_recon = float((recon - expected["recon"]).abs().max())
    assert err_codes <= TOL and err_recon <= TOL, (case, err_codes, err_recon)
    assert torch.equal(codes != 0, expected["codes"] != 0), f"{case}: active latents differ"


@pytest.mark.parametrize("case", sorted(MATCHES))
def test_import_gives_the_peers_own_codes(case: str) -> None:
    load, arch = MATCHES[case]
    sae = load(DATA / case)
    assert sae.cfg.architecture == arch
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (16, 64)
    assert_matches(sae, case)


def test_every_fixture_is_tested() -> None:
    cases = {p.name for p in DATA.iterdir() if p.is_dir()}
    refused = {key.split("/")[0] for key in REFUSALS}
    assert cases == set(MATCHES) | refused
    versions = json.loads((DATA / "peer_versions.json").read_text())
    assert {"saev (paper era)", "saev (current)", "sae-lens", "eai-sparsify"} <= set(versions)
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < 2_000_000


@pytest.mark.parametrize("where", sorted(REFUSALS))
def test_unrepresentable_checkpoints_are_refused_naming_why(where: str) -> None:
    load, message = REFUSALS[where]
    with pytest.raises(CheckpointError, match=message) as err:
        load(DATA / where)
    assert "\n" not in str(err.value)


def test_unknown_folder_says_which_formats_were_tried(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(b"")
    for load in (from_pretrained, import_folder):
        with pytest.raises(CheckpointError) as err:
            load(tmp_path)
        text = str(err.value)
        assert "not a recognised SAE folder" in text and "\n" not in text
        for tried in ("saescope (config.json", "SAELens (cfg.json", "sparsify (cfg.json"):
            assert tried in text
        assert "cfg.json, weights.bin" in text


# ------------------------------------------------------------------------------ damaged files
def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def drop_tensor(path: Path, name: str) -> None:
    state = load_file(str(path))
    state.pop(name)
    save_file(state, str(path))


SAELENS = "saelens_batchtopk_training/checkpoint"
SPARSIFY = "sparsify_topk/checkpoint/layers.3"
DAMAGE = {
    "cfg not json": (SAELENS, lambda d: (d / "cfg.json").write_text("{not json"), "not valid JSON"),
    "cfg a list": (SAELENS, lambda d: (d / "cfg.json").write_text("[1]"), "not a JSON object"),
    "no d_in": (SAELENS, lambda d: edit_json(d / "cfg.json", d_in=None), "d_in must be an integer"),
    "wrong d_sae": (SAELENS, lambda d: edit_json(d / "cfg.json", d_sae=32), "W_dec has shape"),
    "truncated": (
        SAELENS,
        lambda d: (d / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00"),
        "corrupt or truncated",
    ),
    "no b_dec": (SAELENS, lambda d: drop_tensor(d / "sae_weights.safetensors", "b_dec"), "b_dec"),
    "no threshold": (
        SAELENS,
        lambda d: drop_tensor(d / "sae_weights.safetensors", "topk_threshold"),
        "lacks its topk_threshold",
    ),
    "k too big": (SPARSIFY, lambda d: edit_json(d / "cfg.json", k=1000), "0 < k <= d_sae"),
    "bad width": (
        SPARSIFY,
        lambda d: edit_json(d / "cfg.json", num_latents="many"),
        "num_latents must be an integer",
    ),
    "no encoder": (
        SPARSIFY,
        lambda d: drop_tensor(d / "sae.safetensors", "encoder.weight"),
        "lack encoder.weight",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_peer_files_give_one_line_errors(damage: str, tmp_path: Path) -> None:
    where, spoil, message = DAMAGE[damage]
    folder = Path(shutil.copytree(DATA / where, tmp_path / "sae"))
    spoil(folder)
    with pytest.raises(ValueError, match=message) as err:
        from_pretrained(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"schema": 5, "cfg": 5}, "cfg is not a JSON object"),
        ({"schema": 5, "cfg": {"d_model": 16, "activation": {"cls": "Gated"}}}, "'Gated'"),
        ({"schema": 5, "cfg": {"d_sae": 64}}, "no d_vit/d_model"),
    ],
)
def test_damaged_saev_headers_give_one_line_errors(header, message, tmp_path: Path) -> None:
    _, state = read_saev_checkpoint(DATA / "saev_head_relu" / "sae.pt")
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "sae.pt").write_bytes((json.dumps(header) + "\n").encode() + buf.getvalue())
    with pytest.raises(CheckpointError, match=message) as err:
        from_pretrained(tmp_path / "sae.pt")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ SAELens flags
def copy_case(case: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA / case / "checkpoint", tmp_path / case))


def test_scaling_factor_can_be_given_when_the_folder_lacks_it(tmp_path: Path) -> None:
    folder = copy_case("saelens_topk_scaled_training", tmp_path)
    (folder / "activation_scaler.json").unlink()
    with pytest.raises(CheckpointError, match="norm_scaling_factor"):
        import_saelens(folder)
    assert_matches(import_saelens(folder, norm_scaling_factor=0.37), "saelens_topk_scaled_training")


def test_ignoring_rescale_acts_by_decoder_norm_would_be_caught(tmp_path: Path) -> None:
    """The defect: the flag was ignored. With it off the codes must differ a lot (so the
    comparison above can fail), and with it on they match."""
    folder = copy_case("saelens_topk_training", tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["rescale_acts_by_decoder_norm"] = False
    (folder / "cfg.json").write_text(json.dumps(cfg))
    expected = load_file(str(DATA / "saelens_topk_training" / "expected.safetensors"))["codes"]
    wrong = import_saelens(folder).encode(inputs()).detach()
    assert float((wrong - expected).norm() / expected.norm()) > 1.0


def test_older_jumprelu_log_threshold_is_read(tmp_path: Path) -> None:
    folder = copy_case("saelens_jumprelu_training", tmp_path)
    state = load_file(str(folder / "sae_weights.safetensors"))
    state["log_threshold"] = state.pop("threshold").log()
    save_file(state, str(folder / "sae_weights.safetensors"))
    assert_matches(import_saelens(folder), "saelens_jumprelu_training")


def test_pre_6_config_and_finetuning_scaling_factor(tmp_path: Path) -> None:
    folder = copy_case("saelens_topk_inference", tmp_path)
    cfg = {
        "d_in": 16,
        "d_sae": 64,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 8},
        "normalize_activations": False,
        "hook_point": "blocks.3.hook_resid_post",
    }  # SAELens 5.x layout: TopK declared through the activation function
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = import_saelens(folder)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 8
    assert_matches(sae, "saelens_topk_inference")
    cfg["normalize_activations"] = True  # 5.x for 'expected_average_only_in'
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="expected_average_only_in"):
        import_saelens(folder)
    cfg["normalize_activations"] = False
    (folder / "cfg.json").write_text(json.dumps(cfg))
    state = load_file(str(folder / "sae_weights.safetensors"))
    save_file({**state, "scaling_factor": torch.full((64,), 2.0)}, str(folder / "x.safetensors"))
    (folder / "x.safetensors").replace(folder / "sae_weights.safetensors")
    with pytest.raises(CheckpointError, match="finetuning_scaling_factor"):
        import_saelens(folder)


# ------------------------------------------------------------------------------ saev
def test_saev_era_is_decided_from_the_header() -> None:
    assert saev_subtracts_b_dec({"d_vit": 16, "exp_factor": 4})
    assert saev_subtracts_b_dec({"schema": 1, "cls": "Relu", "cfg": {"d_vit": 16}})
    assert not saev_subtracts_b_dec({"schema": 5, "cfg": {"d_model": 16, "d_sae": 64}})
    with pytest.raises(CheckpointError, match="no d_vit/d_model"):
        saev_subtracts_b_dec({"schema": 5, "cfg": {}})


def test_saev_override_changes_the_maths() -> None:
    """The paper-era file read with the current saev's maths: the issue's wrong codes."""
    expected = load_file(str(DATA / "saev_paper_relu" / "expected.safetensors"))["codes"]
    wrong = import_saev(DATA / "saev_paper_relu" / "sae.pt", subtract_b_dec=False)
    assert float((wrong.encode(inputs()).detach() - expected).abs().max()) > 0.1


def rewrite_saev(src: Path, dst: Path, **changes: torch.Tensor | None) -> None:
    header, state = read_saev_checkpoint(src)
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    buf = io.BytesIO()
    torch.save(state, buf)
    dst.write_bytes((json.dumps(header) + "\n").encode() + buf.getvalue())


def test_saev_batchtopk_threshold_cases(tmp_path: Path) -> None:
    src = DATA / "saev_head_batchtopk" / "sae.pt"
    rewrite_saev(src, tmp_path / "zero.pt", **{"activation.threshold": torch.tensor(0.0)})
    sae = import_saev(tmp_path / "zero.pt")  # saev: plain ReLU until a threshold is learned
    _, state = read_saev_checkpoint(src)
    x = inputs()
    relu = torch.relu(x @ state["W_enc"] + state["b_enc"])
    assert sae.cfg.architecture == "relu"
    assert torch.allclose(sae.encode(x), relu, atol=TOL)
    rewrite_saev(src, tmp_path / "old.pt", **{"activation.threshold": None})
    with pytest.warns(UserWarning, match="without an inference threshold"):
        sae = import_saev(tmp_path / "old.pt")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 8


# ------------------------------------------------------------------------------ unsafe files
class Boom:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def test_unsafe_pickle_is_refused_without_suggesting_weights_only_false(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save({"W_enc": Boom()}, buf)
    (tmp_path / "evil.pt").write_bytes(b'{"d_vit": 16, "exp_factor": 4}\n' + buf.getvalue())
    for load in (import_saev, from_pretrained):
        with pytest.raises(CheckpointError) as err:
            load(tmp_path / "evil.pt")
        text = str(err.value)
        assert "evil.pt is not a safe checkpoint" in text and "\n" not in text
        assert "weights_only" not in text
        assert err.value.__suppress_context__ and err.value.__cause__ is None  # no torch advice
    assert cli(["import", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err  # the resolved config, then one error line
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: ") and "evil.pt is not a safe checkpoint" in last
    assert "weights_only" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "pwned.txt").exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:80])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        import_saev(tmp_path / "cut.pt")
    assert "weights_only" not in str(err.value)


# ------------------------------------------------------------------------------ command line
def test_cli_imports_a_sparsify_hookpoint_folder(tmp_path: Path) -> None:
    src = DATA / "sparsify_topk" / "checkpoint" / "layers.3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli(["import", str(src), "--out", str(tmp_path / "sae")]) == 0
    sae = from_pretrained(tmp_path / "sae")
    assert sae.cfg.hyperparameters["imported_from"] == "sparsify"
    assert_matches(sae, "sparsify_topk")
