"""At most N exemplars per source image: the streaming pass against a brute-force reference.

The reference applies the definition literally: dense codes -> per-image max over patch tokens
-> group images by source -> keep each source's best N (rank: value desc, then image index asc)
-> top k of what is left (firing images only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.core.exemplars import META_FILE, Exemplars, source_origins
from saescope.core.sae import Codes
from saescope.core.store import ActivationStore
from saescope.core.tokens import TokenLayout
from saescope.train.exemplar_pass import ExemplarAccumulator, cap_per_source, rank_key
from saescope.train.exemplars import build_exemplars, build_exemplars_from_images

LAYOUT = TokenLayout(n_cls=1, n_registers=0, grid=(3, 4))
KINDS = ("cls", "patch")


def random_codes(n_images: int, d_sae: int, seed: int) -> torch.Tensor:
    """Dense non-negative codes [n_images, T, d_sae] drawn from a few levels: many exact ties
    (within and across images) and many silent (image, feature) pairs."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    pick = torch.randint(0, len(levels), (n_images, LAYOUT.n_tokens, d_sae), generator=g)
    codes = levels[pick]
    codes[torch.rand(codes.shape, generator=g) < 0.8] = 0  # sparse
    codes[:, :, :2][
        torch.rand(n_images, 1, 1, generator=g).expand(-1, LAYOUT.n_tokens, 2) < 0.9
    ] = 0
    return codes


def brute_force(
    codes: torch.Tensor, groups: np.ndarray, k: int, per_source: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(indices [F, k], values [F, k]) by the definition; -1 / 0 fill empty slots."""
    image_max = codes[:, LAYOUT.n_cls :].amax(1)  # [n, F]
    n, F = image_max.shape
    indices = np.full((F, k), -1)
    values = np.zeros((F, k), dtype=np.float32)
    for f in range(F):
        firing = [i for i in range(n) if image_max[i, f] > 0]
        ranked = sorted(firing, key=lambda i: (-float(image_max[i, f]), i))
        taken: dict[int, int] = {}
        kept = []
        for i in ranked:
            if per_source and taken.get(int(groups[i]), 0) >= per_source:
                continue
            taken[int(groups[i])] = taken.get(int(groups[i]), 0) + 1
            kept.append(i)
        kept = kept[:k]
        indices[f, : len(kept)] = kept
        values[f, : len(kept)] = [float(image_max[i, f]) for i in kept]
    return indices, values


def stream(
    codes: torch.Tensor,
    groups: np.ndarray,
    k: int,
    per_source: int | None,
    batch: int,
    sparse: bool = False,
) -> ExemplarAccumulator:
    n, T, F = codes.shape
    acc = ExemplarAccumulator(F, k, LAYOUT, KINDS, per_source=per_source)
    for a in range(0, n, batch):
        x = codes[a : a + batch].reshape(-1, F)
        c = Codes(dense=x)
        if sparse:  # the k-sparse form (zeros included: they are dropped)
            vals, idx = x.topk(F // 2, dim=1)
            c = Codes(indices=idx, values=vals)
        g = torch.from_numpy(groups[a : a + batch])
        acc.update(a, len(x) // T, c, image_groups=g)
    return acc


@pytest.mark.parametrize("per_source", [None, 1, 2])
@pytest.mark.parametrize(
    "n_sources,k,batch,sparse",
    [(9, 4, 7, False), (6, 20, 16, False), (40, 5, 1, False), (9, 6, 64, True)],
)
def test_stream_equals_brute_force(
    per_source: int | None, n_sources: int, k: int, batch: int, sparse: bool
) -> None:
    """Many views per source (view-major like builtin:photos, and shuffled), ties everywhere,
    k above what the cap allows (empty slots), batches from 1 image to all of them."""
    n, F = 64, 24
    codes = random_codes(n, F, seed=n_sources * 100 + k)
    if sparse:  # what the k-sparse form holds (top F/2 codes of each token), as dense codes
        vals, idx = codes.topk(F // 2, dim=-1)
        codes = torch.zeros_like(codes).scatter_(-1, idx, vals)
    for groups in (
        np.arange(n) % n_sources,
        np.random.default_rng(k).integers(0, n_sources, n),
    ):
        acc = stream(codes, groups, k, per_source, batch, sparse)
        got_i, got_v, maps = acc.ordered()
        want_i, want_v = brute_force(codes, groups, k, per_source)
        np.testing.assert_array_equal(got_i.numpy(), want_i)
        np.testing.assert_array_equal(got_v.numpy(), want_v)
        for f in range(codes.shape[2]):
            for j, i in enumerate(want_i[f]):
                want = codes[i, LAYOUT.n_cls :, f] if i >= 0 else torch.zeros(LAYOUT.n_patches)
                assert torch.equal(maps[f, j], want.half()), (f, j)
        if per_source:  # the cap itself, read off the result
            for f in range(codes.shape[2]):
                live = [int(groups[i]) for i in got_i[f].tolist() if i >= 0]
                assert max(np.bincount(live), default=0) <= per_source


def test_unlimited_equals_old_semantics_and_groups_default_to_images() -> None:
    """per_source None = the plain top-k; a cap without groups = every image its own source."""
    n, F = 40, 16
    codes = random_codes(n, F, seed=3)
    own = np.arange(n)
    plain = stream(codes, own % 3, 6, None, 8).ordered()
    capped_own = stream(codes, own, 6, 1, 8).ordered()
    for a, b in zip(plain, capped_own):
        assert torch.equal(a, b)
    acc = ExemplarAccumulator(F, 6, LAYOUT, KINDS, per_source=1)
    for a in range(0, n, 8):
        acc.update(a, 8, Codes(dense=codes[a : a + 8].reshape(-1, F)))  # no image_groups
    assert torch.equal(acc.ordered()[0], plain[0])
    with pytest.raises(ValueError, match="per_source"):
        ExemplarAccumulator(F, 6, LAYOUT, KINDS, per_source=-1)
    with pytest.raises(ValueError, match="group ids"):
        acc.update(0, 2, Codes(dense=codes[:2].reshape(-1, F)), image_groups=torch.tensor([0, -1]))


def test_cap_per_source_rows() -> None:
    """The vectorised cap on hand-made rows: per row, a group keeps its N best keys."""
    vals = torch.tensor([[5.0, 4.0, 4.0, 3.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    idx = torch.tensor([[0, 1, 2, 3, -1, -1], [9, 8, 7, 6, 5, 4]])
    groups = torch.tensor([[7, 7, 7, 8, -1, -1], [1, 2, 1, 2, 1, 2]])
    keys = rank_key(vals, idx)
    out = cap_per_source(keys, groups, 1)
    dropped = out == torch.iinfo(torch.int64).min
    # row 0: group 7 keeps image 0; the empty slots (group -1) are never capped
    assert dropped[0].tolist() == [False, True, True, False, False, False]
    assert dropped[1].tolist() == [True, True, True, True, False, False]
    assert not (cap_per_source(keys, groups, 2) == out).all()
    assert (cap_per_source(keys, groups, 3)[1] == keys[1]).all()


def _truth(source) -> np.ndarray:
    """Origins from the ids: views of one photo share ``photos/NAME/``; others are their own."""
    first: dict[str, int] = {}
    out = []
    for i in range(len(source)):
        iid = source.image_id(i)
        key = iid.rsplit("/", 1)[0] if iid.startswith("photos/") else iid
        out.append(first.setdefault(key, i))
    return np.array(out)


@pytest.mark.parametrize(
    "spec,limits",
    [
        ("builtin:photos?views=3", {}),
        ("builtin:photos?views=3", {"start": 5, "stop": 40}),
        ("builtin:photos?views=1", {}),
        ("builtin:digits", {"max_images": 30}),
        ("builtin:digits?max_images=7+builtin:photos?views=3&start=3", {}),
        ("builtin:photos?views=2+builtin:digits?max_images=7", {"start": 4, "stop": 60}),
    ],
)
def test_source_origins_from_description(spec: str, limits: dict) -> None:
    from saescope.core.sources import open_source

    source = open_source(spec, **limits)
    got = source_origins(source.describe(), np.arange(len(source)))
    np.testing.assert_array_equal(got, _truth(source))
    # as recorded in a manifest (JSON round trip) and for any subset of indices
    desc = json.loads(json.dumps(source.describe()))
    some = np.arange(len(source))[::3]
    np.testing.assert_array_equal(source_origins(desc, some), _truth(source)[some])


@pytest.fixture(scope="module")
def photos_store(tmp_path_factory, tiny_dinov2) -> dict:
    """A real store of augmented views: 4 views of each built-in photo (view-major)."""
    from saescope.core.sources import open_source
    from saescope.train.extract import extract

    root = tmp_path_factory.mktemp("diversity")
    backbone = tiny_dinov2(root / "model")
    source = open_source("builtin:photos?views=4&size=56")
    path = extract(backbone, source, root / "acts", layers=[-2], shard_images=13, progress=False)[0]
    return {"root": root, "backbone": backbone, "store": ActivationStore(path), "source": source}


def _sae(store: ActivationStore, d_sae: int = 64):
    from saescope.core.sae import SAE, SAEConfig

    cfg = SAEConfig(
        d_in=store.d_model,
        d_sae=d_sae,
        architecture="relu",
        model_id=store.model_id,
        layer=store.layer,
        token_kinds=["patch"],
    )
    sae = SAE(cfg, seed=1)
    sae.set_normalization(store.sample(2000, kinds=["patch"]))
    return sae.eval()


def test_store_pass_caps_views_of_one_photo(photos_store: dict, tmp_path: Path) -> None:
    """End to end on a store of views (shards of 13 images, batches across them): the default
    keeps one view per photo and equals the reference; the origins are recorded and saved."""
    store, source = photos_store["store"], photos_store["source"]
    sae = _sae(store)
    groups = _truth(source)
    kinds = ["patch"]
    with torch.no_grad():
        tokens = torch.stack([store.tokens(i, kinds=kinds) for i in range(store.n_images)])
        dense = sae.encode(tokens)  # [n, P, F]
    n_photos = len(source.names)
    for per_source, k in ((1, 6), (2, 5), (None, 8), (1, n_photos + 2)):
        ex = build_exemplars(sae, store, k=k, batch_images=5, progress=False, per_source=per_source)
        codes = torch.cat([torch.zeros_like(dense[:, :1]), dense], 1)  # a fake CLS row
        want_i, want_v = brute_force(codes, groups, k, per_source)
        assert (ex.indices.numpy() == want_i).mean() > 0.995  # float near-ties aside
        np.testing.assert_allclose(ex.values.numpy(), want_v, rtol=1e-5, atol=1e-6)
        assert ex.meta["per_source"] == per_source
        for f in range(ex.n_features):
            origins = [e.origin for e in ex.top(f)]
            assert origins == [int(groups[e.image_index]) for e in ex.top(f)]
            if per_source:
                assert max(np.bincount(origins), default=0) <= per_source
    assert (ex.indices[:, n_photos:] == -1).all()  # one view per photo: never more slots
    ex.save(tmp_path / "ex")
    meta = json.loads((tmp_path / "ex" / META_FILE).read_text())
    assert meta["per_source"] == 1
    imgs = meta["images"]
    assert imgs["origin"] == [int(groups[i]) for i in imgs["index"]]
    back = Exemplars.load(tmp_path / "ex")
    assert back.origins == ex.origins and back.meta["per_source"] == 1
    i = imgs["index"][-1]
    assert back.origin(i) == groups[i] and back.images[i][0] == source.image_id(i)


def test_images_path_caps_like_the_store_path(photos_store: dict) -> None:
    store, backbone = photos_store["store"], photos_store["backbone"]
    sae = _sae(store)
    spec = store.manifest["source"]["spec"]
    a = build_exemplars(sae, store, k=4, batch_images=6, progress=False, max_images=30)
    b = build_exemplars_from_images(
        sae, backbone, spec, k=4, batch_images=7, progress=False, max_images=30
    )
    torch.testing.assert_close(a.values, b.values, rtol=2e-3, atol=2e-3)
    assert (a.indices == b.indices).float().mean() > 0.97  # float16 store vs float32 pass
    assert b.meta["per_source"] == 1 and b.origins.keys() == b.images.keys()
    for i, o in b.origins.items():
        assert o == i % len(photos_store["source"].names)


def test_cli_per_source(photos_store: dict, tmp_path: Path) -> None:
    from saescope.core.sae_io import save_sae
    from saescope.train.__main__ import main

    store = photos_store["store"]
    save_sae(_sae(store), tmp_path / "sae")
    for flag, want in (("0", None), ("2", 2)):
        out = tmp_path / f"ex{flag}"
        args = ["exemplars", "--sae", str(tmp_path / "sae"), "--store", str(store.path)]
        args += ["--out", str(out), "--k", "3", "--per-source", flag, "--no-progress"]
        assert main(args) == 0
        assert json.loads((out / META_FILE).read_text())["per_source"] == want
