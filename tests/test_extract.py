"""train.extract: exact tokens, manifests, skipped images, resume after SIGKILL, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.core.backbones import load_backbone
from saescope.core.sources import ListSource, open_source
from saescope.core.store import MANIFEST, ActivationStore, StoreError
from saescope.train.extract import _to_numpy, extract

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_model) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_reg(tmp_path_factory, make_tiny_model) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_reg"), registers=4)


@pytest.fixture(scope="module")
def images(tmp_path_factory, make_image_folder) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), 30, corrupt=(7, 20))


def _direct(backbone, source, layers):
    """Tokens by a plain forward_layers call, one batch of all good images."""
    good = [(i, im) for i, (_, im) in enumerate(source) if not isinstance(im, Exception)]
    out = backbone.forward_layers(backbone.preprocess([im for _, im in good]), layers)
    return [i for i, _ in good], out


def _all_tokens(store: ActivationStore) -> torch.Tensor:
    return torch.cat([t for _, t in store.iter_images(100)])


def test_round_trip_exact_and_manifest(tiny, images, tmp_path):
    backbone = load_backbone(str(tiny))
    source = open_source(images)
    [path] = extract(
        backbone,
        source,
        tmp_path / "s",
        layers=[-2],
        dtype="float32",
        batch_size=4,
        shard_images=6,
        progress=False,
    )
    assert path == tmp_path / "s"
    st = ActivationStore(path, verify=True)
    good, out = _direct(backbone, source, [1])
    expect = out.tokens[1][:, 1:]  # patches only
    assert st.n_images == len(good) == 28 and st.tokens_per_image == 16
    assert torch.allclose(_all_tokens(st), expect, atol=1e-5, rtol=1e-5)
    assert st.image_ids == [source.image_id(i) for i in good]
    assert st.labels == [source.label(i) for i in good] and st.label_names == ["a", "b"]

    m = json.loads((path / MANIFEST).read_text())
    assert m["format_version"] == 1 and m["complete"] is True
    assert m["model_id"] == str(tiny) and m["model"]["d_model"] == 32
    assert (m["layer"], m["layer_requested"]) == (1, -2)
    assert m["token_kinds"] == ["patch"] and m["layout"] == {
        "n_cls": 1,
        "n_registers": 0,
        "grid": [4, 4],
    }
    assert (m["tokens_per_image"], m["d_model"], m["dtype"]) == (16, 32, "float32")
    assert [s["n_images"] for s in m["shards"]] == [6, 6, 6, 6, 4]
    assert {s["id"] for s in m["skipped"]} == {"a/img_0007.png", "b/img_0020.png"}
    assert all(source.image_id(s["index"]) == s["id"] for s in m["skipped"])
    assert all("not an image" in s["reason"] for s in m["skipped"])
    assert m["source"]["spec"] == str(images)


def test_float16_matches_and_layers_from_one_pass(tiny, images, tmp_path):
    backbone = load_backbone(str(tiny))
    source = open_source(images, max_images=12)
    paths = extract(
        backbone,
        source,
        tmp_path / "multi",
        layers=[0, -1, 2],
        batch_size=5,
        shard_images=4,
        progress=False,
    )
    assert paths == [tmp_path / "multi" / "layer_00", tmp_path / "multi" / "layer_02"]
    good, out = _direct(backbone, source, [0, 2])
    for path, layer in zip(paths, (0, 2)):
        st = ActivationStore(path)
        assert st.layer == layer and st.dtype == np.float16
        expect = out.tokens[layer][:, 1:].to(torch.float16).float()
        assert torch.allclose(_all_tokens(st), expect, atol=2e-3, rtol=2e-3)
    with pytest.raises(StoreError, match="per-layer stores: layer_00, layer_02"):
        ActivationStore(tmp_path / "multi")


def test_kinds_with_registers(tiny_reg, make_tiny_model, tmp_path):
    backbone = load_backbone(str(tiny_reg))
    assert backbone.n_registers == 4
    source = open_source("builtin:digits?size=32", max_images=5)
    _, out = _direct(backbone, source, [1])
    full = out.tokens[1]
    for kinds, sl in (
        ("cls", slice(0, 1)),
        ("register", slice(1, 5)),
        ("patch", slice(5, 21)),
        ("cls,register", slice(0, 5)),
        ("all", slice(0, 21)),
    ):
        [p] = extract(
            backbone,
            source,
            tmp_path / kinds,
            layers=[1],
            kinds=kinds,
            dtype="float32",
            progress=False,
        )
        st = ActivationStore(p)
        assert torch.allclose(_all_tokens(st), full[:, sl], atol=1e-5), kinds
    st = ActivationStore(tmp_path / "all")
    assert st.tokens(0, kinds="register").shape == (4, 32)
    assert torch.allclose(
        st.tokens(2, kinds="cls,patch"), torch.cat([full[2, :1], full[2, 5:]]), atol=1e-5
    )
    with pytest.raises(ValueError, match="no register tokens"):
        extract(
            load_backbone(_tiny_plain(make_tiny_model, tmp_path)),
            source,
            tmp_path / "x",
            kinds="register",
            progress=False,
        )


def _tiny_plain(make_tiny_model, tmp_path: Path) -> str:
    return str(make_tiny_model(tmp_path / "plain"))


def test_skipped_images_summary(tiny, images, tmp_path, capsys):
    extract(load_backbone(str(tiny)), open_source(images), tmp_path / "s", progress=False)
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err and "img_0007.png" in err


def test_resume_refusals_and_overwrite(tiny, images, make_tiny_model, tmp_path):
    backbone = load_backbone(str(tiny))
    source = open_source(images, max_images=8)
    out = tmp_path / "s"
    extract(backbone, source, out, layers=[1], shard_images=3, progress=False)
    before = {p.name: p.read_bytes() for p in out.glob("shard_*")}
    extract(backbone, source, out, layers=[1], shard_images=3, progress=False)  # complete: no-op
    assert before == {p.name: p.read_bytes() for p in out.glob("shard_*")}
    with pytest.raises(StoreError, match="layer: store has 1, this run wants 2"):
        extract(backbone, source, out, layers=[2], progress=False)
    with pytest.raises(StoreError, match="dtype"):
        extract(backbone, source, out, layers=[1], dtype="float32", progress=False)
    with pytest.raises(StoreError, match="token_kinds"):
        extract(backbone, source, out, layers=[1], kinds="cls,patch", progress=False)
    other_model = load_backbone(str(make_tiny_model(tmp_path / "other", seed=1)))
    with pytest.raises(StoreError, match="model_id"):
        extract(other_model, source, out, layers=[1], progress=False)
    digits = open_source("builtin:digits", max_images=8)
    with pytest.raises(StoreError, match="another image source"):
        extract(backbone, digits, out, layers=[1], progress=False)
    [p] = extract(backbone, digits, out, layers=[1], resume=False, progress=False)
    assert ActivationStore(p).image_ids[0] == "digits/0000"


def test_growing_source_equals_fresh_run(tiny, images, tmp_path):
    backbone = load_backbone(str(tiny))
    kw = dict(layers=[1], shard_images=4, batch_size=3, progress=False)
    extract(backbone, open_source(images, max_images=10), tmp_path / "grow", **kw)
    extract(backbone, open_source(images, max_images=25), tmp_path / "grow", **kw)
    extract(backbone, open_source(images, max_images=25), tmp_path / "fresh", **kw)
    _assert_same_store(tmp_path / "grow", tmp_path / "fresh")


def _assert_same_store(a: Path, b: Path) -> None:
    files_a = sorted(p.name for p in a.iterdir() if p.name.startswith("shard_"))
    files_b = sorted(p.name for p in b.iterdir() if p.name.startswith("shard_"))
    assert files_a == files_b and files_a
    for name in files_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((p / MANIFEST).read_text()) for p in (a, b))
    for key in ("shards", "skipped", "n_images", "next_source_index", "complete"):
        assert ma[key] == mb[key], key
    assert not list(a.glob(".*.tmp")) and not list(b.glob(".*.tmp"))


def _helper(script: Path, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _n_shards(out: Path) -> int:
    try:
        return len(json.loads((out / MANIFEST).read_text())["shards"])
    except (OSError, ValueError):
        return 0


def test_sigkill_and_resume_is_byte_identical(tiny, make_image_folder, extract_worker, tmp_path):
    images = make_image_folder(tmp_path / "imgs", 60, corrupt=(5, 33))
    out, clean = tmp_path / "killed", tmp_path / "clean"
    # the victim: a real process, slowed down, SIGKILLed after a few shards
    proc = _helper(extract_worker.PATH, str(tiny), str(images), str(out), "--delay", "0.04")
    extract_worker.run_extract(
        str(tiny), str(images), str(clean)
    )  # meanwhile, the clean reference run
    deadline = time.time() + 60
    while _n_shards(out) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _n_shards(out)
    assert 4 <= killed_at < 15 and not json.loads((out / MANIFEST).read_text())["complete"]
    extract_worker.run_extract(str(tiny), str(images), str(out))  # plain rerun resumes
    _assert_same_store(out, clean)
    st = ActivationStore(out, verify=True)
    assert st.n_images == 58 and len(set(st.image_ids)) == 58  # no duplicates, none lost
    assert len(st.skipped) == 2


def test_cli_help_and_run(tiny, tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    helptext = subprocess.run(
        [sys.executable, "-m", "saescope.train", "extract", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helptext.returncode == 0
    for opt in (
        "--model",
        "--source",
        "--layer",
        "--kinds",
        "--out",
        "--shard-images",
        "--dtype",
        "--max-images",
        "--overwrite",
        "--no-resume",
        "--device",
    ):
        assert opt in helptext.stdout
    assert "offline:dinov2-s-saliency" in helptext.stdout
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "saescope.train",
        "extract",
        "--model",
        str(tiny),
        "--source",
        "builtin:digits?size=28",
        "--max-images",
        "9",
        "--layer",
        "0",
        "--layer",
        "-1",
        "--kinds",
        "cls,patch",
        "--out",
        str(out),
        "--shard-images",
        "4",
        "--no-progress",
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    cfg = json.loads((out / "extract_config.json").read_text())
    assert cfg["layer"] == [0, -1] and cfg["step"] == "extract"
    for layer in (0, 2):
        st = ActivationStore(out / f"layer_{layer:02d}")
        assert st.n_images == 9 and st.tokens_per_image == 17 and st.complete
    from saescope.train.__main__ import main  # a user error is one clear line and exit code 2

    assert main(cmd[3:] + ["--dtype", "float32"]) == 2
    assert "error: cannot resume" in capsys.readouterr().err


def test_fp16_overflow_is_a_clear_error():
    with pytest.raises(StoreError, match="float32"):
        _to_numpy(torch.tensor([[1e6]]), np.dtype(np.float16), 3)


def test_memory_flat_as_dataset_grows(tiny, tmp_path):
    """Numpy allocations (shard buffers) do not grow with the number of images."""
    import tracemalloc

    backbone = load_backbone(str(tiny))
    rng = np.random.default_rng(0)
    from PIL import Image

    items = [
        (f"m{i}", Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)))
        for i in range(160)
    ]
    peaks = []
    for n in (30, 120):
        tracemalloc.start()
        extract(
            backbone,
            ListSource(items[:n]),
            tmp_path / f"m{n}",
            layers=[1],
            shard_images=8,
            batch_size=4,
            progress=False,
            verify="size",
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.5 + 500_000, peaks


@pytest.mark.slow
def test_real_offline_model_throughput(tmp_path):
    """The real DINOv2-S: extraction keeps most of the bare forward's images/s.

    ``bench.extract_speed`` measures the figure itself (95.6% with interleaved medians); here
    the bar is 80%, best of three, so that a CI machine doing other work stays green while a
    real regression (say, loading or writing no longer overlapping the forward) still fails.
    """
    try:
        backbone = load_backbone("offline:dinov2-s-saliency")
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"offline model unavailable: {err}")
    source = open_source("builtin:photos?views=2", max_images=40)
    images = [source.get(i)[1] for i in range(len(source))]
    backbone.forward_layers(backbone.preprocess(images[:8]), [-2])  # warm-up
    bare, full = 0.0, 0.0
    for attempt in range(3):  # interleaved, best of three: robust to a busy machine
        pixels = backbone.preprocess(images)
        t = time.perf_counter()
        for a in range(0, len(pixels), 16):
            backbone.forward_layers(pixels[a : a + 16], [-2])
        bare = max(bare, len(pixels) / (time.perf_counter() - t))
        t = time.perf_counter()
        extract(
            backbone,
            source,
            tmp_path / f"real{attempt}",
            layers=[-2],
            batch_size=16,
            progress=False,
        )
        full = max(full, len(source) / (time.perf_counter() - t))
    st = ActivationStore(tmp_path / "real0")
    assert st.n_images == 40 and st.tokens_per_image == 256 and st.d_model == 384
    assert full >= 0.8 * bare, (full, bare)
