"""Ontology analysis: label mapping, per-feature LCHs on synthetic activations with known answers,
property tests and reports (real WordNet throughout). The CLI on a tiny labelled store is in
``test_ontology_cli.py``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from saescope.core.ontology import (
    BUILTIN_SYNSETS,
    ClassActivations,
    OntologyError,
    analyze,
    map_labels,
    markdown,
    median_class_size,
    plot_hierarchy,
    split_label,
    text_table,
    top_classes,
)
from saescope.core.wordnet import available, load

pytestmark = pytest.mark.skipif(
    not available(),
    reason="WordNet 3.0 not installed: apt-get install wordnet-base (or set "
    "WORDNET_DIR to a WordNet 3.0 dict folder)",
)


# what each built-in label's synset must mean: a phrase of its gloss (or a lemma)
MEANING = {
    ("builtin:photos", "astronaut"): "travel in a spacecraft",
    ("builtin:photos", "chelsea"): "domesticated member of the genus Felis",
    ("builtin:photos", "coffee"): "beverage",
    ("builtin:photos", "rocket"): "vehicle self-propelled by a rocket engine",
    ("builtin:photos", "motorcycle_left"): "motor vehicle with two wheels",
    ("builtin:photos", "motorcycle_right"): "motor vehicle with two wheels",
    ("builtin:photos", "hubble_deep_field"): "collection of star systems",
    ("builtin:photos", "retina"): "light-sensitive membrane",
    ("builtin:photos", "immunohistochemistry"): "aggregate of cells",
    ("builtin:photos", "colorwheel"): "complementary colors",
    ("builtin:photos", "logo"): "company emblem",
    ("builtin:photos", "china"): "Asian temple",
    ("builtin:photos", "flower"): "reproductive organ of angiosperm plants",
    ("builtin:photos", "camera"): "takes photographs",
    ("builtin:photos", "coins"): "used as money",
    ("builtin:photos", "moon"): "natural satellite of the Earth",
    ("builtin:photos", "brick"): "block of clay",
    ("builtin:photos", "grass"): "narrow-leaved green herbage",
    ("builtin:photos", "gravel"): "rock fragments",
    ("builtin:photos", "text"): "written by hand",
    ("builtin:photos", "page"): "one side of one leaf",
    ("builtin:photos", "clock"): "timepiece",
    ("builtin:photos", "cell"): "basic structural and functional unit of all organisms",
    ("builtin:photos", "horse"): "solid-hoofed herbivorous quadruped",
    ("builtin:photos", "checkerboard"): "64 squares",
    ("builtin:fashion-mnist", "T-shirt/top"): "close-fitting pullover shirt",
    ("builtin:fashion-mnist", "Trouser"): "garment extending from the waist",
    ("builtin:fashion-mnist", "Pullover"): "sweater that is put on by pulling it over the head",
    ("builtin:fashion-mnist", "Dress"): "one-piece garment for a woman",
    ("builtin:fashion-mnist", "Coat"): "outer garment that has sleeves",
    ("builtin:fashion-mnist", "Sandal"): "sole fastened by straps",
    ("builtin:fashion-mnist", "Shirt"): "garment worn on the upper half of the body",
    ("builtin:fashion-mnist", "Sneaker"): "canvas shoe with a pliable rubber sole",
    ("builtin:fashion-mnist", "Bag"): "carrying money and small personal items",
    ("builtin:fashion-mnist", "Ankle boot"): "footwear that covers the whole foot",
    ("builtin:lfw", "face"): "front of the human head",
}


@pytest.fixture(scope="module")
def wn():
    return load()


# ------------------------------------------------------------------------------ label mapping
def test_builtin_map_means_what_we_intend(wn) -> None:
    from saescope.core.sources import FASHION_MNIST_CLASSES, PHOTOS

    assert set(BUILTIN_SYNSETS["builtin:photos"]) == set(PHOTOS)
    assert list(BUILTIN_SYNSETS["builtin:fashion-mnist"]) == FASHION_MNIST_CLASSES
    assert list(BUILTIN_SYNSETS["builtin:digits"]) == [str(i) for i in range(10)]
    for (kind, label), phrase in MEANING.items():
        s = wn.synset(BUILTIN_SYNSETS[kind][label])
        assert phrase in s.gloss, f"{kind}:{label} -> {s.name}: {s.gloss!r}"
    digit = wn.synset("digit.n.01")
    for d, name in BUILTIN_SYNSETS["builtin:digits"].items():
        assert wn.synset(name).hypernyms() == [digit], d  # the numerals, not 'nothing' or teams
    assert BUILTIN_SYNSETS["builtin:lfw"]["non-face"] is None


def test_map_labels_rules_and_warnings(wn) -> None:
    names = [
        "builtin:photos:chelsea",
        "builtin:digits:7",
        "n02084071",
        "horse.n.01",
        "builtin:lfw:non-face",
        "mystery",
        "folder:n01440764",
        "builtin:fashion-mnist:Bag",
    ]
    with pytest.warns(
        UserWarning, match=r"2 of 8 labels do not map.*'builtin:lfw:non-face'.*'mystery'"
    ):
        m = map_labels(names, wn)
    assert {i: s.name for i, s in m.synsets.items()} == {
        0: "domestic_cat.n.01",
        1: "seven.n.01",
        2: "dog.n.01",
        3: "horse.n.01",
        6: "tench.n.01",
        7: "bag.n.04",
    }
    assert m.how == {0: "builtin", 1: "builtin", 2: "id", 3: "name", 6: "id", 7: "builtin"}
    assert sorted(m.unmapped) == [4, 5]
    # a bare label uses the store's own source kind
    assert map_labels(["3"], wn, dataset_kind="builtin:digits").synsets[0].name == "three.n.01"
    assert split_label("builtin:fashion-mnist:T-shirt/top") == (
        "builtin:fashion-mnist",
        "T-shirt/top",
    )
    # the user map overrides everything, by full or bare label; null excludes
    user = {"mystery": "n02121808", "builtin:photos:chelsea": "cat.n.01", "horse.n.01": None}
    with pytest.warns(UserWarning, match="2 of 8"):
        m2 = map_labels(names, wn, user_map=user)
    assert m2.synsets[5].name == "domestic_cat.n.01" and m2.how[5] == "user"
    assert m2.synsets[0].name == "cat.n.01"
    assert m2.unmapped[3] == "excluded by the label map"
    with pytest.raises(OntologyError, match="label map entry 'mystery'"):
        map_labels(names, wn, user_map={"mystery": "notasynset.n.01"})
    # first-sense guessing only when asked, and recorded as such
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m3 = map_labels(["cat", "dog"], wn, first_sense=True)
    assert [m3.synsets[i].name for i in (0, 1)] == ["cat.n.01", "dog.n.01"]
    assert set(m3.how.values()) == {"first-sense"}


# ------------------------------------------------------------------------------ analysis
LABELS = [
    "builtin:photos:chelsea",
    "builtin:photos:horse",
    "builtin:digits:1",
    "builtin:digits:2",
    "builtin:fashion-mnist:Sandal",
    "builtin:fashion-mnist:Sneaker",
    "builtin:lfw:non-face",
    "builtin:fashion-mnist:Coat",
]
CAT, HORSE, ONE, TWO, SANDAL, SNEAKER, NONFACE, COAT = range(8)


def synthetic() -> tuple[np.ndarray, np.ndarray]:
    """20 images per class; each feature fires on a known set of classes."""
    per = 20
    labels = np.repeat(np.arange(len(LABELS)), per)
    rng = np.random.default_rng(0)
    n, F = len(labels), 11
    acts = np.zeros((n, F), np.float32)

    def fire(f: int, cls: int, scale: float = 1.0, count: int = per) -> None:
        rows = np.flatnonzero(labels == cls)[:count]
        acts[rows, f] = scale * (1 + 0.1 * rng.random(len(rows)))

    fire(0, CAT)  # one class: its own synset
    fire(1, CAT, 1.2), fire(1, HORSE)  # cat + horse -> placental mammal
    fire(2, ONE, 1.2), fire(2, TWO)  # two digits -> digit
    fire(3, SANDAL, 1.2), fire(3, SNEAKER)  # two shoes -> shoe
    fire(4, ONE, 9.0), fire(4, CAT, 1.0)  # 90% digit one -> top class 'one' alone
    fire(5, CAT, 1.2), fire(5, ONE)  # cat + numeral share only the root
    fire(6, NONFACE)  # only an unmapped class: not analysed
    fire(7, CAT, count=2)  # too rare
    fire(9, SANDAL, 1.2), fire(9, SNEAKER, 1.1), fire(9, COAT)  # two shoes and a coat
    # strong on cats, weak on every other mapped class (as max-pooled features are)
    for cls, value in [
        (CAT, 5.0),
        (HORSE, 0.6),
        (ONE, 0.55),
        (TWO, 0.5),
        (SANDAL, 0.5),
        (SNEAKER, 0.5),
        (COAT, 0.5),
    ]:
        acts[labels == cls, 10] = value
    return acts, labels


def test_known_answers_on_synthetic_activations(wn) -> None:
    acts, labels = synthetic()
    acc = ClassActivations.from_activations(acts, labels, n_classes=len(LABELS))
    with pytest.warns(UserWarning, match="non-face"):
        mapping = map_labels(LABELS, wn)
    res = analyze(acc, mapping, wn, images="all", coverage=0.8, max_top=5, min_images=3)
    by = {f.feature: f for f in res.features}
    assert sorted(by) == [0, 1, 2, 3, 4, 5, 9, 10]
    lch = {f: by[f].lch[0].name for f in by}
    assert lch == {
        0: "domestic_cat.n.01",
        1: "placental.n.01",
        2: "digit.n.01",
        3: "shoe.n.01",
        4: "one.n.01",
        5: "entity.n.01",
        9: "covering.n.02",
        10: "entity.n.01",
    }
    assert by[10].top_classes == [CAT, HORSE, ONE, TWO]  # the weak tail needs three more classes
    for f in by:
        assert by[f].depth == wn.synset(lch[f]).max_depth
    assert by[0].depth == 14 and by[5].depth == 0
    assert by[4].top_classes == [ONE] and by[4].top_share == pytest.approx(0.9, abs=0.01)
    assert sorted(by[1].top_classes) == [CAT, HORSE] and by[1].top_share == pytest.approx(1.0)
    assert by[1].n_images == 40 and by[0].n_images == 20
    assert res.n_silent == 2 and res.n_rare == 1  # features 6 (unmapped only) + 8; feature 7
    s = res.summary()
    assert s["n_analysed"] == 8 and s["fraction_below_root"] == pytest.approx(6 / 8)
    # coverage against an independent count over the induced hierarchy
    nodes = set()
    for c in mapping.mapped:
        nodes |= {a.offset for a in mapping.synsets[c].ancestors()}
    assert s["hierarchy_nodes"] == len(nodes)
    covered = {wn.synset(n).offset for n in lch.values()}
    assert s["nodes_covered"] == len(covered) and s["node_coverage"] == pytest.approx(
        len(covered) / len(nodes)
    )
    assert sum(v["nodes"] for v in s["coverage_by_depth"].values()) == len(nodes)
    assert s["coverage_by_depth"]["0"] == {"nodes": 1, "covered": 1, "features": 2}
    # classes that are some feature's largest class: cat, one, sandal (3 of 7 mapped)
    assert s["class_top1_coverage"] == pytest.approx(3 / 7)
    assert s["class_top_set_coverage"] == pytest.approx(1.0)  # every mapped class is in a top set
    assert s["depth_histogram"] == {
        str(d): c
        for d, c in sorted(__import__("collections").Counter(f.depth for f in res.features).items())
    }
    assert s["baseline"]["mean_depth"] >= 0 and 0 <= s["baseline"]["fraction_below_root"] <= 1
    # over each feature's 32 strongest images: the weak tails drop out
    top = analyze(acc, mapping, wn, coverage=0.8, max_top=5, min_images=3)
    assert top.settings["images"] == "top 32"
    lch_top = {f.feature: f.lch[0].name for f in top.features}
    assert lch_top == {**lch, 9: "shoe.n.01", 10: "domestic_cat.n.01"}
    f9 = next(f for f in top.features if f.feature == 9)
    assert f9.top_classes == [SANDAL, SNEAKER] and f9.n_images == 60  # fires on 60, top 32 used
    want = torch.zeros(11, len(LABELS), dtype=torch.float64)
    for f in range(11):  # brute force: the 32 largest activations of each feature, per class
        order = np.argsort(-acts[:, f], kind="stable")[:32]
        for i in order[acts[order, f] > 0]:
            want[f, labels[i]] += float(acts[i, f])
    assert torch.allclose(acc.top_mass(), want, rtol=1e-5)


def test_cap_weighting_and_batches(wn) -> None:
    with pytest.warns(UserWarning):
        mapping = map_labels(LABELS, wn)
    labels = np.repeat(np.arange(len(LABELS)), 10)
    acts = np.zeros((len(labels), 2), np.float32)
    acts[:, 0] = np.isin(labels, [CAT, HORSE, ONE, TWO, SANDAL, SNEAKER]) * 1.0  # 6 even classes
    # feature 1: 10 cat images at 1.0, but only 2 of the horse images at 4.0 each
    acts[labels == CAT, 1] = 1.0
    acts[np.flatnonzero(labels == HORSE)[:2], 1] = 4.0
    acc = ClassActivations.from_activations(acts, labels, n_classes=len(LABELS))
    res = analyze(acc, mapping, wn, images="all", coverage=0.8, max_top=3, min_images=1)
    f0, f1 = res.features
    assert f0.top_classes == [CAT, HORSE, ONE] and f0.top_share == pytest.approx(0.5)
    assert f0.lch[0].name == "entity.n.01"
    assert f1.top_classes == [CAT, HORSE]  # 10/18 and 8/18: both needed for 80%
    # class weighting matters when class sizes differ: 30 cats at 1.0 vs 10 horses at 2.0
    lab_w = np.array([CAT] * 30 + [HORSE] * 10)
    acc_w = ClassActivations.from_activations(
        np.where(lab_w == CAT, 1.0, 2.0)[:, None], lab_w, n_classes=len(LABELS)
    )
    unbal = analyze(acc_w, mapping, wn, images="all", coverage=0.5, min_images=1)
    bal = analyze(
        acc_w, mapping, wn, images="all", coverage=0.5, min_images=1, class_weighting="balanced"
    )
    assert unbal.features[0].top_classes == [CAT]  # 30 of 50
    assert bal.features[0].top_classes == [HORSE]  # mean 2.0 vs 1.0
    # streaming in batches (with unlabelled images) equals all at once
    acc2 = ClassActivations(2, len(LABELS))
    t = torch.from_numpy(acts)
    for a in range(0, len(labels), 7):
        acc2.update(t[a : a + 7], torch.from_numpy(labels[a : a + 7]))
    acc2.update(torch.ones(3, 2), [-1, -1, -1])
    assert torch.allclose(acc2.mass, acc.mass) and torch.equal(acc2.fires, acc.fires)
    assert acc2.n_skipped == 3 and torch.equal(acc2.images, acc.images)
    assert torch.equal(acc2.top_mass(), acc.top_mass())  # ties resolved the same in batches
    with pytest.raises(OntologyError, match="do not match"):
        acc2.update(torch.ones(3, 5), [0, 1, 2])
    with pytest.raises(OntologyError, match="coverage"):
        analyze(acc, mapping, wn, coverage=0)


def test_median_class_size() -> None:
    assert median_class_size([0, 0, 0, 1, 1, 2, None], exclude=[2]) == 2  # counts 3 and 2
    assert median_class_size([0, 0, 0, 1, 1, 2, None]) == 2
    assert median_class_size([None, None]) == 1


def test_top_classes() -> None:
    assert top_classes(np.array([0.1, 0.6, 0.3]), 0.8, 5) == [1, 2]
    assert top_classes(np.array([0.1, 0.6, 0.3]), 0.5, 5) == [1]
    assert top_classes(np.array([0.25, 0.25, 0.25, 0.25]), 0.8, 2) == [0, 1]
    assert top_classes(np.array([0.0, 0.0, 1.0]), 1.0, 5) == [2]


N_CLASSES = 8


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10**6),
    coverage=st.floats(0.3, 1.0),
    max_top=st.integers(1, 6),
    density=st.floats(0.05, 0.9),
)
def test_properties_on_random_activations(wn, seed, coverage, max_top, density) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, 60)
    acts = rng.exponential(1.0, (60, 12)).astype(np.float32) * (rng.random((60, 12)) < density)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapping = map_labels(LABELS, wn)
    acc = ClassActivations.from_activations(acts, labels, n_classes=N_CLASSES)
    res = analyze(
        acc, mapping, wn, coverage=coverage, max_top=max_top, min_images=2, baseline_draws=2
    )
    assert len(res.features) + res.n_silent + res.n_rare == 12
    for f in res.features:
        shares = [s for _, s in f.distribution]
        assert sum(shares) == pytest.approx(1.0) and shares == sorted(shares, reverse=True)
        assert all(c != NONFACE for c, _ in f.distribution)  # unmapped class excluded
        assert 1 <= len(f.top_classes) <= max_top
        assert f.top_share >= coverage - 1e-6 or len(f.top_classes) == max_top
        assert [c for c, _ in f.distribution[: len(f.top_classes)]] == f.top_classes
        for c in f.top_classes:
            syn = mapping.synsets[c]
            assert syn.is_a(f.lch[0]) and f.depth <= syn.max_depth
        assert f.n_images == int(((acts[:, f.feature] > 0) & (labels != NONFACE)).sum())
    s = res.summary()
    assert 0 <= s["node_coverage"] <= 1 and s["nodes_covered"] <= s["hierarchy_nodes"]


def test_reports_and_plot(wn, tmp_path) -> None:
    acts, labels = synthetic()
    acc = ClassActivations.from_activations(acts, labels, n_classes=len(LABELS))
    with pytest.warns(UserWarning):
        res = analyze(acc, map_labels(LABELS, wn), wn)
    md = markdown(res, title="synthetic")
    assert "## synthetic" in md and "`placental.n.01`" in md and "Excluded labels" in md
    assert "8 analysed" in md and "| 0 | 1 | 1 | 1 |" in md  # top mode: only feature 5 at the root
    table = text_table(res)
    assert "analysed 8 of 11 features" in table and "domestic_cat.n.01" in table
    png = plot_hierarchy(res, tmp_path / "o.png", title="synthetic")
    with Image.open(png) as im:
        assert im.size[0] > 500 and im.size[1] > 300
        arr = np.asarray(im.convert("RGB"))
    assert (arr < 250).any(axis=2).mean() > 0.01  # something was drawn
    d = json.loads(json.dumps(res.to_dict()))
    assert d["summary"]["n_analysed"] == 8 and len(d["features"]) == 8
    assert {n["synset"] for n in d["nodes"] if n["features"]} == {
        f.lch[0].name for f in res.features
    }
