"""Every ``saescope`` step and the apps under bad input (issue 14, defects 5 and 8).

A table of bad command lines, at least two per step (missing paths, wrong ``--layer``, a store
and an SAE of other widths, a value that is not a number, an output that exists without
``--force``, a Hub model / data set / SAE that is not cached while ``HF_HUB_OFFLINE=1``), each run
as its own process with an empty ``HF_HOME``: exit status 2, one ``error:`` line (the last line
of stderr), no traceback, and nothing left on disk (the case's output is absent, and the folder
holding every input is byte-for-byte as it was).

The table runs through ``tests/cli_case_runner.py``, which imports the command line once and
forks one child per case (a fresh interpreter costs 2-7 s here); the headline cases also run as
the real console scripts (``saescope``, ``python -m saescope.train``, ``saescope-browser``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# the table (one runner process) and the console scripts take about a minute: marked slow

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("cli_case_runner.py")
BIN = Path(sys.executable).parent
HUB_MODEL = "openai/clip-vit-base-patch16"
OFFLINE_WORDS = ("not in the local Hugging Face cache", "HF_HUB_OFFLINE=1")


@dataclass(frozen=True)
class Case:
    """One bad command line: ``argv`` (``{name}`` placeholders are world paths, ``{out}`` this
    case's own output path) and the words its error line must contain."""

    id: str
    argv: tuple[str, ...]
    says: tuple[str, ...]


# id | argv | words the error line must contain, separated by ";". In argv, {name} is a world
# path, "+out" stands for "--out {out}" (the case's own output path; "+work": "--work {out}"),
# {digits} for a tiny image source and {hub} for an uncached Hub model; {offline} in the words
# for the offline words. Two or more cases per step ("default-bundle" takes only flags).
TABLE = """
extract-no-source | extract --model {model} --source {missing} +out | image source; not found
extract-layer-99 | extract --model {model} --source {digits} --layer 99 +out | layer 99; range
extract-batch-nan | extract --batch-size abc +out | --batch-size; invalid int
extract-no-model | extract --model {root}/no/such/model +out | no such folder
extract-bad-kind | extract --model {model} --kinds pixels +out | unknown token kind
extract-hf-offline | extract --model {model} --source hf:cifar10 +out | 'cifar10'; {offline}
fit-no-store | fit --store {missing} +out | not an activation store
fit-k-zero | fit --store {store} --k 0 +out | k=0
fit-lr-nan | fit --store {store} --lr fast +out | --lr; invalid float
evaluate-mismatch | evaluate --sae {sae16} --store {store} +out | width 16; 32
evaluate-hub-offline | evaluate --sae u/no-sae --store {store} +out | 'u/no-sae'; {offline}
import-missing | import {missing}.pt +out | no checkpoint
import-text-file | import {notes} +out | not a saev checkpoint
import-layer-nan | import {saev} --layer x +out | --layer; invalid int
import-hub-offline | import {saev} --model {hub} --layer 3 +out | model '{hub}'; {offline}
push-missing | push {missing} --repo someone/x | missing
push-not-an-sae | push {notes} --repo someone/x | not a saev checkpoint
run-no-source | run --model {model} --source {missing} +out | image source; not found
run-layer-99 | run --model {model} --source {digits} --layer 99 +out | layer 99
exemplars-mismatch | exemplars --sae {sae16} --store {store} +out | width 16
exemplars-no-store | exemplars --sae {sae} --store {missing} +out | not an activation store
index-mismatch | index --sae {sae16} --store {store} +out | width 16
index-k-nan | index --sae {sae} --store {store} --k many +out | --k; invalid int
bundle-out-exists | bundle --sae {sae} --store {store} --out {exists} | --force
bundle-mismatch | bundle --sae {sae16} --store {store} +out | width 16
default-bundle-stray | default-bundle now | unrecognized arguments
steer-eval-no-bundle | steer-eval --bundle {missing} | missing
steer-eval-no-head | steer-eval --bundle {bundle} | no segmentation head
probe-bundle-and-model | probe --bundle {bundle} --model {model} +out | exactly one of
probe-no-out | probe --model {model} | --model needs --out
ood-eval-n-nan | ood-eval --model {model} --in builtin:digits --n-train lots | --n-train; int
ood-eval-no-source | ood-eval --model {model} --layer 0 --in {missing} --out {digits} +work | found
ood-fit-no-bundle | ood-fit --bundle {missing} --store {store} | missing
ood-fit-no-store | ood-fit --bundle {bundle} --store {missing} | not an activation store
ontology-no-store | ontology --sae {sae} --store {missing} +out | not an activation store
ontology-mismatch | ontology --sae {sae16} --store {store} +out | width 16
labels-no-bundle | labels --bundle {missing} | bundle folder; not found
labels-top-zero | labels --bundle {bundle} --top 0 | --top must be at least 1
diffusion-tiny-size-nan | diffusion-tiny --size big +out | --size; invalid int
diffusion-tiny-users-folder | diffusion-tiny --out {exists} | exists; not a tiny pipeline
diffusion-fit-bad-arch | diffusion-fit --pipeline tiny --arch wide +out | --arch; invalid choice
diffusion-fit-steps-nan | diffusion-fit --pipeline {missing} --steps many +out | --steps; int
diffusion-name-missing | diffusion-name --artefact {missing} +out | missing
diffusion-name-not-artefact | diffusion-name --artefact {sae} +out | not a diffusion-steering
diffusion-eval-not-artefact | diffusion-eval --artefact {sae} +out | not a diffusion-steering
diffusion-eval-missing | diffusion-eval --artefact {missing} +out | missing
"""
DIGITS = "builtin:digits?size=28"


def parse_table(table: str) -> list[Case]:
    cases = []
    for row in filter(None, (r.strip() for r in table.splitlines())):
        id, argv, says = (part.strip() for part in row.split(" | "))
        argv = argv.replace("+out", "--out {out}").replace("+work", "--work {out}")
        argv = argv.replace("{digits}", DIGITS)
        argv = argv.replace("{hub}", HUB_MODEL)
        words = says.replace("{hub}", HUB_MODEL).replace("{offline}", "; ".join(OFFLINE_WORDS))
        cases.append(Case(id, tuple(argv.split()), tuple(w.strip() for w in words.split(";"))))
    return cases


CASES = parse_table(TABLE)
# modules every child would import itself; the runner imports them once before forking
PRELOAD = [
    "transformers.models.dinov2.modeling_dinov2",
    "saescope.core.backbones.hf",
    "saescope.core.bundle",
    "saescope.core.sae_io",
    "saescope.core.sources",
    "saescope.core.store",
    "sklearn.datasets",
]


def offline_env(tmp: Path) -> dict[str, str]:
    """The environment of every process here: offline, an empty HF_HOME, no user token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GRADIO_"))}
    env.pop("TRANSFORMERS_OFFLINE", None)
    (tmp / "hf-home").mkdir(parents=True, exist_ok=True)
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf-home"),
        "SAESCOPE_CACHE": str(tmp / "saescope-cache"),
        "OMP_NUM_THREADS": "1",
    }


# caches a successful read writes as well (Bundle.load's record of verified checksums)
CACHE_FILES = {".saescope-verified.json"}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time, every folder (-1, 0)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        if p.is_file()
        else (-1, 0)
        for p in sorted(folder.rglob("*"))
        if p.name not in CACHE_FILES
    }


def error_line(stderr: str) -> str:
    """The one ``error:`` line: present once, and the last line of stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or ": error: " in line]
    assert len(errors) == 1, f"expected one error line, got {errors!r}\n{stderr[-3000:]}"
    assert lines[-1] == errors[0], f"the error line is not the last line:\n{stderr[-3000:]}"
    return errors[0]


def check_user_error(code: int, stderr: str, says: tuple[str, ...]) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == 2, f"exit status {code}\n{stderr[-3000:]}"
    line = error_line(stderr)
    for words in says:
        assert words in line, f"{words!r} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_bundle) -> dict[str, Path]:
    """The inputs every case reads: a tiny bundle (model, SAE), a store of its width, an SAE of
    another width, a saev checkpoint, a text file, a folder that already exists."""
    from saescope.core.backbones import load_backbone
    from saescope.core.sae import SAE, SAEConfig
    from saescope.core.sae_io import save_sae
    from saescope.train.extract import extract

    root = tmp_path_factory.mktemp("cli-bad-input")
    bundle = tiny_bundle(root)
    model = root / "tiny-model"
    extract(
        load_backbone(str(model)),
        DIGITS,
        root / "store",
        layers=[0],
        max_images=4,
        progress=False,
        workers=1,
    )
    save_sae(SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4)), root / "sae16")
    g = torch.Generator().manual_seed(0)
    state = {
        "W_enc": torch.randn(32, 128, generator=g),
        "b_enc": torch.randn(128, generator=g),
        "W_dec": torch.randn(128, 32, generator=g),
        "b_dec": torch.randn(32, generator=g),
    }
    saev = root / "saev.pt"
    with open(saev, "wb") as fh:
        fh.write((json.dumps({"d_vit": 32, "exp_factor": 4}) + "\n").encode())
        torch.save(state, fh)
    (root / "exists").mkdir()
    (root / "exists" / "keep.txt").write_text("a folder the user already had\n")
    (root / "notes.txt").write_text("not a checkpoint\n")
    return {
        "root": root,
        "model": model,
        "bundle": bundle,
        "sae": bundle / "sae",
        "sae16": root / "sae16",
        "store": root / "store",
        "saev": saev,
        "notes": root / "notes.txt",
        "exists": root / "exists",
        "missing": root / "missing",
    }


def out_path(world: dict[str, Path], c: Case) -> Path:
    return world["root"] / "out" / c.id


def argv_of(world: dict[str, Path], c: Case) -> list[str]:
    names = {k: str(v) for k, v in world.items()}
    return [a.format(out=out_path(world, c), **names) for a in c.argv]


@pytest.fixture(scope="module")
def ran(world, tmp_path_factory) -> tuple[dict[str, dict], dict, dict]:
    """Run the whole table once: (results by case id, world before, world after)."""
    tmp = tmp_path_factory.mktemp("cli-runner")
    before = snapshot(world["root"])
    spec = {"preload": PRELOAD, "cases": [{"id": c.id, "argv": argv_of(world, c)} for c in CASES]}
    (tmp / "cases.json").write_text(json.dumps(spec))
    r = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            str(tmp / "cases.json"),
            str(tmp / "results.json"),
            "--timeout",
            "120",
        ],
        cwd=ROOT,
        env=offline_env(tmp),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = {x["id"]: x for x in json.loads((tmp / "results.json").read_text())}
    return results, before, snapshot(world["root"])


def test_the_table_covers_every_step() -> None:
    from saescope.train.__main__ import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "step"]
    steps = set(sub.choices)
    counts = {s: sum(c.argv[0] == s for c in CASES) for s in steps}
    assert {c.argv[0] for c in CASES} <= steps
    lonely = sorted(s for s, n in counts.items() if n < (1 if s == "default-bundle" else 2))
    assert not lonely, f"steps with fewer than two bad-input cases: {lonely}"


@pytest.mark.slow
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_no_output(c: Case, ran, world) -> None:
    results, _, _ = ran
    r = results[c.id]
    check_user_error(r["code"], r["stderr"], c.says)
    assert not out_path(world, c).exists(), f"{c.id} left {out_path(world, c)} behind"


@pytest.mark.slow
def test_failed_runs_leave_every_input_and_existing_folder_as_it_was(ran, world) -> None:
    _, before, after = ran
    assert "out" not in {p.split(os.sep)[0] for p in after}, "a failed run created an output"
    assert after == before
    assert (world["exists"] / "keep.txt").read_text() == "a folder the user already had\n"


# ------------------------------------------------------------------------ the real console scripts
def _run(
    cmd: list[str], tmp: Path, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, cwd=ROOT, env=offline_env(tmp), capture_output=True, text=True, timeout=timeout
    )
    return r, time.perf_counter() - t0


@pytest.mark.slow
def test_console_script_uncached_hub_model_offline(tmp_path: Path) -> None:
    out = tmp_path / "store"
    r, _ = _run(
        [str(BIN / "saescope"), "extract", "--model", HUB_MODEL, "--out", str(out)], tmp_path
    )
    line = check_user_error(r.returncode, r.stderr, (f"model '{HUB_MODEL}'", *OFFLINE_WORDS))
    assert f"hf download {HUB_MODEL}" in line
    assert not out.exists()


@pytest.mark.slow
def test_python_m_uncached_hf_dataset_offline(tmp_path: Path) -> None:
    out = tmp_path / "store"
    r, _ = _run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "extract",
            "--source",
            "hf:mnist",
            "--max-images",
            "2",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    check_user_error(r.returncode, r.stderr, ("data set 'mnist'", *OFFLINE_WORDS, "save_to_disk"))
    assert not out.exists()


@pytest.mark.slow
def test_app_on_a_taken_port_fails_before_loading(tmp_path: Path) -> None:
    """The console script ``saescope-browser --port N`` with N taken: exit 2, one line, and it
    never got to "loading bundle" (which took 12 s before failing); the in-process test below
    times the check itself."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        r, _ = _run([str(BIN / "saescope-browser"), "--port", str(port)], tmp_path)
    check_user_error(r.returncode, r.stderr, (f"port {port}", "already in use", "--port"))
    assert "loading" not in r.stdout, r.stdout


@pytest.mark.parametrize("app", ["browser", "compare", "segment", "classify", "diffusion"])
def test_every_app_checks_its_port_first(app: str, capsys) -> None:
    import importlib

    module = importlib.import_module(f"saescope.apps.{app}")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        t0 = time.perf_counter()
        code = module.main(["--port", str(port)])
        took = time.perf_counter() - t0
    captured = capsys.readouterr()
    check_user_error(code, captured.err, (f"port {port}", "already in use"))
    assert "loading" not in captured.out and took < 3.0, (captured.out, took)


# ------------------------------------------------------------------------ the parts, in process
def test_a_failed_step_takes_away_only_what_it_created(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from saescope.train.cli import announce_config, run_step

    cfg = SimpleNamespace(x=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.txt").write_text("kept")
    (mine / "fit_config.json").write_text('{"old": true}')

    def failing(out: Path, error: BaseException, work: bool = True):
        def run(cfg: SimpleNamespace) -> int:
            announce_config(cfg, "fit", out)
            if work:
                (out / "partial.bin").write_bytes(b"half")
            raise error

        return run

    for error in (ValueError("bad"), FileNotFoundError("gone"), FileExistsError("there")):
        new = tmp_path / "a" / "b" / "c"
        with pytest.raises(type(error)):
            run_step(failing(new, error, work=False), cfg)
        assert not (tmp_path / "a").exists()  # the whole chain it created, nothing above
    # a run refused after real work keeps that work: a corrected re-run resumes from it
    worked = tmp_path / "w" / "x"
    with pytest.raises(ValueError):
        run_step(failing(worked, ValueError("late")), cfg)
    assert (worked / "partial.bin").exists()
    with pytest.raises(ValueError):
        run_step(failing(mine, ValueError("bad")), cfg)
    # a folder the user had keeps its files and gets its old config back
    assert (mine / "data.txt").read_text() == "kept"
    assert json.loads((mine / "fit_config.json").read_text()) == {"old": True}
    # an interrupt or a crash keeps everything (an interrupted extraction resumes from it)
    for error in (KeyboardInterrupt(), RuntimeError("bug")):
        kept = tmp_path / f"kept-{type(error).__name__}"
        with pytest.raises(type(error)):
            run_step(failing(kept, error), cfg)
        assert (kept / "partial.bin").exists() and (kept / "fit_config.json").exists()
    done = tmp_path / "done"
    assert run_step(lambda c: announce_config(c, "fit", done) and 0, cfg) == 0
    assert (done / "fit_config.json").exists()


def _chain(*errors: BaseException) -> BaseException:
    """errors[0] raised from errors[1] from ... (as the libraries chain them)."""
    for outer, inner in zip(errors, errors[1:]):
        outer.__cause__ = inner
    return errors[0]


def test_hub_failures_become_one_line_that_says_what_to_do(monkeypatch) -> None:
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    from saescope.core.hub_errors import HubAccessError, hub_access, hub_message
    from saescope.train.__main__ import user_error_message

    def offline_sae() -> BaseException:
        url = "https://huggingface.co/api/models/someone/an-sae/revision/main"
        return _chain(
            FileNotFoundError("could not fetch SAE 'someone/an-sae':\nCannot find ..."),
            LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder"),
            OfflineModeIsEnabled(f"Cannot reach {url}: offline mode is enabled."),
        )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = user_error_message(offline_sae())
    assert line == (
        "Hub repo 'someone/an-sae' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
        "is set; run once online or download it with `hf download someone/an-sae`"
    )
    transformers_style = _chain(
        OSError("We couldn't connect to 'https://huggingface.co' to load the files, and ..."),
        LocalEntryNotFoundError("Cannot find the requested files in the disk cache"),
    )
    with pytest.raises(HubAccessError, match="model 'org/vit' is not in the local") as info:
        with hub_access("model", "org/vit", revision="v2"):
            raise transformers_style
    assert "`hf download org/vit --revision v2`" in str(info.value)
    datasets_style = _chain(
        ConnectionError("Couldn't reach 'cifar10' on the Hub (OfflineModeIsEnabled)"),
        FileNotFoundError("Dataset cifar10 is not cached in None"),
    )
    assert "save_to_disk" in hub_message(datasets_style, "data set", "cifar10")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    unreachable = _chain(
        LocalEntryNotFoundError("Got: ConnectError\nAn error happened while trying to locate"),
        type("ConnectError", (Exception,), {})("[Errno -2] Name or service not known"),
    )
    msg = hub_message(unreachable, "model", "org/vit")
    assert msg.startswith("cannot reach the Hugging Face Hub to fetch model 'org/vit'")
    not_found = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # no HTTP response here
    Exception.__init__(not_found, "404 Client Error: Repository Not Found")
    missing = _chain(OSError("not a valid model identifier"), not_found)
    assert "neither a local path nor a repo" in hub_message(missing, "model", "org/typo")
    # anything else is not ours to reword: a bug keeps its traceback
    assert user_error_message(RuntimeError("bug")) is None
    with pytest.raises(KeyError):
        with hub_access("model", "org/vit"):
            raise KeyError("bug")
    assert user_error_message(ValueError("two\nlines")) == "two lines"
