"""Feature labels (``saescope labels``): per-feature names from the exemplars' labels, checked
against a brute-force computation on a tiny labelled bundle (digits and photos), WordNet
hypernyms of ImageNet-style ids (real WordNet), image names for unlabelled bundles, the bundle
component and manifest, the file format's errors and the CLI's one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from saescope.core.bundle import Bundle, verify_bundle
from saescope.core.exemplars import Exemplars
from saescope.core.feature_labels import (
    ARRAYS_FILE,
    META_FILE,
    FeatureLabels,
    FeatureLabelsError,
    load_feature_labels,
)
from saescope.core.ontology import BUILTIN_SYNSETS, top_classes
from saescope.core.wordnet import available
from saescope.core.wordnet import load as load_wordnet
from saescope.train.feature_labels import (
    ImageLabels,
    compute_feature_labels,
    label_bundle,
    short_image_name,
    top_names,
)

needs_wordnet = pytest.mark.skipif(not available(), reason="WordNet 3.0 not installed")
SPEC = "builtin:digits?max_images=30+builtin:photos?views=2"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_dinov2, random_store_sae) -> dict:
    """A tiny bundle built by the real pipeline from a labelled store: 30 digits and 2 views of
    each packaged photo, every view of a photo allowed among a feature's exemplars."""
    from saescope.core.store import ActivationStore
    from saescope.train.bundle import build_bundle
    from saescope.train.extract import extract

    root = tmp_path_factory.mktemp("labels")
    bb = tiny_dinov2(root / "model", layers=2)
    store = ActivationStore(extract(bb, SPEC, root / "acts", layers=[-1], progress=False)[0])
    random_store_sae(store, root / "sae")
    bundle = build_bundle(
        root / "sae", store.path, root / "bundle", k=8, per_source=None, progress=False
    )
    return {"root": root, "store": store, "bundle": bundle, "backbone": bb}


def _brute_force(ex: Exemplars, store, wn, top: int = 3, coverage: float = 0.6) -> list[dict]:
    """Per feature, straight from the definition: activation mass per digit class or per photo
    (its label is the photo's name), the side holding most of it, its top names, the label."""
    names, labels = store.label_names, store.labels
    out = []
    for f in range(ex.n_features):
        mass: dict[tuple[str, str], float] = {}
        for e in ex.top(f):
            name = names[labels[e.image_index]]
            kind, bare = name.rsplit(":", 1)
            key = ("image" if kind == "builtin:photos" else "class", bare)
            mass[key] = mass.get(key, 0.0) + max(e.value, 0.0)
        total = sum(mass.values())
        if not mass:
            out.append({"label": "", "top": []})
            continue
        cls_share = sum(w for (k, _), w in mass.items() if k == "class") / total
        side = "class" if cls_share >= 0.5 else "image"
        items = sorted(((w, n) for (k, n), w in mass.items() if k == side), key=lambda t: -t[0])
        side_mass = sum(w for w, _ in items)
        picked, run = [], 0.0
        for w, n in items[:top]:
            picked.append((n, w / total))
            run += w / side_mass
            if run >= coverage - 1e-9:
                break
        if side == "class" and len(picked) >= 2:
            syn = [wn.synset(BUILTIN_SYNSETS["builtin:digits"][n]) for n, _ in picked]
            lch = wn.lowest_common_hypernyms(syn)[0]
            lemma = lch.lemmas[0].replace("_", " ")
            label = f"{lemma} ({', '.join(n for n, _ in picked)})"
        elif side == "class":
            label = f"digit {picked[0][0]}"
        else:
            label = ", ".join(n for n, _ in picked)
        out.append({"label": label, "top": picked, "labelled": cls_share})
    return out


@needs_wordnet
def test_labels_of_a_labelled_bundle_equal_brute_force(labelled):
    path = labelled["bundle"]
    labels = label_bundle(path, progress=False)
    assert labels.meta["labels_from"] == f"store {labelled['store'].path}"
    b = Bundle.load(path)
    want = _brute_force(b.exemplars, labelled["store"], load_wordnet())
    assert [w["label"] for w in want] == labels.labels
    for f, w in enumerate(want):
        d = labels.details(f)
        assert [t["short"] for t in d["top"]] == [n for n, _ in w["top"]]
        assert [t["share"] for t in d["top"]] == pytest.approx([s for _, s in w["top"]], abs=1e-3)
        if w["top"]:
            assert d["labelled_share"] == pytest.approx(w["labelled"], abs=1e-3)
    kinds = labels.kind_counts()
    assert kinds["images"] > 0 and kinds["classes"] + kinds["hypernym"] > 0, kinds
    # the component travels in the bundle: listed, checksummed, and what a reader loads
    assert b.components["labels"] == "labels"
    assert b.manifest["labels"]["kinds"] == kinds
    assert {"labels/" + META_FILE, "labels/" + ARRAYS_FILE} <= set(b.manifest["files"])
    verify_bundle(path, trust_marker=False)
    again = load_feature_labels(b.fetch("labels"))
    assert again.labels == labels.labels and again.details(3) == labels.details(3)


def test_a_store_that_is_not_the_bundles_is_refused(labelled, tmp_path):
    from saescope.train.extract import extract

    other = extract(
        labelled["backbone"],
        "builtin:digits?max_images=4",
        tmp_path / "acts",
        layers=[-1],
        progress=False,
    )[0]
    with pytest.raises(FeatureLabelsError, match="does not hold the bundle's exemplar images"):
        label_bundle(labelled["bundle"], store=other, progress=False)


def _synthetic_exemplars(rows: list[list[tuple[int, float]]], image_ids: list[str]) -> Exemplars:
    """Exemplars with the given (image index, value) rows (best first), no pixels behind them."""
    k = max(len(r) for r in rows)
    idx = torch.full((len(rows), k), -1, dtype=torch.long)
    val = torch.zeros(len(rows), k)
    for f, r in enumerate(rows):
        for j, (i, v) in enumerate(r):
            idx[f, j], val[f, j] = i, v
    images = {i: (image_ids[i], i) for i in range(len(image_ids))}
    maps = torch.zeros(len(rows), k, 4, dtype=torch.float16)
    origins = {i: i for i in images}
    return Exemplars(idx, val, maps, {}, (2, 2), images, {}, origins)


@needs_wordnet
def test_imagenet_ids_read_as_lemmas_with_their_common_hypernym():
    # ImageNet class ids are WordNet noun offsets: beagle, basset, Chihuahua, Persian cat
    names = ["n02088364", "n02088238", "n02085620", "n02123394"]
    image_class = [0, 0, 1, 1, 2, 3, 3]
    ex = _synthetic_exemplars(
        [
            [(0, 5.0), (2, 4.5), (1, 0.5)],  # beagle 5.5, basset 4.5: both needed for 60 %
            [(4, 3.0)],  # Chihuahua alone
            [(0, 3.0), (5, 2.0), (6, 1.5)],  # Persian cat 3.5 + beagle 3: carnivore
            [(4, 1.0), (0, 1.0)],  # Chihuahua and beagle tie: beagle (first seen) first
            [],  # a feature without exemplars
        ],
        [f"train/{names[c]}/img{i}.JPEG" for i, c in enumerate(image_class)],
    )
    il = ImageLabels(names, dict(enumerate(image_class)), "test")
    out = compute_feature_labels(ex, il, top=2, wn=load_wordnet())
    assert out.labels[0] == "hound (beagle, basset)"
    assert out.details(0)["hypernym"]["name"] == "hound.n.01"
    assert out.details(0)["kind"] == "hypernym"
    assert [t["share"] for t in out.details(0)["top"]] == pytest.approx([0.55, 0.45])
    assert out.labels[1] == "Chihuahua" and out.details(1)["kind"] == "classes"
    assert out.labels[2] == "carnivore (Persian cat, beagle)"
    assert out.labels[3] == "dog (beagle, Chihuahua)"
    assert out.labels[4] == "" and out.details(4)["kind"] == "none"
    # a deeper --min-depth than the hypernym: the classes themselves
    shallow = compute_feature_labels(ex, il, top=2, wn=load_wordnet(), min_depth=14)
    assert shallow.labels[2] == "Persian cat, beagle" and shallow.labels[0].startswith("hound")
    # without WordNet: the ids as they are
    assert compute_feature_labels(ex, il, top=2).labels[1] == "n02085620"


def test_unlabelled_bundle_gets_image_names(tiny_bundle, tmp_path):
    path = tiny_bundle(tmp_path, "tiny-unlabelled")
    labels = label_bundle(path, progress=False)
    assert labels.meta["labels_from"] == "none"
    assert labels.kind_counts()["classes"] == labels.kind_counts()["hypernym"] == 0
    ex = Bundle.load(path).exemplars
    for f in range(ex.n_features):
        mass: dict[str, float] = {}
        for e in ex.top(f):
            mass[e.image_id] = mass.get(e.image_id, 0.0) + e.value
        order = sorted(mass, key=lambda n: -mass[n])
        picked, run = [], 0.0
        for n in order[:3]:
            picked.append(n)
            run += mass[n] / sum(mass.values())
            if run >= 0.6 - 1e-9:
                break
        assert labels.label(f) == ", ".join(picked)  # "synthetic/03, synthetic/07"
    verify_bundle(path, trust_marker=False)
    assert Bundle.load(path).has("labels")


def test_top_names_matches_top_classes_row_by_row():
    rng = np.random.default_rng(0)
    keys = rng.integers(-1, 9, (300, 12))
    weights = rng.random((300, 12)) * (rng.random((300, 12)) > 0.1)
    top, share, total = top_names(keys, weights, 9, 4, 0.7)
    for f in range(300):
        mass = np.zeros(9)
        for k, w in zip(keys[f], weights[f]):
            if k >= 0:
                mass[k] += w
        assert total[f] == pytest.approx(mass.sum())
        if mass.sum() <= 0:
            continue
        want = top_classes(mass / mass.sum(), 0.7, 4)
        assert [int(i) for i in top[f] if i >= 0] == want
        assert share[f, : len(want)] == pytest.approx(mass[want] / mass.sum(), rel=1e-5)


def test_short_image_names():
    assert short_image_name("photos/astronaut/3") == "astronaut"
    assert short_image_name("cats/tabby/img01.jpg") == "tabby/img01"
    assert short_image_name("digits/042") == "digits/042"
    assert short_image_name("x.png") == "x"


def _tiny_labels(n: int = 4) -> FeatureLabels:
    return FeatureLabels(
        [f"f{i}" for i in range(n)],
        np.ones(n, np.uint8),
        np.zeros((n, 2), np.int32),
        np.ones((n, 2), np.float32) / 2,
        np.full(n, -1, np.int32),
        np.ones(n, np.float32),
        [{"name": "a", "short": "a", "kind": "class"}],
    )


def test_format_errors_are_one_clear_line(tmp_path):
    folder = _tiny_labels().save(tmp_path / "labels")
    assert load_feature_labels(folder / META_FILE).label(2) == "f2"
    with pytest.raises(FeatureLabelsError, match="covers|cover features 0..3"):
        load_feature_labels(folder).label(4)
    with pytest.raises(FeatureLabelsError, match="must be an integer"):
        load_feature_labels(folder).label("2")
    meta = json.loads((folder / META_FILE).read_text())
    for change, pattern in [
        ({"format_version": 99}, "newer than this saescope"),
        ({"format": "saescope.ood"}, "not a saescope feature labels"),
        ({"n_features": 7}, "n_features 7 but 4 labels"),
        ({"labels": ["a", "b"]}, "n_features 4 but 2 labels"),
        ({"names": []}, "top name index beyond"),
        ({"labels": "abc"}, "'labels' is missing or not a list"),
    ]:
        (folder / META_FILE).write_text(json.dumps({**meta, **change}))
        with pytest.raises(FeatureLabelsError, match=pattern):
            load_feature_labels(folder)
    (folder / META_FILE).write_text("{not json")
    with pytest.raises(FeatureLabelsError, match="unreadable"):
        load_feature_labels(folder)
    (folder / META_FILE).write_text(json.dumps(meta))
    (folder / ARRAYS_FILE).write_bytes(b"garbage")
    with pytest.raises(FeatureLabelsError, match="unreadable"):
        load_feature_labels(folder)
    shutil.rmtree(folder)
    with pytest.raises(FeatureLabelsError, match="holds no feature labels"):
        load_feature_labels(folder)


def test_scale_24576_features_is_small_and_fast(tmp_path):
    import time

    F = 24_576
    rng = np.random.default_rng(0)
    labels = FeatureLabels(
        [f"digit ({i % 10}, {(i + 3) % 10})" for i in range(F)],
        rng.integers(0, 4, F).astype(np.uint8),
        rng.integers(0, 1000, (F, 3)).astype(np.int32),
        rng.random((F, 3)).astype(np.float32),
        rng.integers(-1, 10, F).astype(np.int32),
        rng.random(F).astype(np.float32),
        [{"name": f"class {i}", "short": str(i), "kind": "class"} for i in range(1000)],
        [{"id": "n1", "name": f"h.n.0{i}", "lemma": "h"} for i in range(10)],
    )
    folder = labels.save(tmp_path / "labels")
    size = sum(p.stat().st_size for p in folder.iterdir())
    t0 = time.perf_counter()
    again = load_feature_labels(folder)
    seconds = time.perf_counter() - t0
    assert again.details(F - 1) == labels.details(F - 1)
    assert size < 2_000_000 and seconds < 1.0, (size, seconds)


def test_cli_errors_are_one_line(tmp_path, capsys, labelled):
    from saescope.train.__main__ import main

    cases = [
        (["labels", "--bundle", str(tmp_path / "nope")], "bundle folder"),
        (["labels", "--bundle", str(labelled["bundle"]), "--top", "0"], "--top must be"),
        (["labels", "--bundle", str(labelled["bundle"]), "--coverage", "1.5"], "--coverage"),
        (
            ["labels", "--bundle", str(labelled["bundle"]), "--wordnet-dir", str(tmp_path)],
            "WordNet 3.0 noun database not found",
        ),
        (
            ["labels", "--bundle", str(labelled["bundle"]), "--store", str(tmp_path / "x")],
            "",
        ),
    ]
    for argv, pattern in cases:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(err) == 1 and pattern in err[0], (argv, err)
    assert main(["labels", "--bundle", str(labelled["bundle"]), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "features labelled from store" in out.err and out.out.strip()


def test_labels_step_is_listed():
    from saescope.train.__main__ import build_parser

    assert "labels" in build_parser().format_help()
