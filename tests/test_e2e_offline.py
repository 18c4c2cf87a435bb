"""End to end on the real offline DINOv2-S: the default pipeline as a user runs it (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saescope.core.sae_io import from_pretrained

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_pipeline_on_the_offline_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "saescope.train",
        "run",
        "--out",
        str(out),
        "--source",
        "builtin:photos?views=2",
        "--eval-source",
        "builtin:photos?views=1&max_images=6",
        "--expansion",
        "2",
        "--k",
        "16",
        "--epochs",
        "4",
        "--batch-size",
        "1024",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["saes"]
    sae = from_pretrained(entry["folder"])
    assert sae.cfg.model_id == "offline:dinov2-s-saliency" and sae.cfg.layer == 10
    assert sae.cfg.d_in == 384 and sae.cfg.d_sae == 768
    assert entry["fvu"] < 0.6 and entry["l0"] == pytest.approx(16, abs=0.5)
    down = entry["downstream"]
    assert down["head"] == "saliency" and down["n_images"] == 6
    # the SAE reconstruction keeps the frozen saliency head far closer than mean ablation does
    assert down["recovery"] > 0.5 and down["mask_agreement"] > 0.8
    assert (out / "saes" / "fvu_vs_l0.png").exists() and (out / "run_config.json").exists()
    # a second run finds everything done and changes nothing
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    steps = sae.cfg.hyperparameters["steps"]
    assert f"resuming from step {steps}/{steps}" in again.stdout  # nothing retrained
