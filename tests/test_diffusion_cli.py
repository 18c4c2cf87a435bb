"""``saescope diffusion-fit / diffusion-name / diffusion-eval`` on a tiny random pipeline.

The happy path runs as real subprocesses (the evaluation loads the artefact by Hub id, offline,
from a Hub-cache layout); bad input is checked in-process through ``train.__main__.main``: exit
code 2 and one clear line, no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saescope.core import diffusion as D

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return D.save_tiny(tmp_path_factory.mktemp("diffusion-cli") / "tiny")


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "saescope.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{args[0]} failed:\n{out.stderr[-3000:]}"
    return out


def in_process(argv: list[str], capsys) -> tuple[int, str]:
    from saescope.train.__main__ import main

    code = main(argv)
    return code, capsys.readouterr().err


def test_fit_name_eval_chain(tiny_folder: Path, tmp_path: Path) -> None:
    extra = tmp_path / "mine.txt"
    extra.write_text("# my prompts\na lighthouse at dusk\n\na bowl of ramen, watercolor\n")
    art = tmp_path / "art"
    out = run_cli(
        [
            "diffusion-fit",
            "--pipeline",
            str(tiny_folder),
            "--out",
            str(art),
            "--prompts",
            str(extra),
            "--max-prompts",
            "240",
            "--steps",
            "60",
            "--batch-size",
            "256",
            "--k",
            "4",
            "--threads",
            "1",
            "--no-progress",
        ],
        tmp_path,
    )
    assert "resolved config" in out.stderr and "FVU" in out.stdout
    manifest = json.loads((art / D.MANIFEST).read_text())
    assert manifest["pipeline"] == str(tiny_folder.resolve()) and manifest["tiny"]
    assert manifest["corpus"]["n_prompts"] == 240 and manifest["corpus"]["files"] == [str(extra)]
    assert manifest["d_model"] == 32 and (art / "diffusion_fit_config.json").is_file()
    fit_art = D.load_artefact(art)
    assert fit_art.sae.cfg.d_in == 32 and fit_art.sae.cfg.d_sae == 128 and not fit_art.names
    assert 0 < fit_art.sae.cfg.metrics["fvu"] < 1

    out = run_cli(
        [
            "diffusion-name",
            "--artefact",
            str(art),
            "--n-features",
            "3",
            "--seeds",
            "0",
            "1",
            "--objects",
            "car",
            "--steps-gen",
            "2",
            "--threads",
            "1",
            "--no-progress",
        ],
        tmp_path,
    )
    named = D.load_artefact(art)
    assert len(named.names) == 3 and all(n["name"] in D.vocabulary() for n in named.names.values())
    assert named.manifest["naming"]["seeds"] == [0, 1] and named.manifest["naming"]["steps"] == 2
    assert out.stdout.count("feature ") >= 3 and "named 3 features" in out.stdout

    # evaluation by Hub ids: the artefact and the pipeline in the Hub cache layout, offline
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo_name, src in (("me--tiny-steer", art), ("me--tiny-pipe", tiny_folder)):
        repo = cache / f"models--{repo_name}"
        shutil.copytree(src, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
    ev = tmp_path / "eval"
    out = run_cli(
        [
            "diffusion-eval",
            "--artefact",
            "me/tiny-steer",
            "--pipeline",
            "me/tiny-pipe",
            "--scorer",
            str(tiny_folder / D.SCORER_DIR),
            "--out",
            str(ev),
            "--seeds",
            "100",
            "101",
            "--objects",
            "dog",
            "--threads",
            "1",
            "--no-progress",
        ],
        tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)},
    )
    assert json.loads((ev / "diffusion_eval_config.json").read_text())["pipeline"] == "me/tiny-pipe"
    result = json.loads((ev / "eval.json").read_text())
    feats = result["features"]
    assert feats["n"] == 3 and result["control"]["n"] == 3
    assert (
        feats["fraction_amplify_raises"] == sum(r["delta_amplify"] > 0 for r in feats["rows"]) / 3
    )
    assert result["eval_setting"]["steps"] == 2  # the image recipe is inherited from naming
    assert "fraction of features whose amplification raises" in out.stdout
    assert "| SAE features | 3 |" in (ev / "eval.md").read_text()


def test_bad_input_gives_one_clear_line(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    from saescope.core.sae import SAE, SAEConfig
    from saescope.train.diffusion import collect_activations, fit_text_sae

    pipe = D.load_pipeline(tiny_folder)
    acts = collect_activations(pipe, D.builtin_corpus()[:40], progress=False)
    sae = fit_text_sae(acts, k=4, steps=5, batch_size=128, progress=False)
    art = D.save_artefact(
        tmp_path / "art",
        sae,
        D.feature_stats(sae, acts),
        {"pipeline": str(tiny_folder), "scorer": None, "tiny": True},
    )

    code, err = in_process(["diffusion-eval", "--artefact", str(art), "--no-progress"], capsys)
    assert code == 2 and "has no feature names yet" in err and "Traceback" not in err

    code, err = in_process(["diffusion-name", "--artefact", str(art), "--features", "9999"], capsys)
    assert (
        code == 2
        and err.strip().splitlines()[-1]
        == "error: unknown feature 9999: this SAE has features 0..127"
    )

    code, err = in_process(
        ["diffusion-name", "--artefact", str(art), "--name-prompts", "  "], capsys
    )
    assert code == 2 and "empty prompt" in err

    named = dict(D.load_artefact(art).manifest, naming={"seeds": [0, 1], "words": ["red", "blue"]})
    D.save_artefact(art, sae, D.feature_stats(sae, acts), named, {0: {"name": "red", "delta": 1.0}})
    code, err = in_process(["diffusion-eval", "--artefact", str(art), "--seeds", "1", "5"], capsys)
    assert code == 2 and "seeds [1] were used for naming" in err

    wide = SAE(SAEConfig(d_in=48, d_sae=96, k=4))
    wrong = D.save_artefact(
        tmp_path / "wrong",
        wide,
        D.feature_stats(wide, torch.randn(8, 48)),
        {"pipeline": str(tiny_folder), "scorer": None, "tiny": True},
    )
    code, err = in_process(["diffusion-name", "--artefact", str(wrong)], capsys)
    assert code == 2 and "SAE width 48 does not match the text encoder width 32" in err

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, err = in_process(
        [
            "diffusion-fit",
            "--pipeline",
            str(tiny_folder),
            "--out",
            str(tmp_path / "x"),
            "--no-builtin",
            "--prompts",
            str(empty),
        ],
        capsys,
    )
    assert code == 2 and "holds no prompts" in err

    code, err = in_process(
        ["diffusion-fit", "--pipeline", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")],
        capsys,
    )
    assert code == 2 and "could not load pipeline" in err
