"""transformers backbones: layer L == hidden_states[L + 1], forward == final output, run_from exact.

Tiny random configs are saved with ``save_pretrained`` and loaded back through the public
:func:`core.backbones.load_backbone` with the Hub offline, i.e. through the real from_pretrained
path.
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image

from saescope.core.backbones import load_backbone
from saescope.core.backbones.base import CLIP_MEAN, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from saescope.core.backbones.hf import preprocess_from_dict
from saescope.core.layers import LayerOutOfRange

TINY = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=14
)


def _save_tiny(kind: str, path) -> torch.nn.Module:
    """Save a tiny random checkpoint of ``kind`` at ``path``; return the saved vision model
    itself, the reference the loaded backbone must reproduce."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "clip":  # a full CLIP checkpoint (text + vision), as on the Hub
        text = dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=99,
            bos_token_id=0,
            eos_token_id=1,
        )
        cfg = tf.CLIPConfig(
            vision_config=dict(TINY, intermediate_size=64), text_config=text, projection_dim=16
        )
        full = tf.CLIPModel(cfg)
        full.save_pretrained(path)
        return full.vision_model
    if kind == "clip_vision":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY, intermediate_size=64))
    elif kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**TINY, mlp_ratio=2, layerscale_value=0.5))
    elif kind == "dinov2_reg":
        cfg = tf.Dinov2WithRegistersConfig(**TINY, mlp_ratio=2, num_register_tokens=4)
        model = tf.Dinov2WithRegistersModel(cfg)
    elif kind == "vit":
        model = tf.ViTModel(tf.ViTConfig(**TINY, intermediate_size=64))
    else:
        raise AssertionError(kind)
    model.save_pretrained(path)
    return model


KINDS = ["clip", "clip_vision", "dinov2", "dinov2_reg", "vit"]
FAMILY = {
    "clip": "clip",
    "clip_vision": "clip",
    "dinov2": "dinov2",
    "dinov2_reg": "dinov2-registers",
    "vit": "vit",
}


@pytest.fixture(scope="module", params=KINDS)
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    ref = _save_tiny(request.param, path).eval().requires_grad_(False)
    return request.param, str(path), ref


def _reference(kind: str, ref, x: torch.Tensor, **kw):
    with torch.inference_mode():
        out = ref(x, output_hidden_states=True, **kw)
        final = out.last_hidden_state
        if kind.startswith("clip"):  # transformers leaves CLIP tokens un-normed; ln_post is ours
            final = ref.post_layernorm(final)
            torch.testing.assert_close(final[:, 0], out.pooler_output, rtol=1e-5, atol=1e-6)
    return out.hidden_states, final


def test_layers_match_hidden_states(tiny):
    kind, path, ref = tiny
    bb = load_backbone(path)
    assert bb.family == FAMILY[kind]
    assert (bb.n_layers, bb.d_model, bb.patch_size) == (3, 32, 14)
    assert bb.n_registers == (4 if kind == "dinov2_reg" else 0)
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    hidden_states, final = _reference(kind, ref, x)
    assert len(hidden_states) == bb.n_layers + 1

    out = bb.forward_layers(x, layers=[0, 1, -1])
    assert sorted(out.tokens) == [0, 1, 2]
    assert out.layout.n_registers == bb.n_registers and out.layout.grid == (2, 2)
    for layer, tokens in out.tokens.items():
        assert tokens.shape == (2, out.layout.n_tokens, 32)
        torch.testing.assert_close(tokens, hidden_states[layer + 1], rtol=0, atol=0)
    torch.testing.assert_close(bb(x), final, rtol=0, atol=0)
    for layer in range(bb.n_layers):  # resuming from any block reproduces the output exactly
        torch.testing.assert_close(
            bb.run_from(layer, hidden_states[layer + 1]), final, rtol=0, atol=0
        )


def test_non_native_size_and_gradients(tiny):
    kind, path, ref = tiny
    bb = load_backbone(path)
    x = torch.randn(1, 3, 42, 28, generator=torch.Generator().manual_seed(2))
    kw = {} if kind.startswith("dinov2") else {"interpolate_pos_encoding": True}
    hidden_states, final = _reference(kind, ref, x, **kw)
    out = bb.forward_layers(x, layers=[0])
    assert out.layout.grid == (3, 2) and out.layout.n_tokens == 1 + bb.n_registers + 6
    torch.testing.assert_close(out.tokens[0], hidden_states[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bb(x), final, rtol=1e-6, atol=1e-6)
    h = out.tokens[0].clone().requires_grad_(True)  # steering differentiates through run_from
    bb.run_from(0, h).pow(2).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_layer_out_of_range(tiny):
    _, path, _ = tiny
    bb = load_backbone(path)
    with pytest.raises(LayerOutOfRange):
        bb.forward_layers(torch.zeros(1, 3, 28, 28), layers=[3])


def test_family_default_preprocess(tmp_path):
    _save_tiny("dinov2", tmp_path / "d")
    _save_tiny("clip", tmp_path / "c")
    _save_tiny("vit", tmp_path / "v")
    d, c, v = (load_backbone(str(tmp_path / k)).preprocess for k in "dcv")
    assert (d.resize_shortest_edge, d.crop_size, d.mean, d.std) == (
        256,
        (224, 224),
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert (c.resize_shortest_edge, c.crop_size, c.mean) == (28, (28, 28), CLIP_MEAN)
    assert (v.resize_shortest_edge, v.crop_size, v.mean) == (28, (28, 28), (0.5, 0.5, 0.5))
    assert load_backbone(str(tmp_path / "d")).describe()["preprocess_source"] == "defaults:dinov2"


def test_preprocessor_config_is_read(tmp_path):
    _save_tiny("clip_vision", tmp_path)
    cfg = {  # as written by CLIPImageProcessor
        "crop_size": {"height": 28, "width": 28},
        "do_center_crop": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 32},
        "image_processor_type": "CLIPImageProcessor",
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    bb = load_backbone(str(tmp_path))
    p = bb.preprocess
    assert (p.resize_shortest_edge, p.crop_size, p.mean, p.std) == (
        32,
        (28, 28),
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
    )
    assert bb.describe()["preprocess_source"] == "preprocessor_config.json"
    pixels = p([Image.new("RGB", (50, 40), (255, 0, 0))] * 2)
    assert pixels.shape == (2, 3, 28, 28)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([2.25, -0.4, -0.5]))
    assert bb(pixels).shape == (2, 5, 32)


def test_preprocess_from_vit_style_dict():
    vit = {
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
        "resample": 2,
        "size": {"height": 224, "width": 224},
    }
    p = preprocess_from_dict(vit, Preprocess((1, 1), 1, (0, 0, 0), (1, 1, 1)))
    assert (p.resize_shortest_edge, p.crop_size, p.resample) == (224, (224, 224), 2)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "swin"}))
    with pytest.raises(ValueError, match="unsupported model type 'swin'.*dinov2"):
        load_backbone(str(tmp_path))


def test_open_clip_missing_is_a_clear_import_error():
    if importlib.util.find_spec("open_clip") and importlib.util.find_spec("torchvision"):
        pytest.skip("open_clip and torchvision are installed here")
    with pytest.raises(ImportError, match="open_clip backend needs open_clip_torch"):
        load_backbone("open_clip:ViT-B-16/openai")


# -- open_clip ---------------------------------------------------------------------------------
class _FakeBlock(torch.nn.Module):
    """Shaped like open_clip's ResidualAttentionBlock (sequence-first attention, as in
    open_clip < 2.24)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, 2)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [L, N, D]
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _FakeVisual(torch.nn.Module):
    """The attributes and forward of open_clip's VisionTransformer, for a backend test without
    open_clip."""

    def __init__(self, d: int = 16, layers: int = 2, patch: int = 7, grid: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, d, patch, patch, bias=False)
        self.class_embedding = torch.nn.Parameter(torch.randn(d))
        self.positional_embedding = torch.nn.Parameter(torch.randn(grid * grid + 1, d))
        self.grid_size, self.image_size = (grid, grid), (grid * patch, grid * patch)
        self.ln_pre, self.ln_post = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.ModuleList([_FakeBlock(d) for _ in range(layers)])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:  # open_clip's forward up to ln_post
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding).transpose(0, 1)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x.transpose(0, 1))


def test_open_clip_backbone_on_a_fake_tower():
    from saescope.core.backbones.openclip import OpenClipBackbone, parse_open_clip_id

    visual = _FakeVisual().eval()
    bb = OpenClipBackbone(visual, "open_clip:fake").eval().requires_grad_(False)
    assert (bb.n_layers, bb.d_model, bb.patch_size, bb.family) == (2, 16, 7, "clip")
    x = torch.randn(3, 3, 14, 14)
    with torch.no_grad():
        ref = visual.tokens(x)
    torch.testing.assert_close(bb(x), ref, rtol=1e-5, atol=1e-6)
    out = bb.forward_layers(x, [0])
    torch.testing.assert_close(bb.run_from(0, out.tokens[0]), ref, rtol=1e-5, atol=1e-6)
    assert bb.forward_layers(torch.randn(1, 3, 21, 14), [-1]).layout.grid == (3, 2)
    assert parse_open_clip_id("open_clip:ViT-B-16/laion2b_s34b_b88k") == (
        "ViT-B-16",
        "laion2b_s34b_b88k",
    )
    assert parse_open_clip_id("open_clip:ViT-B-16", "openai") == ("ViT-B-16", "openai")
    assert parse_open_clip_id("hf-hub:timm/ViT-B-16-SigLIP") == (
        "hf-hub:timm/ViT-B-16-SigLIP",
        None,
    )


def test_open_clip_real_model():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("open_clip backend needs torchvision, which cannot be imported here")
    pytest.importorskip("torchvision", reason="torchvision is installed but does not import")
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed")
    from saescope.core.backbones.openclip import OpenClipBackbone

    model = open_clip.create_model("ViT-B-32", pretrained=None)  # random weights, no download
    visual = model.visual.eval().requires_grad_(False)
    bb = OpenClipBackbone(visual, "open_clip:ViT-B-32")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pooled = visual(x)
    tokens = bb(x)
    torch.testing.assert_close(tokens[:, 0] @ visual.proj, pooled, rtol=1e-4, atol=1e-5)
