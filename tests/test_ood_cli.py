"""``saescope ood-eval`` / ``ood-fit`` as a user runs them (subprocess), on a tiny random
DINOv2: tables and files, skipped baselines, one-line errors, and a bundle's ood/ component."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def train_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saescope.train", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic_items):
    """A tiny random DINOv2 (56 px: 16 patches) and a folder of unlabelled synthetic images."""
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("ood")
    torch.manual_seed(0)
    Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=56,
            patch_size=14,
        )
    ).save_pretrained(root / "model")
    shapes = root / "shapes"
    shapes.mkdir()
    for i, (_, im) in enumerate(synthetic_items(40, size=56, seed=3)):
        im.save(shapes / f"{i:02d}.png")
    return root


def test_ood_eval_tables_files_and_skipped_probe(tiny: Path) -> None:
    work = tiny / "work"
    shapes = str(tiny / "shapes")
    res = train_cli(
        "ood-eval",
        "--model",
        str(tiny / "model"),
        "--layer",
        "1",
        "--in",
        "builtin:digits",
        shapes,
        "--out",
        "builtin:lfw",
        "--n-train",
        "30",
        "--n-test",
        "12",
        "--expansion",
        "4",
        "--k",
        "4",
        "--epochs",
        "2",
        "--knn-k",
        "3",
        "--work",
        str(work),
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resolved config" in res.stderr and (work / "ood-eval_config.json").is_file()
    result = json.loads((work / "results.json").read_text())
    digits, folder = result["configs"]
    assert digits["in"] == "builtin:digits" and digits["ood_sets"] == ["shapes", "lfw"]
    assert folder["ood_sets"] == ["digits", "lfw"]
    assert (digits["n_fit"], digits["n_calibration"], digits["n_test_in"]) == (24, 6, 12)
    # 40 images: 12 held out for the test, of the other 28 a fifth calibrates
    assert (folder["n_fit"], folder["n_calibration"]) == (22, 6)
    methods = [
        "sae_recon",
        "sae_rare",
        "sae_knn",
        "sae_combined",
        "raw_maha_layer",
        "raw_knn_layer",
        "raw_maha_cls",
        "raw_knn_cls",
        "probe_msp",
        "probe_energy",
    ]
    assert list(digits["rows"]) == methods
    # the unlabelled folder cannot have a probe: both probe baselines skipped with a note
    assert set(folder["skipped"]) == {"probe_msp", "probe_energy"}
    assert list(folder["rows"]) == methods[:8]
    assert "Skipped probe_msp" in res.stdout and "skipping probe_msp" in res.stderr
    for cfg in (digits, folder):
        for row in cfg["rows"].values():
            for cell in row["sets"].values():
                assert 0 <= cell["auroc"] <= 1 and 0 <= cell["fpr95"] <= 1
            assert 0 <= row["test_tpr_at_calibrated"] <= 1
    # binarised digits against faces are far apart even for a random model's SAE
    assert digits["rows"][digits["verdict"]["best_sae"]]["mean_auroc"] > 0.8
    assert digits["verdict"]["outcome"] in ("beats", "matches", "falls short of")
    md = (work / "results.md").read_text()
    assert md.count("| method |") == 2 and "sae: SAE code k-NN" in md
    assert "| method |" in res.stdout


def test_ood_eval_errors_are_one_line(tiny: Path) -> None:
    alone = train_cli("ood-eval", "--model", str(tiny / "model"), "--in", "builtin:digits")
    assert alone.returncode == 2 and "nothing to compare" in alone.stderr
    empty = train_cli(
        "ood-eval",
        "--model",
        str(tiny / "model"),
        "--layer",
        "1",
        "--in",
        "builtin:digits",
        "--out",
        "builtin:lfw?start=5000",
        "--work",
        str(tiny / "err"),
        "--no-progress",
    )
    assert empty.returncode == 2 and "is empty" in empty.stderr
    for r in (alone, empty):
        assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith(
            "error:"
        )


@pytest.fixture(scope="module")
def bundle_with_store(tiny: Path):
    """A bundle (layer 1) built from a real store of the tiny model, plus a layer-2 store."""
    from saescope.core.backbones import load_backbone
    from saescope.core.sources import open_source
    from saescope.train.bundle import build_bundle
    from saescope.train.extract import extract
    from saescope.train.fit import FitConfig, SAESpec, fit

    bb = load_backbone(str(tiny / "model"))
    stores = extract(
        bb,
        open_source("builtin:photos?views=2+builtin:digits?max_images=30"),
        tiny / "acts",
        layers=[0, 1],
        progress=False,
    )
    sae = fit(
        FitConfig(
            store=str(stores[1]),
            out=str(tiny / "sae"),
            saes=[SAESpec("topk", 4, k=4)],
            batch_size=512,
            tokens=10_000,
            progress=False,
            plots=False,
        )
    )[0]
    bundle = build_bundle(sae, stores[1], tiny / "bundle", k=4, progress=False)
    return bundle, stores


def test_ood_fit_adds_a_verified_component_and_eval_uses_the_bundle(
    tiny, bundle_with_store
) -> None:
    from saescope.core.bundle import Bundle
    from saescope.core.ood import OODSuite

    bundle, stores = bundle_with_store
    bad = train_cli("ood-fit", "--bundle", str(bundle), "--store", str(stores[0]))
    assert bad.returncode == 2 and "holds layer 0" in bad.stderr and "Traceback" not in bad.stderr
    res = train_cli(
        "ood-fit",
        "--bundle",
        str(bundle),
        "--store",
        str(stores[1]),
        "--knn-k",
        "3",
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    b = Bundle.load(bundle)  # manifest re-checksummed with the new files: still verifies
    assert b.has("ood") and b.manifest["ood"]["n_fit"] + b.manifest["ood"]["n_calibration"] == 80
    assert {p for p in b.manifest["files"] if p.startswith("ood/")} >= {
        "ood/ood.json",
        "ood/ood.safetensors",
        "ood/sae_knn.faiss",
        "ood/sae_knn.faiss.json",
    }
    suite = OODSuite.load(b.component_path("ood"))
    assert suite.names == [
        "sae_recon",
        "sae_rare",
        "sae_knn",
        "sae_combined",
        "raw_maha_layer",
        "raw_knn_layer",
    ]
    assert "sae_combined: 95%-TPR threshold" in res.stdout

    mismatch = train_cli(
        "ood-eval",
        "--bundle",
        str(bundle),
        "--model",
        "offline:dinov2-s-saliency",
        "--in",
        "builtin:digits",
        "--out",
        "builtin:lfw",
    )
    assert mismatch.returncode == 2 and "mismatched models" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr
    work = tiny / "work-bundle"
    res = train_cli(
        "ood-eval",
        "--bundle",
        str(bundle),
        "--in",
        "builtin:digits",
        "--out",
        "builtin:lfw",
        "--n-train",
        "20",
        "--n-test",
        "10",
        "--knn-k",
        "3",
        "--methods",
        "sae",
        "raw",
        "--work",
        str(work),
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (cfg,) = json.loads((work / "results.json").read_text())["configs"]
    assert cfg["sae"].startswith("from bundle bundle") and not (work / "saes").exists()
    assert not any(r["family"] == "probe" for r in cfg["rows"].values())
