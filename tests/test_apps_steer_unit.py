"""The steering apps without a browser: the engine's head choice, multi-class outputs and several
edits at once, the class panels, held-out examples, and both apps' API through gradio_client.

Runs on the tiny random DINOv2 bundle with two real probes fitted on it (seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saescope.apps import adapter, panels
from saescope.apps.engine import Engine, slider_edits
from saescope.core.steering import Edit


@pytest.fixture(scope="module")
def bundle(tiny_probe_bundle) -> Path:
    return tiny_probe_bundle


@pytest.fixture(scope="module")
def engine(bundle) -> Engine:
    return Engine(str(bundle), head="digit-scenes")


def scene(index: int = 260) -> Image.Image:
    from saescope.core.sources import open_segmentation_source

    return open_segmentation_source("builtin:digit-scenes?n=300").load(index)


# ------------------------------------------------------------------------------ engine
def test_head_choice_and_kinds(bundle, engine) -> None:
    assert engine.head_names == ["digit-scenes", "digits"]
    assert engine.default_head == "digit-scenes" and engine.head_kind == "segmentation"
    assert engine.heads_of_kind("classification") == ["digits"]
    info = engine.head_info("digit-scenes")
    assert info["classes"][0] == "background" and len(info["classes"]) == 11
    assert "test_accuracy" in info["metrics"]
    assert Engine(str(bundle)).default_head == "digit-scenes"  # the bundle's default: first probe
    assert Engine(str(bundle), head="digits").head_kind == "classification"
    with pytest.raises(adapter.AppSetupError, match="no head 'nope'.*digit-scenes, digits"):
        Engine(str(bundle), head="nope")


def test_multiclass_segmentation_and_classification_outputs(engine) -> None:
    an = engine.analyse(scene())
    seg = an.head_before
    assert seg.shape == (11, 224, 224)
    np.testing.assert_allclose(seg.sum(0), 1.0, atol=1e-4)  # probabilities over classes
    probs = engine.head_before(an, "digits")
    assert probs.shape == (10,)
    # the probe's own probabilities, not softmax(probabilities)
    head = engine.get_head("digits")
    with torch.inference_mode():
        direct = head(an.cache.base_final, an.cache.layout)[0].numpy()
    np.testing.assert_allclose(probs, direct, rtol=1e-6)
    assert abs(probs.sum() - 1) < 1e-4 and probs.max() > 0.1 + 1e-3  # not flattened to ~uniform


def test_zero_edits_are_exact_for_every_head(engine) -> None:
    an = engine.analyse(scene(270))
    for head in engine.head_names:
        out = engine.steer(an, [], None, head=head)
        assert np.array_equal(out.head_after, out.head_before)
        assert out.head == head and out.token_change == 0.0
    # edits that are no-ops (scale 1) are dropped by slider_edits: still exact
    out = engine.steer(an, slider_edits({3: 1.0, 5: 1.0}), [(2, 2)], head="digits")
    assert np.array_equal(out.head_after, out.head_before)


def test_several_edits_at_once(engine) -> None:
    an = engine.analyse(scene(280))
    feats = [f for f, _, _ in engine.top_features(an, None, 3)]
    assert len(feats) == 3
    both = engine.steer(an, [Edit(feats[0], scale=0.0), Edit(feats[1], scale=4.0)], None)
    one = engine.steer(an, [Edit(feats[0], scale=0.0)], None)
    two = engine.steer(an, [Edit(feats[1], scale=4.0)], None)
    assert not np.allclose(both.head_after, one.head_after)
    assert not np.allclose(both.head_after, two.head_after)
    # the codes after the edits: both features edited on every patch
    assert float(both.codes_after[:, feats[0]].abs().sum()) == 0.0
    torch.testing.assert_close(
        both.codes_after[:, feats[1]], 4 * an.codes[:, feats[1]], rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="edited twice"):
        engine.steer(an, [Edit(feats[0], scale=0.0), Edit(feats[0], scale=2.0)], None)


def test_patch_selection_and_cls_edits(engine) -> None:
    an = engine.analyse(scene(290))
    f = engine.top_features(an, None, 1)[0][0]
    sel = [(r, c) for r in range(4, 8) for c in range(4, 8)]
    out = engine.steer(an, [Edit(f, value=20.0)], sel, head="digits")
    mask = an.mask(sel)
    assert torch.all(out.codes_after[torch.as_tensor(mask), f] == 20.0)
    torch.testing.assert_close(
        out.codes_after[torch.as_tensor(~mask)], an.codes[torch.as_tensor(~mask)]
    )
    with_cls = engine.steer(an, [Edit(f, value=20.0)], None, head="digits", kinds="cls,patch")
    patches_only = engine.steer(an, [Edit(f, value=20.0)], None, head="digits")
    assert not np.allclose(with_cls.head_after, patches_only.head_after)
    assert torch.all(with_cls.codes_after[:, f] == 20.0)


def test_slider_edits() -> None:
    assert slider_edits({1: 1.0, 2: 0.0, 3: 2.5}) == [Edit(2, scale=0.0), Edit(3, scale=2.5)]
    assert slider_edits({4: 2.0}, "set", {4: 1.5}) == [Edit(4, value=3.0)]
    assert slider_edits({4: 1.0}, "set", {4: 1.5}) == []  # 1 leaves a feature alone in both modes
    with pytest.raises(ValueError, match="unknown edit mode"):
        slider_edits({1: 0.0}, "add")


# ------------------------------------------------------------------------------ panels
def test_class_panels_count_changed_pixels() -> None:
    names = ["background", "0", "1"]
    before = np.zeros((3, 20, 20), np.float32)
    before[0] = 1.0
    after = before.copy()
    after[:, :5, :4] = 0.0
    after[2, :5, :4] = 1.0  # 20 of 400 pixels: background -> "1"
    view = Image.new("RGB", (40, 40), (120, 120, 120))
    img, info = panels.class_change_overlay(view, before, after, names)
    assert img.size == (40, 40)
    assert info["n_changed"] == 20 and info["changed_fraction"] == pytest.approx(0.05)
    assert info["transitions"][0][:2] == (0, 2)
    assert info["fraction_after"][2] == pytest.approx(0.05)
    seg = np.asarray(panels.segmentation_overlay(view, after, names))
    colour = panels.class_colours(names)[2]
    assert np.abs(seg[2, 2].astype(int) - colour).max() < 80  # class "1" is drawn in its colour
    assert tuple(seg[30, 30]) != tuple(seg[2, 2])
    legend = panels.legend_html(names, info["fraction_before"], info["fraction_after"])
    assert "background" in legend and "0%→5%" in legend
    two = panels.as_class_probs(np.full((4, 4), 0.8, np.float32))
    assert two.shape == (2, 4, 4) and np.allclose(two[1], 0.8) and np.allclose(two.sum(0), 1)


def test_probability_bars_and_metrics_line() -> None:
    img = panels.probability_bars(
        np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.8, 0.1]), ["a", "b", "c"]
    )
    assert img.size[0] > 300
    line = panels.metrics_line(
        {
            "metrics": {
                "test_accuracy": 0.9,
                "test_miou": 0.4,
                "pixel_accuracy": 0.93,
                "n_test_images": 40,
            }
        }
    )
    assert "pixel accuracy **0.93**" in line and "mIoU **0.40**" in line and "40 unseen" in line


def test_probe_examples_are_held_out(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    ex = adapter.probe_examples(
        "builtin:digit-scenes?n=300", "segmentation", 4, start=250, n_used=200
    )
    idx = [int(Path(p).stem) for p, _ in ex]
    assert len(ex) == 4 and min(idx) == 250 and max(idx) == 299
    assert all(c.startswith("contains ") for _, c in ex)
    ex = adapter.probe_examples(
        "builtin:digits?size=112", "classification", 3, start=1500, n_used=300
    )
    assert [int(Path(p).stem) for p, _ in ex][0] == 1500 and ex[0][1].startswith("true class ")
    assert adapter.probe_examples("builtin:no-such-set", "classification", 3) == []


# ------------------------------------------------------------------------------ the apps' API
N = 5


def slots(ids=(None,) * N, vals=(1.0,) * N) -> list:
    return [*ids, *vals]


def test_segment_app_api(bundle, serve, tmp_path) -> None:
    from gradio_client import Client, handle_file

    from saescope.apps.segment import build_app

    demo = build_app(str(bundle), examples=False)
    assert demo.default_head == "digit-scenes"
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        path = tmp_path / "scene.png"
        scene(285).save(path)
        mode, scope = "scale the feature (× slider)", "selected patches"
        out = client.predict(
            handle_file(str(path)), "digit-scenes", mode, scope, *slots(), api_name="/analyse"
        )
        # outputs as the API sees them (states left out): upload, status, picker, selection,
        # info, segmentation, legend, OOD line, candidates, attribution, N slot ids, N sliders,
        # after panels
        assert "patches" in out[1] and "background" in out[6] and len(out[8]) > 0
        assert "Features that matter" in out[9]
        ids = [u["value"] for u in out[10 : 10 + N]]
        assert all(isinstance(f, int) for f in ids)
        assert "No edits" in out[-3] and "0.0%" in out[-2]
        sel = ";".join(f"{r},{c}" for r in range(3, 13) for c in range(3, 13))
        sel_out = client.predict("digit-scenes", sel, mode, scope, *slots(ids), api_name="/select")
        assert "100 of 256 patches selected" in sel_out[0]
        assert "on the 100 selected patches" in sel_out[2]
        ids = [u["value"] for u in sel_out[3 : 3 + N]]
        edited = client.predict(
            "digit-scenes",
            sel,
            mode,
            "all patches",
            *slots(ids, (0.0, 5.0, 5.0, 1.0, 1.0)),
            api_name="/steer",
        )
        after_img, changed_img, legend, edits_md, effect, timing = edited
        assert "Active edits on all patches" in edits_md and "off" in edits_md
        assert "of pixels changed class" in effect and "steering" in timing
        assert Path(after_img).is_file() and Path(changed_img).is_file()
        reset = client.predict(
            "digit-scenes", sel, mode, scope, *slots(ids, (0.0,) * N), api_name="/reset"
        )
        assert all(u["value"] == 1.0 for u in reset[N : 2 * N]) and "No edits" in reset[-3]
        # switching the head: the same image read by another segmentation head is not offered
        with pytest.raises(Exception, match="unknown head|not in the list|choices"):
            client.predict("digits", sel, mode, scope, *slots(ids), api_name="/head")
    finally:
        served.close()


def test_classify_app_api_and_bad_uploads(bundle, serve, awkward_files, tmp_path) -> None:
    from gradio_client import Client, handle_file

    from saescope.apps.classify import build_app

    demo = build_app(str(bundle), examples=False)
    assert demo.default_head == "digits"
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        from saescope.core.sources import open_source

        path = tmp_path / "digit.png"
        open_source("builtin:digits?size=112").load(1600).save(path)
        mode = "scale the feature (× slider)"
        out = client.predict(
            handle_file(str(path)),
            "digits",
            mode,
            "selected patches",
            *slots(),
            api_name="/analyse",
        )
        assert "Predicted:" in out[5]
        ids = [u["value"] for u in out[10 : 10 + N]]
        edited = client.predict(
            "digits",
            "",
            mode,
            "all patches + CLS token",
            *slots(ids, (5.0,) * N),
            api_name="/steer",
        )
        callout, bars, table, edits_md, effect, timing = edited
        assert "Prediction" in callout and "| class | before | after |" in table
        assert "and the CLS token" in edits_md and "total variation" in effect
        files = awkward_files(tmp_path / "bad")
        for name, words in [
            ("not_an_image.png", "not an image"),
            ("bomb.png", "decompression bomb"),
            ("huge.png", "above the limit"),
            ("corrupt.png", "corrupt"),
        ]:
            bad = client.predict(
                handle_file(str(files[name])),
                "digits",
                mode,
                "selected patches",
                *slots(),
                api_name="/analyse",
            )
            assert "sae-error" in bad[1] and words in bad[1].lower(), (name, bad[1])
            assert "pp-empty" in bad[2]  # no patch grid: nothing half-shown
    finally:
        served.close()


def test_app_without_a_probe_of_that_kind_says_what_to_do(tiny_bundle, tmp_path) -> None:
    from saescope.apps.classify import build_app

    with pytest.raises(adapter.AppSetupError, match="no classification head.*saescope probe"):
        build_app(str(tiny_bundle(tmp_path, "no-probes")), examples=False)


# ------------------------------------------------------------------------------ issue 12
def test_engine_attribution_on_a_selection(engine) -> None:
    an = engine.analyse(scene(290))
    sel = [(r, c) for r in range(4, 10) for c in range(4, 10)]
    res = engine.attribute(an, sel, head="digit-scenes", top=8, confirm=2)
    assert res.kind == "segmentation" and len(res.positions) == len(sel)
    feats = res.features(8)
    assert len(feats) == 8 and len(set(feats)) == 8
    mags = [abs(s.attribution) for s in res.ranking]
    assert mags == sorted(mags, reverse=True)  # by |attribution|, largest first
    assert all(s.n_active > 0 for s in res.ranking)  # only features firing on the selection
    assert [a.feature for a in res.confirmed] == feats[:2]
    assert "changed_fraction" in res.confirmed[0].metrics
    cls = engine.attribute(an, None, head="digits", top=5, kinds="cls,patch")
    assert cls.kind == "classification" and len(cls.positions) == an.n_patches + 1
    # no gradient leaks into the model's parameters
    assert all(p.grad is None for p in engine.sae.parameters())


def test_head_reference_flags_other_data(engine) -> None:
    from saescope.core.sources import open_source

    ref = engine.head_reference("digits")
    assert ref is not None and ref.source.startswith("builtin:digits")
    assert len(ref.calibration) >= 20 and 0 < ref.threshold < 1
    digit = engine.analyse(open_source("builtin:digits?size=112").load(1700))
    far = engine.analyse(Image.fromarray(np.full((224, 224, 3), (250, 10, 200), np.uint8)))
    d, f = engine.head_ood(digit, "digits"), engine.head_ood(far, "digits")
    assert f.score > d.score and f.is_ood and f.percentile == 100.0
    assert engine.head_reference("digits") is ref  # fitted once


def test_select_fills_sliders_in_attribution_order(bundle, serve, tmp_path) -> None:
    """The sliders follow the causal ranking (not the activation one), and the attribution
    table beside the cards lists it with the measured effect of the confirmed features."""
    from gradio_client import Client, handle_file

    from saescope.apps.segment import build_app

    demo = build_app(str(bundle), examples=False)
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        path = tmp_path / "scene.png"
        scene(295).save(path)
        mode, scope = "scale the feature (× slider)", "selected patches"
        out = client.predict(
            handle_file(str(path)), "digit-scenes", mode, scope, *slots(), api_name="/analyse"
        )
        sel_cells = [(r, c) for r in range(5, 11) for c in range(5, 11)]
        sel = ";".join(f"{r},{c}" for r, c in sel_cells)
        sel_out = client.predict("digit-scenes", sel, mode, scope, *slots(), api_name="/select")
        ids = [u["value"] for u in sel_out[3 : 3 + N]]
        eng = demo.engine
        an = eng.analyse(Image.open(path).convert("RGB"))
        res = eng.attribute(an, sel_cells, head="digit-scenes", top=10)
        assert ids == res.features(N)
        activation = [f for f, _, _ in eng.top_features(an, sel_cells, N)]
        assert ids != activation  # the two rankings differ on this selection
        table = sel_out[2]
        assert "Features that matter" in table and "on the 36 selected patches" in table
        assert all(f"#{f}" in table for f in ids)
        assert table.count("of pixels change class") == 3  # the confirmed (ablated) ones
        assert "ood" in out[7]  # an OOD line next to the prediction (warning or all-clear)
    finally:
        served.close()


@pytest.mark.slow
def test_classify_warns_on_a_photo_not_on_a_digit(serve, tmp_path) -> None:
    """The default bundle's digits probe: a held-out digit -> no warning; the motorcycle photo
    (which it calls a '3' at 99.9%) -> a warning beside the prediction."""
    from gradio_client import Client, handle_file
    from skimage import data

    from saescope.apps.classify import build_app
    from saescope.core.sources import open_source
    from saescope.train.default_bundle import ensure_default_bundle

    demo = build_app(str(ensure_default_bundle(progress=False)), examples=False)
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        digit, moto = tmp_path / "digit.png", tmp_path / "moto.png"
        open_source("builtin:digits?size=112").load(1600).save(digit)
        Image.fromarray(data.stereo_motorcycle()[0]).save(moto)
        mode, scope = "scale the feature (× slider)", "selected patches"
        outs = {}
        for name, path in [("digit", digit), ("moto", moto)]:
            outs[name] = client.predict(
                handle_file(str(path)), "digits", mode, scope, *slots(), api_name="/analyse"
            )
        assert "Predicted:" in outs["digit"][5] and "⚠" not in outs["digit"][7]
        assert "In distribution" in outs["digit"][7]
        warn = outs["moto"][7]
        assert "⚠" in warn and "unlike the data the <b>digits</b> head was fitted on" in warn
        assert "95th percentile" in warn and "treat the prediction with caution" in warn
    finally:
        served.close()
