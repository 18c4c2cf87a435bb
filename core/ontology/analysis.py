"""Placing features in the hierarchy: top classes, their lowest common hypernym, a baseline.

Why a baseline: how deep an LCH can be depends on the label set, so the features' depths are
read against the depths of random class sets of the same sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from saescope.core.ontology.accumulate import ClassActivations
from saescope.core.ontology.labels import LabelMapping, OntologyError
from saescope.core.ontology.result import FeatureOntology, Hierarchy, OntologyResult
from saescope.core.wordnet import Synset, WordNet
from saescope.core.wordnet import load as load_wordnet


def top_classes(shares: np.ndarray, coverage: float, max_top: int) -> list[int]:
    """Smallest largest-first set of classes whose shares reach ``coverage`` (at most ``max_top``).

    Ties in share are broken by class index so that the result is deterministic.
    """
    order = sorted(np.flatnonzero(shares > 0).tolist(), key=lambda c: (-shares[c], c))
    out: list[int] = []
    total = 0.0
    for c in order[:max_top]:
        out.append(c)
        total += float(shares[c])
        if total >= coverage - 1e-9:
            break
    return out


def lch_depth_baseline(
    wn: WordNet,
    class_synsets: Sequence[Synset],
    sizes: Sequence[int],
    draws: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """LCH depth of random class sets with the features' top-set sizes (uniform over classes).

    Why: how deep an LCH can be depends on the label set (a mix of digits and clothes shares only
    ``entity`` across groups); chance is the reference to read the features' depths against.
    """
    rng = np.random.default_rng(seed)
    uniq = sorted(set(class_synsets), key=lambda s: s.offset)
    if not sizes or not uniq:
        return {}
    depths: list[int] = []
    below: list[bool] = []
    root = wn.root_synset
    cache: dict[tuple[int, ...], Synset] = {}
    for m in sizes:
        m = min(int(m), len(uniq))
        for _ in range(draws):
            pick = tuple(sorted(rng.choice(len(uniq), size=m, replace=False).tolist()))
            if pick not in cache:
                cache[pick] = wn.lowest_common_hypernym([uniq[i] for i in pick])
            depths.append(cache[pick].max_depth)
            below.append(cache[pick] != root)
    return {
        "draws_per_feature": draws,
        "mean_depth": float(np.mean(depths)),
        "fraction_below_root": float(np.mean(below)),
        "seed": seed,
        "what": "random sets of distinct label synsets, sized like each feature's top set",
    }


def analyze(
    acc: ClassActivations,
    mapping: LabelMapping,
    wn: WordNet | None = None,
    *,
    images: str = "top",
    coverage: float = 0.8,
    max_top: int = 5,
    min_images: int = 3,
    class_weighting: str = "none",
    baseline_draws: int = 20,
    seed: int = 0,
) -> OntologyResult:
    """Place every feature that fires on at least ``min_images`` mapped images.

    ``images="top"`` (default) takes the class distribution over each feature's ``acc.top_k``
    strongest images, ``"all"`` over every image where it fires; both weight images by the
    activation. ``class_weighting="balanced"`` divides each class's mass by its number of images
    (a per-class mean), for label sets whose class sizes differ a lot. Unmapped classes count for
    nothing; give their images label -1 when accumulating (``train.ontology`` does) so that they
    do not take top-k slots either.
    """
    wn = wn or load_wordnet()
    if not 0 < coverage <= 1:
        raise OntologyError(f"coverage must be in (0, 1], got {coverage}")
    if max_top < 1:
        raise OntologyError(f"max_top must be >= 1, got {max_top}")
    if images not in ("top", "all"):
        raise OntologyError(f"images must be 'top' or 'all', got {images!r}")
    if class_weighting not in ("none", "balanced"):
        raise OntologyError(
            f"class_weighting must be 'none' or 'balanced', got {class_weighting!r}"
        )
    if acc.n_classes != len(mapping.label_names):
        raise OntologyError(
            f"activations have {acc.n_classes} classes, the mapping {len(mapping.label_names)}"
        )
    mapped = mapping.mapped
    if not mapped:
        raise OntologyError("no label maps to a WordNet synset: give a label map (--label-map)")
    keep = torch.zeros(acc.n_classes, dtype=torch.bool)
    keep[mapped] = True
    mass = acc.top_mass() if images == "top" else acc.mass.clone()
    mass[:, ~keep] = 0
    if class_weighting == "balanced":
        mass = mass / acc.images.clamp_min(1).double()
    fires = acc.fires[:, keep].sum(1)
    total = mass.sum(1)
    features: list[FeatureOntology] = []
    n_silent = int((fires == 0).sum())
    n_rare = int(((fires > 0) & (fires < min_images)).sum())
    shares_all = (mass / total.clamp_min(1e-30)[:, None]).numpy()
    sizes: list[int] = []
    lch_cache: dict[tuple[int, ...], list[Synset]] = {}  # many features share a top set
    for f in torch.nonzero(fires >= max(1, min_images))[:, 0].tolist():
        if float(total[f]) <= 0:
            n_silent += 1
            continue
        shares = shares_all[f]
        top = top_classes(shares, coverage, max_top)
        syn = sorted({mapping.synsets[c] for c in top}, key=lambda s: s.offset)
        key = tuple(s.offset for s in syn)
        if key not in lch_cache:
            lch_cache[key] = wn.lowest_common_hypernyms(syn)
        lch = lch_cache[key]
        dist = sorted(
            ((int(c), float(shares[c])) for c in np.flatnonzero(shares > 0)),
            key=lambda t: (-t[1], t[0]),
        )
        features.append(
            FeatureOntology(
                feature=int(f),
                n_images=int(fires[f]),
                mass=float(total[f]),
                distribution=dist,
                top_classes=top,
                top_share=float(shares[top].sum()),
                lch=lch,
                depth=lch[0].max_depth,
                min_depth=lch[0].min_depth,
            )
        )
        sizes.append(len(syn))
    settings = {
        "images": images if images == "all" else f"top {acc.top_k}",
        "coverage": coverage,
        "max_top": max_top,
        "min_images": min_images,
        "class_weighting": class_weighting,
        "depth": "max_depth (edges to entity.n.01 on the longest path)",
        "activation": "per-image max over patch tokens",
    }
    class_syn = [mapping.synsets[c] for c in mapped]
    base = (
        lch_depth_baseline(wn, class_syn, sizes, draws=baseline_draws, seed=seed)
        if baseline_draws > 0
        else {}
    )
    return OntologyResult(
        features,
        mapping,
        Hierarchy.induced(mapping),
        acc.n_features,
        n_silent,
        n_rare,
        acc.images.tolist(),
        settings,
        base,
    )


__all__ = ["top_classes", "lch_depth_baseline", "analyze"]
