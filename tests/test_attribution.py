"""Attribution by gradient x activation (core.attribution): exact where the model is linear,
the first-order term of a real edit elsewhere, confirmed by core.steering's own ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saescope.core.attribution import (
    AttributionError,
    attribute,
    head_change,
    measure_ablation,
)
from saescope.core.backbones.base import Backbone
from saescope.core.heads import SaliencyHead
from saescope.core.probes import LinearProbe
from saescope.core.sae import SAE, SAEConfig
from saescope.core.steering import Edit, LayerCache, cache_layer, steer
from saescope.core.tokens import TokenLayout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LinearBackbone(Backbone):
    """A real :class:`Backbone` whose blocks are residual linear maps and whose final norm is the
    identity: the rest of the model is linear, so first order is exact."""

    model_id = "test/linear"
    revision = None
    patch_size = 14

    def __init__(self, d: int, n_layers: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.n_layers, self.d_model = n_layers, d
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(n_layers))
        for b in self.blocks:
            b.weight.data = torch.randn(d, d, generator=gen) / d**0.5
        self.requires_grad_(False)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("tests hand it layer-L tokens directly")

    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.blocks[index](hidden)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def _sae(d_in: int, d_sae: int, layer: int, tokens: torch.Tensor, **kw) -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, layer=layer, **kw))
    sae.set_normalization(tokens.reshape(-1, d_in).float())
    return sae


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_dinov2):
    """Random tiny DINOv2 (4x4 grid, width 32), a TopK SAE at layer 1, and two real heads."""
    bb = tiny_dinov2(tmp_path_factory.mktemp("attr"))
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 56, 56)
    sae = _sae(32, 128, 1, bb.forward_layers(pixels, [1]).tokens[1], architecture="topk", k=8)
    probe = LinearProbe(32, [f"c{i}" for i in range(5)], pooling="mean").eval()
    probe.linear.weight.data = torch.randn(5, 32)
    saliency = SaliencyHead(in_dim=32, channels=(8, 8, 4)).eval().requires_grad_(False)
    return bb, sae, pixels, probe, saliency


def test_gradient_times_activation_equals_the_ablation_for_a_linear_continuation() -> None:
    torch.manual_seed(1)
    d, layout = 16, TokenLayout(1, 0, (3, 3))
    bb = LinearBackbone(d, 4).double()
    tokens = torch.randn(1, 10, d, dtype=torch.float64) * 3 + 1
    sae = _sae(d, 64, 1, tokens, architecture="relu").double()
    cache = LayerCache(tokens, layout, 1)
    w = torch.randn(d, 3, dtype=torch.float64)
    weights = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)

    def head(final, lay):  # linear in the final patch tokens
        return final[:, 1:].mean(1) @ w

    def weighted_sum(out):
        return (out * weights).sum()

    sel = [(0, 0), (1, 2), (2, 1), (2, 2)]
    res = attribute(bb, sae, head, cache, sel, target=weighted_sum, top=6, confirm=6)
    assert len(res.confirmed) == 6
    for a in res.confirmed:  # first order is the whole story here
        assert a.objective_change == pytest.approx(a.estimate, rel=1e-9, abs=1e-12)
        assert abs(a.estimate) > 1e-6
    # and independently of core.steering: the objective's change from the decoder row alone
    s = res.ranking[0]
    with torch.no_grad():
        x = tokens.clone()
        pos = res.positions
        z = sae.encode(x[0, pos])
        x[0, pos] -= z[:, s.feature : s.feature + 1] * sae.W_dec[s.feature] * sae.norm_scale
        moved = weighted_sum(head(bb.run_from(1, x), layout)) - weighted_sum(
            head(bb.run_from(1, tokens), layout)
        )
    assert float(moved) == pytest.approx(s.estimate, rel=1e-9)
    mags = [abs(x.attribution) for x in res.ranking]
    assert mags == sorted(mags, reverse=True)
    held_up = attribute(bb, sae, head, cache, sel, target=weighted_sum, top=6, order="support")
    signed = [x.attribution for x in held_up.ranking]
    assert signed == sorted(signed, reverse=True) and signed[0] == max(
        x.attribution for x in res.ranking
    )


def test_first_order_matches_a_small_edit_of_the_real_model(tiny) -> None:
    bb, sae, pixels, probe, _ = tiny
    bb64, sae64, probe64 = bb.double(), sae.double(), probe.double()
    try:
        cache = cache_layer(bb64, sae64, pixels.double())
        sel = [(1, 1), (1, 2), (2, 1), (2, 2)]
        res = attribute(bb64, sae64, probe64, cache, sel, confirm=0)
        assert res.kind == "classification" and "log-probability" in res.objective
        c = int(res.head_before[0].argmax())
        eps = 1e-5
        for s in res.ranking[:3]:
            out = steer(bb64, sae64, cache, [Edit(s.feature, scale=1 - eps)], sel, head=probe64)
            d = float(out.head_after[0, c].log() - out.head_before[0, c].log())
            assert d / eps == pytest.approx(-s.attribution, rel=1e-3, abs=1e-9)
    finally:
        bb.float(), sae.float(), probe.float()


@pytest.mark.parametrize("which", ["probe", "saliency"])
def test_confirmed_effects_are_those_of_the_steering_edit(tiny, which) -> None:
    bb, sae, pixels, probe, saliency = tiny
    head = probe if which == "probe" else saliency
    cache = cache_layer(bb, sae, pixels)
    sel = [(0, 0), (0, 1), (1, 0), (1, 1), (3, 3)]
    res = attribute(bb, sae, head, cache, sel, top=5, confirm=3)
    assert len(res.confirmed) == 3
    assert [a.feature for a in res.confirmed] == res.features(3)
    for a in res.confirmed:
        out = steer(bb, sae, cache, [Edit(a.feature, scale=0.0)], sel, head=head)
        before, after = out.head_before, out.head_after
        assert torch.equal(before, res.head_before)
        assert a.metrics == head_change(res.kind, before, after)
        if which == "saliency":  # the numbers the apps print, recomputed with numpy
            pb, pa = before[0, 0].numpy(), after[0, 0].numpy()
            assert a.metrics["changed_fraction"] == pytest.approx(
                float(((pb > 0.5) != (pa > 0.5)).mean())
            )
            assert a.metrics["mean_abs_change"] == pytest.approx(float(np.abs(pa - pb).mean()))
            assert a.metrics["moved_fraction"] == pytest.approx(
                float((np.abs(pa - pb) > 0.01).mean())
            )
        else:
            k = int(before[0].argmax())
            assert a.metrics["prob_change"] == pytest.approx(float(after[0, k] - before[0, k]))
    assert res.seconds["total_s"] > 0


def test_top_attributed_feature_beats_a_strong_feature_the_head_ignores() -> None:
    """Feature 0 fires 6x harder than feature 1, but its decoder row is orthogonal to the
    probe; the attribution must rank feature 1 first and its ablation must move the head more."""
    d, layout = 8, TokenLayout(1, 0, (4, 4))
    bb = LinearBackbone(d, 2)  # the SAE sits at the last layer: only the final norm follows
    sae = SAE(SAEConfig(d_in=d, d_sae=d, architecture="relu", layer=1, normalization="none"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(d))
        sae.W_enc.copy_(torch.eye(d))
        sae.b_enc.zero_(), sae.b_dec.zero_()
    tokens = torch.zeros(1, 17, d)
    tokens[0, 1:, 0], tokens[0, 1:, 1], tokens[0, 1:, 2] = 6.0, 1.0, 0.5
    probe = LinearProbe(d, ["a", "b", "c"], pooling="mean").eval()
    with torch.no_grad():
        probe.linear.weight.zero_()
        probe.linear.weight[:, 1] = torch.tensor([4.0, -1.0, 0.0])
        probe.linear.weight[:, 2] = torch.tensor([0.5, 0.0, 0.0])
    cache = LayerCache(tokens, layout, 1)
    sel = np.zeros((4, 4), bool)
    sel[1:3, 1:3] = True
    res = attribute(bb, sae, probe, cache, sel, top=3, confirm=1)
    assert res.activation_ranking[0].feature == 0
    assert res.activation_ranking[0].attribution == 0.0
    assert res.ranking[0].feature == 1
    top_act, _ = measure_ablation(bb, sae, probe, cache, 0, sel)
    top_attr = res.confirmed[0].metrics
    assert top_act["prob_change"] == 0.0
    assert top_attr["prob_change"] < -0.01  # the predicted class loses probability
    assert abs(top_attr["prob_change"]) > abs(top_act["prob_change"])


def test_no_gradient_leaks_and_it_runs_inside_inference_mode(tiny) -> None:
    bb, sae, pixels, probe, saliency = tiny
    sae.requires_grad_(True)  # as after training: attribution must still not touch .grad
    try:
        image = Image.fromarray(
            (np.random.default_rng(0).random((60, 70, 3)) * 255).astype("uint8")
        )
        with torch.inference_mode():
            res = attribute(bb, sae, saliency, image, [(2, 2), (2, 3)], target="region")
        assert res.ranking and "selected patches" in res.objective
        assert all(p.grad is None for m in (bb, sae, saliency) for p in m.parameters())
        assert res.ranking[0].activation > 0 and res.ranking[0].n_active >= 1
        assert not any(t.requires_grad for t in (res.head_before,))
    finally:
        sae.requires_grad_(False)


def test_hostile_inputs_give_clear_value_errors(tiny) -> None:
    bb, sae, pixels, probe, saliency = tiny
    cache = cache_layer(bb, sae, pixels)
    cases = [
        (dict(patches=[]), "no patches selected"),
        (dict(patches=np.zeros((4, 4), bool)), "no patches selected"),
        (dict(patches=np.ones((3, 4), bool)), "grid is 4x4"),
        (dict(patches=[(4, 0)]), r"\(4, 0\) is outside the 4x4 grid"),
        (dict(patches=[(-1, 2)]), "outside the 4x4 grid"),
        (dict(patches=[(1, "x")]), "pair of integers"),
        (dict(patches=[(1, 1)], top=0), "top must be >= 1"),
        (dict(patches=[(1, 1)], order="loudest"), "order must be 'abs' or 'support'"),
        (dict(patches=[(1, 1)], target=7), "target class must be in 0..4"),
        (dict(patches=[(1, 1)], target="nonsense", head=saliency), "unknown target"),
    ]
    for kw, msg in cases:
        args = {"head": probe, **kw}
        with pytest.raises(ValueError, match=msg):
            attribute(bb, sae, args.pop("head"), cache, args.pop("patches"), **args)
    with pytest.raises(AttributionError, match="one image"):
        attribute(bb, sae, probe, torch.randn(2, 3, 56, 56), None)
    with pytest.raises(AttributionError, match="LayerCache, a pixel batch"):
        attribute(bb, sae, probe, "image.png", None)
