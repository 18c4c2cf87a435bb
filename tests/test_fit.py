"""SAE training end to end on a real (tiny-model) activation store: sweep, outputs, kill, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope.core.sae_io import from_pretrained

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, tiny_dinov2) -> Path:
    """A real store: a tiny random DINOv2 run over the sklearn digits by the real extractor."""
    from saescope.core.sources import open_source
    from saescope.train.extract import extract

    root = tmp_path_factory.mktemp("fitstore")
    backbone = tiny_dinov2(root / "model")
    return extract(
        backbone,
        open_source("builtin:digits"),
        root / "acts",
        layers=[-2],
        max_images=160,
        progress=False,
    )[0]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saescope.train", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sweep_trains_every_member_and_records_provenance(tiny_store: Path, tmp_path: Path) -> None:
    from saescope.core.store import ActivationStore
    from saescope.train.fit import FitConfig, SAESpec, fit

    store = ActivationStore(tiny_store)
    specs = [SAESpec("topk", 4, k=4), SAESpec("topk", 4, k=8), SAESpec("relu", 4, None, 3e-3)]
    folders = fit(
        FitConfig(
            store=str(tiny_store),
            out=str(tmp_path),
            saes=specs,
            batch_size=256,
            tokens=20_000,
            progress=False,
        )
    )
    assert [f.name for f in folders] == ["topk-k4-x4", "topk-k8-x4", "relu-l0.003-x4"]
    for folder in folders:
        sae = from_pretrained(folder)
        assert sae.cfg.model_id == store.model_id and sae.cfg.layer == store.layer == 1
        assert sae.cfg.layer_requested == -2 and sae.cfg.token_kinds == ["patch"]
        m = sae.cfg.metrics
        assert 0 < m["fvu"] < 1.0 and m["l0"] > 0 and 0 <= m["dead_fraction"] <= 1
        assert m["explained_variance"] == pytest.approx(1 - m["fvu"])
        assert sae.norm_scale.item() != 1.0  # normalisation constants are in the checkpoint
        assert (folder / "feature_frequency.png").stat().st_size > 1000
    k4, k8 = (from_pretrained(f).cfg.metrics for f in folders[:2])
    assert k4["l0"] == pytest.approx(4, abs=0.01) and k8["l0"] == pytest.approx(8, abs=0.01)
    assert k8["fvu"] < k4["fvu"]  # more latents per token reconstruct better
    assert (tmp_path / "fvu_vs_l0.png").stat().st_size > 1000
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and set(log[-1]["saes"]) == {f.name for f in folders}
    # the sparsity warm-up is visible in the log: k anneals down, the L1 coefficient ramps up
    assert log[0]["saes"]["topk-k4-x4"]["k"] == 16 and log[-1]["saes"]["topk-k4-x4"]["k"] == 4
    assert log[0]["saes"]["relu-l0.003-x4"]["sparsity_coefficient"] == 0.0
    assert log[-1]["saes"]["relu-l0.003-x4"]["sparsity_coefficient"] == pytest.approx(3e-3)


def test_training_reduces_loss(tiny_store: Path, tmp_path: Path) -> None:
    from saescope.train.fit import FitConfig, SAESpec, fit

    fit(
        FitConfig(
            store=str(tiny_store),
            out=str(tmp_path),
            saes=[SAESpec("topk", 4, k=4)],
            batch_size=256,
            tokens=30_000,
            progress=False,
            plots=False,
            log_every=1,
        )
    )
    log = [
        json.loads(line)["saes"]["topk-k4-x4"]
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
    ]
    assert log[-1]["fvu"] < 0.6 * log[2]["fvu"]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return {
        f"{d.name}/{k}": v
        for d in sorted(out.iterdir())
        if (d / "sae.safetensors").exists()
        for k, v in load_file(str(d / "sae.safetensors")).items()
    }


@pytest.mark.slow
def test_fit_killed_with_sigkill_resumes_to_identical_weights(
    tiny_store: Path, tmp_path: Path
) -> None:
    args = [
        "fit",
        "--store",
        str(tiny_store),
        "--arch",
        "topk",
        "batchtopk",
        "--k",
        "4",
        "--expansion",
        "4",
        "--batch-size",
        "128",
        "--tokens",
        "120000",
        "--threads",
        "1",
        "--no-plots",
        "--no-progress",
    ]
    clean = run_cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saescope.train",
            *args,
            "--out",
            str(out),
            "--checkpoint-every",
            "0",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["step"] >= 100:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint was written before the kill"
    step_at_kill = json.loads(state.read_text())["step"]
    assert step_at_kill < 937, "the run finished before it could be killed"
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stdout
    a, b = _final_weights(tmp_path / "clean"), _final_weights(out)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "log has duplicated steps after resume"


def test_cli_help_for_every_step(capsys) -> None:
    top = run_cli("--help")  # the real entry point, as a subprocess
    assert top.returncode == 0
    from saescope.train.__main__ import main

    for step in ("extract", "fit", "evaluate", "import", "push", "run"):
        assert step in top.stdout
        with pytest.raises(SystemExit) as exit_info:  # per-step help in-process (saves ~3 s each)
            main([step, "--help"])
        assert exit_info.value.code == 0
        assert "usage: saescope " + step in capsys.readouterr().out, step


def test_cli_fit_and_evaluate_write_config_and_metrics(tiny_store: Path, tmp_path: Path) -> None:
    out = run_cli(
        "fit",
        "--store",
        str(tiny_store),
        "--out",
        str(tmp_path),
        "--k",
        "4",
        "--expansion",
        "2",
        "--batch-size",
        "256",
        "--tokens",
        "5000",
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "fit_config.json").read_text())
    assert cfg["k"] == [4] and cfg["store"] == str(tiny_store) and "saescope_version" in cfg
    assert '"batch_size": 256' in out.stderr  # the resolved config is printed
    ev = run_cli("evaluate", "--sae", str(tmp_path / "topk-k4-x2"), "--store", str(tiny_store))
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((tmp_path / "topk-k4-x2" / "eval_metrics.json").read_text())
    for key in ("mse", "fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction"):
        assert key in metrics


def test_cli_clear_errors(tiny_store: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_cli("fit", "--store", str(empty), "--out", str(tmp_path / "o"))
    assert (
        out.returncode == 2 and "no manifest.json" in out.stderr and "Traceback" not in out.stderr
    )
    # an SAE whose width does not match the store
    from saescope.core.sae import SAE, SAEConfig
    from saescope.core.sae_io import save_sae

    save_sae(SAE(SAEConfig(d_in=48, d_sae=96, k=4)), tmp_path / "wide")
    out = run_cli("evaluate", "--sae", str(tmp_path / "wide"), "--store", str(tiny_store))
    assert out.returncode == 2 and "width" in out.stderr and "Traceback" not in out.stderr


def test_resume_refuses_a_different_sweep(tiny_store: Path, tmp_path: Path) -> None:
    from saescope.train.fit import FitConfig, SAESpec, fit

    base = dict(
        store=str(tiny_store),
        out=str(tmp_path),
        batch_size=256,
        tokens=3000,
        progress=False,
        plots=False,
    )
    fit(FitConfig(saes=[SAESpec("topk", 2, k=4)], **base))
    with pytest.raises(ValueError, match="different sweep"):
        fit(FitConfig(saes=[SAESpec("topk", 2, k=8)], **base))
