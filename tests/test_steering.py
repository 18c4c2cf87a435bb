"""Steering: exact no-op, locality of edits, and a real effect on a frozen head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saescope.core.sae import SAE, SAEConfig
from saescope.core.steering import Edit, cache_layer, edit_positions, steer


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dinov2):
    root = tmp_path_factory.mktemp("steer")
    bb = tiny_dinov2(root)
    pixels = torch.randn(2, 3, 56, 56)
    sae = SAE(
        SAEConfig(d_in=32, d_sae=128, architecture="topk", k=8, layer=1, model_id=bb.model_id)
    )
    out = bb.forward_layers(pixels, [1])
    sae.set_normalization(out.tokens[1].reshape(-1, 32))

    def head(final, layout):  # a frozen linear readout of CLS
        return final[:, 0] @ torch.ones(32, 3)

    return bb, sae, pixels, head


def test_zero_edits_reproduce_the_unedited_output_exactly(setup) -> None:
    bb, sae, pixels, head = setup
    cache = cache_layer(bb, sae, pixels)
    res = steer(bb, sae, cache, [], head=head)
    assert torch.equal(res.tokens_after, cache.tokens)
    assert torch.equal(res.head_after, head(bb.forward(pixels), cache.layout))
    # an edit that changes nothing numerically (scale 1) also leaves the tokens exactly as they were
    res1 = steer(bb, sae, cache, [Edit(3, scale=1.0)], head=head)
    assert torch.equal(res1.tokens_after, cache.tokens)


def test_editing_selected_patches_leaves_other_tokens_untouched(setup) -> None:
    bb, sae, pixels, head = setup
    cache = cache_layer(bb, sae, pixels)
    feature = int(sae.encode(cache.tokens[:, 1:]).sum((0, 1)).argmax())
    res = steer(bb, sae, cache, [Edit(feature, value=10.0)], patches=[(0, 0), (1, 2)], head=head)
    changed = (res.tokens_after != cache.tokens).any(-1).any(0)
    assert changed.nonzero().flatten().tolist() == [1, 1 + 1 * 4 + 2]  # CLS at 0, grid 4x4
    assert not torch.equal(res.head_after, res.head_before)
    assert torch.equal(res.final_before, bb.forward(pixels))


def test_positions_masks_kinds_and_errors(setup) -> None:
    bb, sae, pixels, _ = setup
    layout = cache_layer(bb, sae, pixels).layout
    mask = np.zeros((4, 4), bool)
    mask[3, 3] = True
    assert edit_positions(layout, mask) == [16]
    assert edit_positions(layout, None, "cls,patch")[:2] == [0, 1]
    assert len(edit_positions(layout)) == 16
    with pytest.raises(IndexError, match="outside the 4x4 grid"):
        edit_positions(layout, [(4, 0)])
    with pytest.raises(ValueError, match="grid is"):
        edit_positions(layout, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="unknown feature 128"):
        steer(bb, sae, cache_layer(bb, sae, pixels), [Edit(128, scale=0)])
