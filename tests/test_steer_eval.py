"""Quantitative steering test on the real offline model and its frozen saliency head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_steer_eval_chosen_feature_beats_controls(offline_bundle, tmp_path: Path) -> None:
    bundle = offline_bundle(tmp_path, layer=-2, n_images=24)
    out = tmp_path / "steer.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "steer-eval",
            "--bundle",
            str(bundle),
            "--max-images",
            "10",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["n_images"] >= 5
    chosen = summary["table"]["chosen feature"]
    # the edit acts where it was made: the target region moves more than the rest of the image
    assert chosen["target"][0] > chosen["other"][0]
    # and more than the same token budget spent on a random direction or a random active feature
    for control in ("random direction (same norm)", "random active feature"):
        assert summary["ratios"][control]["ratio_of_means"] > 1.5, (control, summary["ratios"])
    assert "chosen feature vs random direction" in res.stdout


def test_steer_eval_refuses_bundles_without_a_segmentation_head(
    tiny_bundle, tmp_path: Path
) -> None:
    bundle = tiny_bundle(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "saescope.train", "steer-eval", "--bundle", str(bundle)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "no segmentation head" in res.stderr
    assert "Traceback" not in res.stderr


def test_region_change_is_total_variation_for_multi_class_heads() -> None:
    import torch

    from saescope.train.steer_eval import _region_change, foreground

    before = torch.zeros(1, 3, 2, 2)
    before[0, 0] = 1.0  # all background
    after = before.clone()
    after[0, :, 0, 0] = torch.tensor([0.2, 0.8, 0.0])  # one pixel becomes class 1
    region = torch.tensor([[True, False], [False, False]])
    r = _region_change(before, after, region)
    assert r["target"] == pytest.approx(0.8) and r["other"] == 0.0
    assert r["target_flip"] == 1.0 and r["other_flip"] == 0.0
    assert torch.allclose(foreground(after)[0, 0], torch.tensor([[0.8, 0.0], [0.0, 0.0]]))
    # a one-channel head: the change is |delta p| and flips are threshold crossings
    p0, p1 = torch.full((1, 1, 2, 2), 0.4), torch.full((1, 1, 2, 2), 0.7)
    r = _region_change(p0, p1, region)
    assert r["target"] == pytest.approx(0.3) and r["target_flip"] == 1.0
    assert torch.equal(foreground(p1), p1)
