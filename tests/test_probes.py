"""Linear probes: fitting, held-out accuracy, heads that steering can read, files, bundles, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saescope.core.heads import HeadError, SaliencyHead, load_head
from saescope.core.probes import (
    LinearProbe,
    fit_linear_probe,
    majority_patch_labels,
    split_by_group,
)
from saescope.core.tokens import TokenLayout

ROOT = Path(__file__).resolve().parents[1]


def _blobs(n: int, d: int, classes: int, sep: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * sep
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_probe_separates_separable_classes_and_not_random_labels():
    x, y = _blobs(600, 16, 4, sep=3.0)
    probe, report = fit_linear_probe(x, y, ["a", "b", "c", "d"])
    assert report.test_accuracy > 0.95 and report.n_test_images == 120
    assert report.chance_accuracy < 0.4
    shuffled = np.random.default_rng(1).permutation(y)
    _, noise = fit_linear_probe(x, shuffled, ["a", "b", "c", "d"])
    assert noise.test_accuracy < 0.45  # nothing to learn: near chance on held-out rows
    assert set(probe.metrics) >= {"test_accuracy", "train_accuracy", "per_class_recall"}


def test_ignored_rows_and_bad_labels():
    x, y = _blobs(200, 8, 2, sep=3.0)
    y = y.copy()
    y[:50] = -1
    _, report = fit_linear_probe(x, y, ["a", "b"])
    assert report.n_train + report.n_test == 150
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear_probe(x, np.full(200, 5), ["a", "b"])
    with pytest.raises(ValueError, match="fewer than two classes"):
        fit_linear_probe(x, np.zeros(200, int), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fit_linear_probe(x[:, 0], y, ["a", "b"])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 9), min_size=2, max_size=60), st.floats(0.05, 0.9), st.integers(0, 5)
)
def test_split_never_cuts_an_image(groups, fraction, seed):
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        with pytest.raises(ValueError):
            split_by_group(groups, fraction, seed)
        return
    test = split_by_group(groups, fraction, seed)
    assert test.any() and not test.all()
    for g in np.unique(groups):
        assert len(set(test[groups == g])) == 1


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(2, 5), st.integers(0, 10_000))
def test_majority_patch_labels_match_brute_force(rows, cols, p, seed):
    rng = np.random.default_rng(seed)
    mask = rng.integers(-1, 3, (rows * p, cols * p))
    got = majority_patch_labels(mask, (rows, cols), p)
    for r in range(rows):
        for c in range(cols):
            block = mask[r * p : (r + 1) * p, c * p : (c + 1) * p].ravel()
            block = block[block >= 0]
            if len(block) == 0:
                assert got[r, c] == -1
            else:
                counts = np.bincount(block)
                assert counts[got[r, c]] == counts.max()


def _final_tokens(b: int = 2, d: int = 8, grid=(3, 4), seed: int = 0):
    layout = TokenLayout(1, 0, grid)
    return torch.randn(b, layout.n_tokens, d, generator=torch.Generator().manual_seed(seed)), layout


def test_probe_heads_output_probabilities_of_the_right_shape():
    tokens, layout = _final_tokens()
    cls = LinearProbe(8, ["x", "y", "z"], kind="classification")
    out = cls(tokens, layout)
    assert out.shape == (2, 3) and torch.allclose(out.sum(-1), torch.ones(2))
    both = LinearProbe(8, ["x", "y"], kind="classification", pooling="cls+mean")
    assert both(tokens, layout).shape == (2, 2)
    seg = LinearProbe(8, ["bg", "a", "b"], kind="segmentation", patch_size=5)
    out = seg(tokens, layout)
    assert out.shape == (2, 3, 15, 20) and torch.allclose(
        out.sum(1), torch.ones(2, 15, 20), atol=1e-5
    )
    # at patch centres the upsampled segmentation agrees with the per-patch prediction
    logits = seg.logits_from_features(tokens[:, 1:]).argmax(-1).reshape(2, 3, 4)
    assert torch.equal(out[:, :, 2::5, 2::5].argmax(1), logits)
    with pytest.raises(HeadError, match="fitted on 8-d tokens"):
        cls(torch.randn(1, 13, 16), layout)
    with pytest.raises(ValueError, match="no CLS token"):
        LinearProbe(8, ["x", "y"])(torch.randn(1, 12, 8), TokenLayout(0, 0, (3, 4)))


def test_probe_files_round_trip_and_bad_files(tmp_path):
    x, y = _blobs(100, 8, 3, sep=3.0)
    probe, _ = fit_linear_probe(x, y, ["a", "b", "c"], name="blobs", backbone_id="tiny")
    probe.save(tmp_path, "blobs")
    back = load_head(tmp_path, "blobs")
    assert isinstance(back, LinearProbe) and back.class_names == ["a", "b", "c"]
    assert back.metrics["test_accuracy"] == probe.metrics["test_accuracy"]
    xt = torch.from_numpy(x[:5])
    assert torch.equal(back.logits_from_features(xt), probe.logits_from_features(xt))
    with pytest.raises(HeadError, match="not a SaliencyHead"):
        SaliencyHead.load(tmp_path, "blobs")
    with pytest.raises(HeadError, match="no head 'nope'"):
        load_head(tmp_path, "nope")
    weights = tmp_path / "blobs.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(HeadError, match="does not hold the weights"):
        load_head(tmp_path, "blobs")
    meta = json.loads((tmp_path / "blobs.json").read_text())
    (tmp_path / "blobs.json").write_text(json.dumps({**meta, "class": "os.system"}))
    with pytest.raises(HeadError, match="unknown head class"):
        load_head(tmp_path, "blobs")


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, make_tiny_model):
    return make_tiny_model(tmp_path_factory.mktemp("probe-model") / "m", crop=56)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saescope.train", "probe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_fits_both_probe_kinds_on_a_tiny_model(tiny_model, tmp_path):
    r = _run(
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "c"),
        "--max-images",
        "40",
        "--source",
        "builtin:digits?size=28",
    )
    assert r.returncode == 0, r.stderr
    assert "classification probe, 10 classes: held-out accuracy" in r.stdout
    report = json.loads((tmp_path / "c" / "digits.report.json").read_text())
    assert report["n_test_images"] == 8 and report["source"].startswith("builtin:digits")
    r = _run(
        "--task",
        "segmentation",
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "s"),
        "--max-images",
        "12",
        "--source",
        "builtin:digit-scenes?size=56",
        "--name",
        "scenes",
    )
    assert r.returncode == 0, r.stderr
    head = load_head(tmp_path / "s", "scenes")
    assert head.kind == "segmentation" and head.class_names[0] == "background"
    assert 0 <= head.metrics["pixel_accuracy"] <= 1 and head.metrics["test_miou"] is not None


def test_cli_errors_are_one_line(tiny_model, tmp_path):
    r = _run(
        "--task",
        "segmentation",
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path),
        "--source",
        "builtin:digits",
    )
    assert r.returncode == 2 and "unknown built-in segmentation source 'digits'" in r.stderr
    r = _run("--model", str(tiny_model))
    assert r.returncode == 2 and "--model needs --out" in r.stderr
    assert "Traceback" not in r.stderr


def test_probe_in_a_bundle_steers(tiny_bundle, tmp_path):
    from saescope.core.bundle import Bundle
    from saescope.core.sources import open_source
    from saescope.core.steering import Edit, cache_layer, steer
    from saescope.train.probes import add_probe_to_bundle, fit_probe

    path = tiny_bundle(tmp_path)
    bundle = Bundle.load(path)
    source = open_source("builtin:digits?size=28", max_images=30)
    probe, report, _ = fit_probe(
        bundle.backbone, source, "classification", name="digits", progress=False
    )
    add_probe_to_bundle(path, probe)
    bundle = Bundle.load(path)  # checksums cover the new files
    assert "digits" in bundle.head_names and bundle.probe_info("digits")["kind"] == "classification"
    head = bundle.load_head("digits")
    pixels = bundle.backbone.preprocess([source.load(0)])
    cache = cache_layer(bundle.backbone, bundle.sae, pixels)
    same = steer(bundle.backbone, bundle.sae, cache, [], head=head)
    assert torch.equal(same.head_before, same.head_after)
    f = int(bundle.sae.encode(cache.tokens[0, 1:]).sum(0).argmax())
    moved = steer(bundle.backbone, bundle.sae, cache, [Edit(f, scale=5.0)], head=head)
    assert moved.head_after.shape == (1, 10) and not torch.equal(
        moved.head_after, moved.head_before
    )
    with pytest.raises(Exception, match="no probe 'nope'"):
        bundle.load_head("nope")
    other = LinearProbe(32, ["a", "b"], name="alien", backbone_id="someone/else")
    with pytest.raises(ValueError, match="fitted on 'someone/else'"):
        add_probe_to_bundle(path, other)


@pytest.mark.slow
def test_default_bundles_carry_real_probes_with_held_out_accuracy():
    """The offline default bundles ship probes fitted on the real DINOv2-S, with the held-out
    accuracy they reached recorded (and far above chance)."""
    from saescope.core.bundle import Bundle
    from saescope.train.default_bundle import ensure_default_pair

    for path in ensure_default_pair():
        bundle = Bundle.load(path, verify=False)
        assert bundle.head_names == ["saliency", "digit-scenes", "digits"]
        digits = bundle.load_head("digits").metrics
        assert digits["test_accuracy"] > 0.85 > digits["chance_accuracy"] + 0.5
        assert digits["n_test_images"] >= 50
        scenes = bundle.load_head("digit-scenes").metrics
        assert scenes["test_balanced_accuracy"] > 0.35  # 11 classes: chance is 0.09
        assert scenes["test_miou"] > 0.25 and scenes["pixel_accuracy"] > 0.9
