"""Ontology analysis on a real store: the per-class activation sums against dense SAE codes, and
the ``ontology`` CLI with an SAE or a bundle, a label map and its clear errors, on a tiny labelled
store (real WordNet throughout). Split from ``test_ontology.py`` (the analysis itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from saescope.core.ontology import analyze, median_class_size
from saescope.core.wordnet import available

pytestmark = pytest.mark.skipif(
    not available(),
    reason="WordNet 3.0 not installed: apt-get install wordnet-base (or set "
    "WORDNET_DIR to a WordNet 3.0 dict folder)",
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_dinov2, random_store_sae) -> dict:
    """A tiny random DINOv2, a labelled store (40 digits + the 25 photos) and a random TopK SAE."""
    from saescope.core.store import ActivationStore
    from saescope.train.extract import extract

    root = tmp_path_factory.mktemp("ontology")
    bb = tiny_dinov2(root / "model", layers=2)
    spec = "builtin:digits?max_images=40+builtin:photos?views=1"
    store = ActivationStore(
        extract(bb, spec, root / "acts", layers=[-1], kinds="cls,patch", progress=False)[0]
    )
    sae = random_store_sae(store, root / "sae")
    return {"root": root, "backbone": bb, "store": store, "sae": sae}


def test_class_activations_match_dense_codes(tiny) -> None:
    from saescope.train.ontology import class_activations

    store, sae = tiny["store"], tiny["sae"]
    acc, names = class_activations(sae, store, batch_images=7, progress=False)
    assert names == store.label_names and len(names) == 10 + 25
    assert acc.top_k == median_class_size(store.labels) == 1  # 25 photo classes of 1 image
    with torch.no_grad():
        x = torch.stack([store.tokens(i, kinds="patch") for i in range(store.n_images)])
        image_max = sae.encode(x).amax(1)  # [n, F], dense codes, max over patches
    lab = torch.tensor(store.labels)
    want = torch.zeros(64, len(names), dtype=torch.float64).index_add_(
        1, lab, image_max.t().double()
    )
    assert torch.allclose(acc.mass, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(
        acc.fires,
        torch.zeros(64, len(names), dtype=torch.long).index_add_(
            1, lab, (image_max > 0).t().long()
        ),
    )
    assert acc.images.tolist() == torch.bincount(lab, minlength=len(names)).tolist()
    best = image_max.argmax(0)  # top-1 image of every feature (k = 1 here)
    want_top = torch.zeros(64, len(names), dtype=torch.float64)
    for f in range(64):
        if image_max[best[f], f] > 0:
            want_top[f, lab[best[f]]] = float(image_max[best[f], f])
    assert torch.allclose(acc.top_mass(), want_top, rtol=1e-5, atol=1e-6)


def test_cli_on_a_labelled_store(tiny) -> None:
    root, store = tiny["root"], tiny["store"]
    out = root / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "ontology",
            "--sae",
            str(root / "sae"),
            "--store",
            str(store.path),
            "--out",
            str(out),
            "--min-images",
            "2",
            "--no-progress",
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "ontology.json").read_text())
    s = data["summary"]
    assert s["n_classes"] == s["n_classes_mapped"] == 35 and s["n_images"] == 65
    assert s["n_analysed"] + s["n_rare"] + s["n_silent"] == 64 and s["n_analysed"] > 0
    assert {m["synset"] for m in data["labels"]["mapped"]} >= {"domestic_cat.n.01", "zero.n.02"}
    assert f"analysed {s['n_analysed']} of 64 features" in r.stdout
    assert (out / "ontology.md").read_text().count("|") > 20
    assert data["meta"]["images_without_mapped_label"] == 0
    with Image.open(out / "ontology.png") as im:
        assert im.format == "PNG"
    # the same numbers in process
    from saescope.core.ontology import map_labels as ml
    from saescope.train.ontology import class_activations

    acc, names = class_activations(tiny["sae"], store, progress=False)
    res = analyze(acc, ml(names, dataset_kind="concat"), min_images=2)
    assert res.summary()["n_analysed"] == s["n_analysed"]
    assert [f["lch"] for f in data["features"]] == [[x.name for x in f.lch] for f in res.features]


def test_cli_with_a_bundle_and_clear_errors(
    tiny, build_test_bundle, synthetic_items, capsys
) -> None:
    from saescope.core.sources import ListSource
    from saescope.train.extract import extract

    root, store = tiny["root"], tiny["store"]
    bundle = build_test_bundle(
        root / "bundle",
        str(root / "model"),
        -1,
        items=synthetic_items(6),
        expansion=2,
        k=4,
        exemplar_k=2,
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "ontology",
            "--bundle",
            str(bundle),
            "--store",
            str(store.path),
            "--out",
            str(root / "bout"),
            "--no-progress",
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((root / "bout" / "ontology.json").read_text())["meta"]["bundle"] == str(
        bundle
    )
    # a user map that excludes a class: warned about, its images left out, listed in the JSON
    (root / "map.json").write_text(json.dumps({"builtin:digits:0": None, "7": "n02121808"}))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "saescope.train",
            "ontology",
            "--sae",
            str(root / "sae"),
            "--store",
            str(store.path),
            "--out",
            str(root / "mout"),
            "--no-progress",
            "--label-map",
            str(root / "map.json"),
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "warning: 1 of 35 labels do not map" in r.stderr and "'builtin:digits:0'" in r.stderr
    data = json.loads((root / "mout" / "ontology.json").read_text())
    assert data["labels"]["unmapped"] == [
        {"label": 0, "name": "builtin:digits:0", "reason": "excluded by the label map"}
    ]
    assert data["meta"]["images_without_mapped_label"] == store.labels.count(0) > 0
    assert data["summary"]["n_images"] == store.n_images - store.labels.count(0)
    assert {
        "label": 7,
        "name": "builtin:digits:7",
        "synset": "domestic_cat.n.01",
        "id": "n02121808",
        "how": "user",
    } in data["labels"]["mapped"]
    # an unlabelled store: one clear line, exit code 2 (in process: the same entry point)
    from saescope.train.__main__ import main

    plain = extract(
        tiny["backbone"],
        ListSource(synthetic_items(3)),
        root / "plain",
        layers=[-1],
        progress=False,
    )[0]
    assert (
        main(
            [
                "ontology",
                "--sae",
                str(root / "sae"),
                "--store",
                str(plain),
                "--out",
                str(root / "x"),
            ]
        )
        == 2
    )
    assert "has no image labels" in capsys.readouterr().err
    # WordNet missing: names the package
    assert (
        main(
            [
                "ontology",
                "--sae",
                str(root / "sae"),
                "--store",
                str(store.path),
                "--wordnet-dir",
                str(root),
            ]
        )
        == 2
    )
    assert "wordnet-base" in capsys.readouterr().err
