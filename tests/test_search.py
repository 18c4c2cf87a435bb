"""Search by example: patch codes, top features of highlighted patches, feature maps, exemplars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saescope.core.sae import SAE, SAEConfig, ShapeMismatch
from saescope.core.search import (
    PatchSelectionError,
    feature_map,
    patch_codes,
    patch_mask,
    patch_mask_from_box,
    search_by_example,
    top_features_for_patches,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_dinov2) -> dict:
    """A tiny random DINOv2 backbone, a small TopK SAE for its layer -2, a digit image."""
    from saescope.core.sources import open_source

    root = tmp_path_factory.mktemp("search")
    backbone = tiny_dinov2(root / "model")
    source = open_source("builtin:digits", max_images=24)
    sae = make_sae(backbone)
    pixels = backbone.preprocess([source.load(i) for i in range(8)])
    toks = backbone.forward_layers(pixels, [-2]).tokens[1][:, 1:].reshape(-1, 32)
    sae.set_normalization(toks)
    return {
        "root": root,
        "backbone": backbone,
        "source": source,
        "sae": sae.eval(),
        "image": source.load(3),
    }


def make_sae(backbone, d_in: int = 32, **over) -> SAE:
    prov = {"model_id": backbone.model_id, "layer": backbone.resolve_layer(-2), **over}
    return SAE(SAEConfig(d_in=d_in, d_sae=96, architecture="topk", k=6, **prov), seed=1)


@torch.no_grad()
def reference_codes(tiny: dict) -> torch.Tensor:
    bb, sae = tiny["backbone"], tiny["sae"]
    out = bb.forward_layers(bb.preprocess([tiny["image"]]), [1])
    return sae.encode(out.tokens[1][0, 1:])  # CLS first, then the 16x16 patches


def test_patch_codes_are_the_sae_codes_of_the_patch_tokens(tiny: dict) -> None:
    codes, layout = patch_codes(tiny["backbone"], tiny["sae"], tiny["image"])
    assert layout.grid == (16, 16) and codes.shape == (256, 96)
    torch.testing.assert_close(codes, reference_codes(tiny))


def test_top_features_sum_over_the_selected_patches(tiny: dict) -> None:
    ref = reference_codes(tiny).reshape(16, 16, 96)
    pairs = [(2, 3), (2, 4), (10, 11)]
    got = top_features_for_patches(tiny["backbone"], tiny["sae"], tiny["image"], pairs, n=5)
    summed = ref[2, 3] + ref[2, 4] + ref[10, 11]
    vals, idx = summed.topk(5)
    want = [(int(i), float(v)) for v, i in zip(vals, idx) if v > 0]
    assert [f for f, _ in got] == [f for f, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)
    mask = np.zeros((16, 16), bool)
    mask[2, 3] = mask[2, 4] = mask[10, 11] = True
    assert top_features_for_patches(tiny["backbone"], tiny["sae"], tiny["image"], mask, n=5) == got
    everything = top_features_for_patches(tiny["backbone"], tiny["sae"], tiny["image"], None, n=3)
    assert [f for f, _ in everything] == ref.reshape(-1, 96).sum(0).topk(3).indices.tolist()


def test_feature_map(tiny: dict) -> None:
    ref = reference_codes(tiny)
    f = int(ref.sum(0).argmax())
    m = feature_map(tiny["backbone"], tiny["sae"], tiny["image"], f)
    assert m.shape == (16, 16) and m.dtype == np.float32
    np.testing.assert_allclose(m.reshape(-1), ref[:, f].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown feature"):
        feature_map(tiny["backbone"], tiny["sae"], tiny["image"], 96)


def test_patch_selection_errors() -> None:
    with pytest.raises(PatchSelectionError, match=r"\(16, 0\) is outside the 16x16 grid"):
        patch_mask((16, 16), [(0, 0), (16, 0)])
    with pytest.raises(PatchSelectionError, match="outside"):
        patch_mask((16, 16), [(-1, 3)])
    with pytest.raises(PatchSelectionError, match="shape"):
        patch_mask((16, 16), np.ones((14, 14), bool))
    with pytest.raises(PatchSelectionError, match="no patches"):
        patch_mask((16, 16), np.zeros((16, 16), bool))
    with pytest.raises(PatchSelectionError, match="no patches"):
        patch_mask((16, 16), [])
    with pytest.raises(PatchSelectionError, match="pairs"):
        patch_mask((16, 16), [(1, 2, 3)])
    assert patch_mask((4, 5), torch.tensor([[0, 4], [3, 0]])).sum() == 2


def test_patch_mask_from_box() -> None:
    m = patch_mask_from_box((16, 16), (224, 224), (0, 0, 28, 14))
    assert m.sum() == 2 and m[0, 0] and m[0, 1]
    m = patch_mask_from_box((4, 8), (400, 200), (100, 50, 150, 100))  # 50x50 px patches
    assert np.argwhere(m).tolist() == [[1, 2]]
    with pytest.raises(PatchSelectionError):
        patch_mask_from_box((4, 4), (40, 40), (50, 50, 60, 60))


def test_incompatible_sae_is_refused(tiny: dict) -> None:
    bb, image = tiny["backbone"], tiny["image"]
    with pytest.raises(ShapeMismatch, match="layer"):
        top_features_for_patches(bb, make_sae(bb, layer=7), image)  # a 3-block model
    with pytest.raises(ShapeMismatch, match="trained on"):
        top_features_for_patches(bb, make_sae(bb, model_id="facebook/dinov2-small"), image)
    with pytest.raises(ShapeMismatch, match="width"):
        top_features_for_patches(bb, make_sae(bb, d_in=64), image)
    with pytest.raises(ShapeMismatch, match="not patches"):
        top_features_for_patches(bb, make_sae(bb, token_kinds=["cls"]), image)


def test_search_by_example_returns_exemplars(tiny: dict, tmp_path: Path) -> None:
    from saescope.train.exemplars import build_exemplars_from_images

    bb, sae = tiny["backbone"], tiny["sae"]
    ex = build_exemplars_from_images(sae, bb, tiny["source"], k=4, batch_images=12, progress=False)
    matches = search_by_example(
        bb, sae, ex, tiny["image"], [(5, 5), (5, 6), (6, 5)], n_features=3, n_exemplars=2
    )
    top = top_features_for_patches(bb, sae, tiny["image"], [(5, 5), (5, 6), (6, 5)], n=3)
    assert [(m.feature, pytest.approx(m.score)) for m in matches] == top
    for m in matches:
        assert m.query_map.shape == (16, 16) and m.query_map.sum() > 0
        assert 1 <= len(m.exemplars) <= 2 and m.stats["frequency"] > 0
        for e in m.exemplars:
            assert e.patch_map.shape == (16, 16) and e.value == pytest.approx(
                e.patch_map.max(), rel=1e-3
            )
            assert e.image_id == tiny["source"].image_id(e.image_index)
    other = SAE(
        SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, model_id=bb.model_id, layer=1)
    )
    with pytest.raises(ShapeMismatch, match="another SAE"):
        search_by_example(bb, other, ex, tiny["image"], None)


# ------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_end_to_end_on_the_offline_model(tmp_path: Path) -> None:
    """Real DINOv2-S: extract, fit a TopK SAE, exemplars, then search by example on the cat."""
    from skimage import data

    from saescope.core.backbones import load_backbone
    from saescope.core.exemplars import Exemplars
    from saescope.core.heatmap import crop_for_preprocess, exemplar_grid, render_heatmap
    from saescope.core.sae_io import from_pretrained
    from saescope.core.store import ActivationStore
    from saescope.train.exemplars import build_exemplars
    from saescope.train.extract import extract
    from saescope.train.fit import FitConfig, SAESpec, fit

    bb = load_backbone("offline:dinov2-s-saliency")
    store_path = extract(
        bb, "builtin:photos?views=4", tmp_path / "acts", layers=[-2], max_images=100, progress=False
    )[0]
    store = ActivationStore(store_path)
    folders = fit(
        FitConfig(
            store=str(store_path),
            out=str(tmp_path / "saes"),
            saes=[SAESpec("topk", 4, k=16)],
            tokens=2 * store.n_tokens,
            batch_size=1024,
            lr=1e-3,
            lr_warmup_steps=10,
            progress=False,
            plots=False,
        )
    )
    sae = from_pretrained(folders[0])
    ex = build_exemplars(sae, store, k=8, batch_images=32, progress=False)
    ex.save(tmp_path / "ex", map_dtype="uint8")
    ex = Exemplars.load(tmp_path / "ex")

    cat = Image.fromarray(data.chelsea())
    crop = crop_for_preprocess(cat, bb.preprocess)  # 224x224: the cat's face fills most of it
    # highlight the face's centre: both eyes and the nose (the crop's edges are fur and ears)
    face = patch_mask_from_box((16, 16), crop.size, (28, 56, 196, 196))
    matches = search_by_example(bb, sae, ex, cat, face, n_features=3, n_exemplars=4)
    assert matches, "no feature fires on the cat's face"
    best = matches[0]
    assert best.score > 0
    fmap = feature_map(bb, sae, cat, best.feature)
    np.testing.assert_allclose(fmap, best.query_map, rtol=1e-5, atol=1e-6)
    inside, outside = fmap[face].mean(), fmap[~face].mean()
    assert inside > outside, (best.feature, inside, outside)
    assert best.exemplars, "the top feature has no exemplars"
    for e in best.exemplars:
        assert e.patch_map.shape == (16, 16) and e.patch_map.max() > 0
        assert e.image_id.startswith("photos/")
    # the exemplars can be shown: reload pixels, render a grid with heat-maps
    tiles = [
        (crop_for_preprocess(ex.load_image(e.image_index), bb.preprocess), e.patch_map, e.image_id)
        for e in best.exemplars
    ]
    grid = exemplar_grid(tiles, cols=4, thumb=64)
    assert grid.width > 4 * 64
    assert render_heatmap(crop, fmap).height == 224
