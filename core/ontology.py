"""Where SAE features sit in the WordNet noun hierarchy.

For an SAE over a labelled image set whose labels map to WordNet synsets:

- each feature's **class distribution**: its per-image activation (max over patches) summed per
  class, as shares of the total, over its ``top_k`` strongest images (default) or over every
  image where it fires (``images="all"``; with max-pooling over hundreds of patches most
  features fire a little on most images, so that distribution mostly mirrors class sizes);
- its **top classes**: the smallest set of classes, largest share first, that holds ``coverage``
  of that mass (capped at ``max_top`` classes);
- the **lowest common hypernym (LCH)** of those classes' synsets and its depth (``max_depth``,
  edges to ``entity.n.01``; a single top class is its own LCH): how general the concept is that
  the feature's classes share;
- **hierarchy coverage**: of the nodes of the hierarchy induced by the label synsets (all their
  ancestors), which are the LCH of some feature, overall and by depth; and the fraction of
  classes that are some feature's top class;
- a **baseline**: the LCH depth of random class sets of the same sizes, so that "features sit at
  depth 6" can be read against what chance gives on this label set.

Labels map to synsets through :func:`map_labels`: a user map first, then ImageNet ids
(``n02121808``) and synset names (``cat.n.01``) as they are, then the built-in map of the packaged
sets (:data:`BUILTIN_SYNSETS`). Labels that do not map are listed and their images excluded, with
a warning -- never silently.

Why accumulate per class instead of keeping per-image activations: memory stays
``features x classes`` whatever the number of images (:class:`ClassActivations`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from saescope.core.wordnet import Synset, WordNet, WordNetError
from saescope.core.wordnet import load as load_wordnet

FORMAT = "saescope.ontology"
FORMAT_VERSION = 1

# The packaged datasets' labels, each checked against its gloss in tests/test_ontology.py.
# None = deliberately unmapped (no WordNet noun denotes the class).
BUILTIN_SYNSETS: dict[str, dict[str, str | None]] = {
    "builtin:photos": {
        "astronaut": "astronaut.n.01",  # Eileen Collins in a space suit
        "chelsea": "domestic_cat.n.01",  # a tabby cat
        "coffee": "coffee.n.01",  # a cup of coffee
        "rocket": "rocket.n.01",  # a launch vehicle on its pad
        "motorcycle_left": "motorcycle.n.01",
        "motorcycle_right": "motorcycle.n.01",
        "hubble_deep_field": "galaxy.n.03",  # a field of distant galaxies
        "retina": "retina.n.01",  # a fundus photograph
        "immunohistochemistry": "tissue.n.01",  # stained tissue section
        "colorwheel": "color_circle.n.01",
        "logo": "logo.n.01",  # the scikit-image logo
        "china": "pagoda.n.01",  # the Tower of Buddhist Incense, Summer Palace
        "flower": "flower.n.02",  # a dahlia bloom (the reproductive organ, not the plant)
        "camera": "photographer.n.01",  # "cameraman": a man with a camera on a tripod
        "coins": "coin.n.01",
        "moon": "moon.n.01",  # the Earth's moon (an instance of satellite.n.03)
        "brick": "brick.n.01",  # a brick wall
        "grass": "grass.n.01",
        "gravel": "gravel.n.01",
        "text": "handwriting.n.01",  # hand-written formulas
        "page": "page.n.01",  # a printed book page
        "clock": "clock.n.01",
        "cell": "cell.n.02",  # a biological cell
        "horse": "horse.n.01",  # a horse silhouette
        "checkerboard": "checkerboard.n.01",
    },
    "builtin:digits": {
        "0": "zero.n.02", "1": "one.n.01", "2": "two.n.01", "3": "three.n.01", "4": "four.n.01",
        "5": "five.n.01", "6": "six.n.01", "7": "seven.n.01", "8": "eight.n.01", "9": "nine.n.01",
    },
    "builtin:fashion-mnist": {
        "T-shirt/top": "jersey.n.03",  # "tee shirt": a close-fitting pullover shirt
        "Trouser": "trouser.n.01",
        "Pullover": "pullover.n.01",
        "Dress": "dress.n.01",
        "Coat": "coat.n.01",
        "Sandal": "sandal.n.01",
        "Shirt": "shirt.n.01",
        "Sneaker": "gym_shoe.n.01",
        "Bag": "bag.n.04",  # handbag
        "Ankle boot": "boot.n.01",
    },
    "builtin:lfw": {
        "face": "face.n.01",
        "non-face": None,  # a negative class: no synset
    },
}
# label-name prefixes of concatenated sources (``ImageSource.kind`` + ":")
_KINDS = tuple(sorted(BUILTIN_SYNSETS, key=len, reverse=True)) + ("folder", "datasets", "memory")
_ID = re.compile(r"^n\d{8}$")
_NAME = re.compile(r"^.+\.n\.\d+$")


class OntologyError(ValueError):
    """Labels, activations or settings the ontology analysis cannot use."""


# ------------------------------------------------------------------------------ label mapping
@dataclass
class LabelMapping:
    """Which label maps to which synset, how, and which labels were excluded and why."""

    label_names: list[str]
    synsets: dict[int, Synset]  # label index -> synset
    how: dict[int, str]  # label index -> "user" | "id" | "name" | "builtin" | "first-sense"
    unmapped: dict[int, str]  # label index -> reason

    @property
    def mapped(self) -> list[int]:
        return sorted(self.synsets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mapped": [{"label": i, "name": self.label_names[i], "synset": s.name, "id": s.id,
                        "how": self.how[i]} for i, s in sorted(self.synsets.items())],
            "unmapped": [{"label": i, "name": self.label_names[i], "reason": r}
                         for i, r in sorted(self.unmapped.items())],
        }


def split_label(label: str, dataset_kind: str | None = None) -> tuple[str | None, str]:
    """``builtin:photos:astronaut`` -> (``builtin:photos``, ``astronaut``); a bare label keeps
    ``dataset_kind`` (the store's source kind)."""
    for kind in _KINDS:
        if label.startswith(kind + ":"):
            return kind, label[len(kind) + 1:]
    return dataset_kind, label


def _resolve(wn: WordNet, key: str, what: str) -> Synset:
    try:
        return wn.synset(key)
    except WordNetError as err:
        raise OntologyError(f"{what}: {err}") from err


def load_label_map(path: str | os.PathLike) -> dict[str, str | None]:
    """A user map: JSON object ``{label: "cat.n.01" | "n02121808" | null}`` (null excludes)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise OntologyError(f"label map {path} is unreadable or not JSON ({err})") from err
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()):
        raise OntologyError(f"label map {path} must be a JSON object of label -> synset name, "
                            "id or null")
    return data


def map_labels(label_names: Sequence[str], wn: WordNet | None = None,
               dataset_kind: str | None = None, user_map: Mapping[str, str | None] | None = None,
               first_sense: bool = False, warn: bool = True) -> LabelMapping:
    """Map label names to noun synsets (see the module docstring for the order of rules).

    ``first_sense`` maps any other label that is a WordNet lemma to its most frequent sense (a
    guess, recorded as such). A user-map value that is not a synset is an error; unmapped labels
    are listed in the result and in a warning.
    """
    wn = wn or load_wordnet()
    user_map = dict(user_map or {})
    synsets: dict[int, Synset] = {}
    how: dict[int, str] = {}
    unmapped: dict[int, str] = {}
    for i, full in enumerate(label_names):
        full = str(full)
        kind, bare = split_label(full, dataset_kind)
        for key in (full, bare):
            if key in user_map:
                if user_map[key] is None:
                    unmapped[i] = "excluded by the label map"
                else:
                    synsets[i] = _resolve(wn, str(user_map[key]), f"label map entry {key!r}")
                    how[i] = "user"
                break
        if i in synsets or i in unmapped:
            continue
        if _ID.match(bare) or _NAME.match(bare):
            try:
                synsets[i], how[i] = wn.synset(bare), "id" if _ID.match(bare) else "name"
            except WordNetError as err:
                unmapped[i] = str(err)
            continue
        table = BUILTIN_SYNSETS.get(kind or "", {})
        if bare in table:
            if table[bare] is None:
                unmapped[i] = f"{kind} label {bare!r} has no WordNet noun"
            else:
                synsets[i], how[i] = wn.synset(str(table[bare])), "builtin"
            continue
        senses = wn.synsets(bare) if first_sense else []
        if senses:
            synsets[i], how[i] = senses[0], "first-sense"
            continue
        unmapped[i] = ("not a WordNet lemma" if first_sense else
                       "no mapping (give a label map, or use first-sense guessing)")
    out = LabelMapping(list(map(str, label_names)), synsets, how, unmapped)
    if warn and unmapped:
        names = ", ".join(f"{label_names[i]!r}" for i in sorted(unmapped))
        warnings.warn(f"{len(unmapped)} of {len(label_names)} labels do not map to WordNet synsets; "
                      f"their images are excluded: {names}", stacklevel=2)
    return out


# ------------------------------------------------------------------------------ accumulation
class ClassActivations:
    """Per feature and class: activation mass and firing images; per class: images seen; per
    feature: its ``top_k`` strongest images and their labels (a running top-k).

    Feed it per-image feature activations (max over patches) with the images' label indices
    (``-1`` = no label / excluded). Why both sums and a top-k: a feature's max over hundreds of
    patches is above zero on most images, so the sum over all images mostly measures class
    sizes; its strongest images say what it is about.
    """

    def __init__(self, n_features: int, n_classes: int, top_k: int = 32):
        if n_features < 1 or n_classes < 1 or top_k < 1:
            raise OntologyError(f"need >= 1 feature, class and top image, got {n_features}, "
                                f"{n_classes}, {top_k}")
        self.n_features, self.n_classes, self.top_k = int(n_features), int(n_classes), int(top_k)
        self.mass = torch.zeros(self.n_features, self.n_classes, dtype=torch.float64)
        self.fires = torch.zeros(self.n_features, self.n_classes, dtype=torch.long)
        self.images = torch.zeros(self.n_classes, dtype=torch.long)
        self.top_values = torch.zeros(self.n_features, self.top_k)
        self.top_labels = torch.full((self.n_features, self.top_k), -1, dtype=torch.long)
        self.top_index = torch.full((self.n_features, self.top_k), -1, dtype=torch.long)
        self.n_seen = 0  # images added so far: their order breaks ties in the top-k
        self.n_skipped = 0

    @torch.no_grad()
    def update(self, image_acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> None:
        """Add ``image_acts`` ``[B, F]`` (>= 0) of images with label indices ``labels`` ``[B]``."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if image_acts.dim() != 2 or image_acts.shape != (len(labels), self.n_features):
            raise OntologyError(f"activations {tuple(image_acts.shape)} do not match "
                                f"{len(labels)} labels x {self.n_features} features")
        if (labels >= self.n_classes).any():
            raise OntologyError(f"label index {int(labels.max())} >= {self.n_classes} classes")
        keep = labels >= 0
        self.n_skipped += int((~keep).sum())
        acts, labels = image_acts[keep].detach().cpu(), labels[keep]
        if not len(labels):
            return
        acts = acts.float().clamp_min(0)
        self.images += torch.bincount(labels, minlength=self.n_classes)
        self.mass.index_add_(1, labels, acts.t().double())
        self.fires.index_add_(1, labels, (acts > 0).t().long())
        # running top-k over (value, earlier image first) keys, so that ties and batch sizes
        # never change the result: float bits of values >= 0 order like the values
        order = torch.arange(self.n_seen, self.n_seen + len(labels))
        self.n_seen += len(labels)
        F = self.n_features
        values = torch.cat([self.top_values, acts.t()], 1)
        index = torch.cat([self.top_index, order.expand(F, -1)], 1)
        labs = torch.cat([self.top_labels, labels.expand(F, -1)], 1)
        key = (values.contiguous().view(torch.int32).long() << 32) | (0xFFFFFFFF - (index + 1))
        idx = key.topk(self.top_k, dim=1, sorted=False).indices
        self.top_values, self.top_labels = values.gather(1, idx), labs.gather(1, idx)
        self.top_index = index.gather(1, idx)

    def top_mass(self) -> torch.Tensor:
        """``[F, C]`` activation summed per class over each feature's top-k firing images."""
        out = torch.zeros(self.n_features, self.n_classes, dtype=torch.float64)
        live = (self.top_values > 0) & (self.top_labels >= 0)
        out.view(-1).index_add_(0, (torch.arange(self.n_features)[:, None] * self.n_classes
                                    + self.top_labels.clamp_min(0))[live],
                                self.top_values[live].double())
        return out

    @classmethod
    def from_activations(cls, image_acts: np.ndarray | torch.Tensor, labels: Sequence[int],
                         n_classes: int | None = None, top_k: int = 32) -> "ClassActivations":
        """All at once, from a ``[n_images, F]`` matrix (tests, small sets)."""
        acts = torch.as_tensor(np.asarray(image_acts), dtype=torch.float32)
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = int(n_classes if n_classes is not None else int(labels.max()) + 1)
        acc = cls(acts.shape[1], n, top_k=top_k)
        acc.update(acts, labels)
        return acc


def median_class_size(labels: Sequence[int | None], exclude: Sequence[int] = ()) -> int:
    """Median number of images per class (labels in ``exclude`` and ``None`` left out).

    Why: the default number of top images per feature. A feature selective for one class can
    then have a one-class top set; with more top images than a class has, it never could.
    """
    drop = set(exclude)
    counts = Counter(int(l) for l in labels if l is not None and int(l) not in drop)
    return max(1, int(np.median(list(counts.values())))) if counts else 1


# ------------------------------------------------------------------------------ analysis
@dataclass
class FeatureOntology:
    """One feature's place in the hierarchy."""

    feature: int
    n_images: int  # images where it fires (mapped classes only)
    mass: float  # summed per-image activation over the images the distribution is taken on
    distribution: list[tuple[int, float]]  # (label index, share), largest first, shares > 0
    top_classes: list[int]
    top_share: float  # mass share held by the top classes
    lch: list[Synset]  # lowest common hypernym(s) of the top classes' synsets (ties: rare)
    depth: int  # max_depth of lch[0]
    min_depth: int

    def to_dict(self, label_names: Sequence[str], max_classes: int = 10) -> dict[str, Any]:
        return {"feature": self.feature, "n_images": self.n_images, "mass": self.mass,
                "distribution": [{"label": label_names[c], "share": round(s, 6)}
                                 for c, s in self.distribution[:max_classes]],
                "top_classes": [label_names[c] for c in self.top_classes],
                "top_share": round(self.top_share, 6),
                "lch": [s.name for s in self.lch], "lch_id": self.lch[0].id,
                "lch_gloss": self.lch[0].gloss, "depth": self.depth, "min_depth": self.min_depth}


@dataclass
class Hierarchy:
    """The part of WordNet above the label synsets: nodes, hypernym edges, depths."""

    nodes: dict[int, Synset]  # offset -> synset
    edges: list[tuple[int, int]]  # (parent offset, child offset)
    classes: dict[int, list[int]]  # synset offset -> label indices mapped to it

    @classmethod
    def induced(cls, mapping: LabelMapping) -> "Hierarchy":
        nodes: dict[int, Synset] = {}
        classes: dict[int, list[int]] = {}
        for label, s in sorted(mapping.synsets.items()):
            classes.setdefault(s.offset, []).append(label)
            for a in s.ancestors():
                nodes[a.offset] = a
        edges = sorted({(p.offset, o) for o, s in nodes.items() for p in s.parents()})
        return cls(nodes, edges, classes)

    def depth(self, offset: int) -> int:
        return self.nodes[offset].max_depth


@dataclass
class OntologyResult:
    """Per-feature placements plus hierarchy coverage and the random-class-set baseline."""

    features: list[FeatureOntology]
    mapping: LabelMapping
    hierarchy: Hierarchy
    n_features: int
    n_silent: int  # features that never fired on a mapped image
    n_rare: int  # fired on fewer than min_images images: not analysed
    class_images: list[int]
    settings: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)

    # -- summaries ------------------------------------------------------------------------
    @property
    def lch_counts(self) -> Counter:
        """Node offset -> number of features whose (first) LCH it is."""
        return Counter(f.lch[0].offset for f in self.features)

    def summary(self) -> dict[str, Any]:
        feats = self.features
        n = len(feats)
        root = self.hierarchy_root
        depths = [f.depth for f in feats]
        counts = self.lch_counts
        nodes = self.hierarchy.nodes
        by_depth: dict[int, dict[str, int]] = {}
        for o, s in nodes.items():
            d = by_depth.setdefault(s.max_depth, {"nodes": 0, "covered": 0, "features": 0})
            d["nodes"] += 1
            d["covered"] += int(o in counts)
            d["features"] += counts.get(o, 0)
        mapped = self.mapping.mapped
        top1 = {f.distribution[0][0] for f in feats if f.distribution}
        in_top = {c for f in feats for c in f.top_classes}
        multi = [f for f in feats if len({self.mapping.synsets[c].offset for c in f.top_classes}) > 1]
        return {
            "n_features": self.n_features, "n_analysed": n, "n_silent": self.n_silent,
            "n_rare": self.n_rare,
            "n_classes": len(self.mapping.label_names), "n_classes_mapped": len(mapped),
            "n_images": int(sum(self.class_images)),
            "fraction_below_root": (sum(f.lch[0].offset != root for f in feats) / n) if n else None,
            "fraction_single_synset": (1 - len(multi) / n) if n else None,
            "mean_depth": float(np.mean(depths)) if n else None,
            "median_depth": float(np.median(depths)) if n else None,
            "mean_depth_multi": float(np.mean([f.depth for f in multi])) if multi else None,
            "depth_histogram": {str(d): c for d, c in sorted(Counter(depths).items())},
            "hierarchy_nodes": len(nodes),
            "nodes_covered": len(counts),
            "node_coverage": len(counts) / len(nodes) if nodes else None,
            "coverage_by_depth": {str(d): v for d, v in sorted(by_depth.items())},
            "class_top1_coverage": len(top1) / len(mapped) if mapped else None,
            "class_top_set_coverage": len(in_top) / len(mapped) if mapped else None,
            "baseline": self.baseline,
        }

    @property
    def hierarchy_root(self) -> int:
        return min(self.hierarchy.nodes, key=lambda o: self.hierarchy.depth(o)) \
            if self.hierarchy.nodes else -1

    def to_dict(self) -> dict[str, Any]:
        names = self.mapping.label_names
        counts = self.lch_counts
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": self.settings,
                "summary": self.summary(), "labels": self.mapping.to_dict(),
                "class_images": {names[c]: n for c, n in enumerate(self.class_images)},
                "nodes": [{"synset": s.name, "id": s.id, "depth": s.max_depth,
                           "min_depth": s.min_depth, "features": counts.get(o, 0),
                           "labels": [names[c] for c in self.hierarchy.classes.get(o, [])]}
                          for o, s in sorted(self.hierarchy.nodes.items(),
                                             key=lambda kv: (kv[1].max_depth, kv[1].name))],
                "features": [f.to_dict(names) for f in self.features]}


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


def lch_depth_baseline(wn: WordNet, class_synsets: Sequence[Synset], sizes: Sequence[int],
                       draws: int = 20, seed: int = 0) -> dict[str, Any]:
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
    return {"draws_per_feature": draws, "mean_depth": float(np.mean(depths)),
            "fraction_below_root": float(np.mean(below)), "seed": seed,
            "what": "random sets of distinct label synsets, sized like each feature's top set"}


def analyze(acc: ClassActivations, mapping: LabelMapping, wn: WordNet | None = None, *,
            images: str = "top", coverage: float = 0.8, max_top: int = 5, min_images: int = 3,
            class_weighting: str = "none", baseline_draws: int = 20, seed: int = 0
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
        raise OntologyError(f"class_weighting must be 'none' or 'balanced', got {class_weighting!r}")
    if acc.n_classes != len(mapping.label_names):
        raise OntologyError(f"activations have {acc.n_classes} classes, the mapping "
                            f"{len(mapping.label_names)}")
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
        dist = sorted(((int(c), float(shares[c])) for c in np.flatnonzero(shares > 0)),
                      key=lambda t: (-t[1], t[0]))
        features.append(FeatureOntology(
            feature=int(f), n_images=int(fires[f]), mass=float(total[f]),
            distribution=dist, top_classes=top, top_share=float(shares[top].sum()), lch=lch,
            depth=lch[0].max_depth, min_depth=lch[0].min_depth))
        sizes.append(len(syn))
    settings = {"images": images if images == "all" else f"top {acc.top_k}", "coverage": coverage, "max_top": max_top, "min_images": min_images,
                "class_weighting": class_weighting, "depth": "max_depth (edges to entity.n.01 "
                "on the longest path)", "activation": "per-image max over patch tokens"}
    class_syn = [mapping.synsets[c] for c in mapped]
    base = lch_depth_baseline(wn, class_syn, sizes, draws=baseline_draws, seed=seed) \
        if baseline_draws > 0 else {}
    return OntologyResult(features, mapping, Hierarchy.induced(mapping), acc.n_features, n_silent,
                          n_rare, acc.images.tolist(), settings, base)


# ------------------------------------------------------------------------------ reports
def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def display_label(label: str) -> str:
    """``builtin:fashion-mnist:Ankle boot`` -> ``fashion-mnist:Ankle boot`` (for tables)."""
    kind, bare = split_label(label)
    return f"{kind.removeprefix('builtin:')}:{bare}" if kind and label.startswith(kind) else label


def markdown(result: OntologyResult, max_rows: int = 40, title: str | None = None,
             summary: bool = True) -> str:
    """A report: summary (unless ``summary=False``), depth histogram with coverage, most-used
    nodes, and the features."""
    s = result.summary()
    lines = [f"## {title}\n" if title else ""]
    if not s["n_analysed"]:
        return "\n".join(lines + ["No feature fired on enough mapped images to be analysed."])
    if summary:
        lines += _summary_lines(result, s)
    lines += _tables(result, s, max_rows)
    return "\n".join(lines) + "\n"


def _summary_lines(result: OntologyResult, s: dict) -> list[str]:
    base = s["baseline"] or {}
    st = result.settings
    over = "images where it fires" if st["images"] == "all" else st["images"] + " images"
    return [
        f"{s['n_features']} features: **{s['n_analysed']} analysed** (fired on >= "
        f"{st['min_images']} images of the {s['n_classes_mapped']} mapped classes), "
        f"{s['n_rare']} too rare, {s['n_silent']} silent. Class distributions over each "
        f"feature's {over}, activation-weighted; top classes cover {st['coverage']:.0%} of that "
        f"mass (at most {st['max_top']}).\n",
        f"- LCH below the root (`entity.n.01`): **{s['fraction_below_root']:.1%}** of features"
        + (f" (random class sets of the same sizes: {base['fraction_below_root']:.1%})" if base else ""),
        f"- mean LCH depth **{s['mean_depth']:.2f}** (median {s['median_depth']:g})"
        + (f"; random class sets: {base['mean_depth']:.2f}" if base else ""),
        f"- features whose top classes share one synset: {s['fraction_single_synset']:.1%}"
        + (f"; mean LCH depth of the others {s['mean_depth_multi']:.2f}"
           if s["mean_depth_multi"] is not None else ""),
        f"- hierarchy nodes that are some feature's LCH: **{s['nodes_covered']} of "
        f"{s['hierarchy_nodes']} ({s['node_coverage']:.1%})**",
        f"- classes that are some feature's top class: {s['class_top1_coverage']:.1%}; in some "
        f"feature's top set: {s['class_top_set_coverage']:.1%}\n",
    ]


def _tables(result: OntologyResult, s: dict, max_rows: int) -> list[str]:
    names = result.mapping.label_names
    lines: list[str] = []
    if result.mapping.unmapped:
        lines.append("Excluded labels (no synset): " + ", ".join(
            f"`{names[i]}`" for i in sorted(result.mapping.unmapped)) + "\n")
    lines += ["| depth | nodes | covered | features with their LCH here |", "|---:|---:|---:|---:|"]
    for d, v in s["coverage_by_depth"].items():
        lines.append(f"| {d} | {v['nodes']} | {v['covered']} | {v['features']} |")
    lines += ["", "| LCH node | depth | features | gloss |", "|---|---:|---:|---|"]
    for o, c in result.lch_counts.most_common(12):
        syn = result.hierarchy.nodes[o]
        lines.append(f"| `{syn.name}` | {syn.max_depth} | {c} | {_short(syn.gloss, 70)} |")
    rows = sorted(result.features, key=lambda f: -f.mass)[:max_rows]
    lines += ["", f"Features by activation mass (first {len(rows)} of {s['n_analysed']}):", "",
              "| feature | images | top classes (share) | LCH | depth |", "|---:|---:|---|---|---:|"]
    for f in rows:
        shares = dict(f.distribution)
        tops = ", ".join(f"{_short(display_label(names[c]), 32)} {shares[c]:.0%}"
                         for c in f.top_classes)
        lines.append(f"| {f.feature} | {f.n_images} | {tops} | `{f.lch[0].name}` | {f.depth} |")
    return lines


def text_table(result: OntologyResult, max_rows: int = 25) -> str:
    """The console summary: the busiest features, then the totals."""
    s = result.summary()
    if not s["n_analysed"]:
        return "no feature fired on enough mapped images to be analysed"
    names = result.mapping.label_names
    out = [f"{'feature':>7}  {'imgs':>5}  {'depth':>5}  {'LCH':<28}  top classes"]
    for f in sorted(result.features, key=lambda f: -f.mass)[:max_rows]:
        shares = dict(f.distribution)
        tops = ", ".join(f"{display_label(names[c])} {shares[c]:.0%}" for c in f.top_classes)
        out.append(f"{f.feature:>7}  {f.n_images:>5}  {f.depth:>5}  {_short(f.lch[0].name):<28}  "
                   f"{tops}")
    base = s["baseline"] or {}
    out.append("")
    out.append(f"analysed {s['n_analysed']} of {s['n_features']} features ({s['n_rare']} too rare, "
               f"{s['n_silent']} silent); LCH below root {s['fraction_below_root']:.1%}"
               + (f" (random sets {base['fraction_below_root']:.1%})" if base else "")
               + f"; mean depth {s['mean_depth']:.2f}"
               + (f" (random sets {base['mean_depth']:.2f})" if base else ""))
    out.append(f"hierarchy coverage: {s['nodes_covered']}/{s['hierarchy_nodes']} nodes "
               f"({s['node_coverage']:.1%}); classes as top class {s['class_top1_coverage']:.1%}")
    out.append("depth histogram: " + "  ".join(f"{d}:{c}" for d, c in s["depth_histogram"].items()))
    return "\n".join(out)


def _layout(h: Hierarchy) -> dict[int, tuple[float, float]]:
    """x = depth; y from a depth-first order of a spanning tree (each node under its deepest
    parent, which sits exactly one column to the left), internal nodes centred on children."""
    children: dict[int, list[int]] = {o: [] for o in h.nodes}
    roots = []
    for o, s in h.nodes.items():
        parents = [p for p in s.parents() if p.offset in h.nodes]
        if not parents:
            roots.append(o)
            continue
        best = max(parents, key=lambda p: (p.max_depth, -p.offset))
        children[best.offset].append(o)
    for kids in children.values():
        kids.sort(key=lambda o: h.nodes[o].name)
    pos: dict[int, tuple[float, float]] = {}
    counter = [0.0]

    def place(o: int) -> float:
        kids = children[o]
        if not kids:
            y = counter[0]
            counter[0] += 1
        else:
            y = float(np.mean([place(k) for k in kids]))
        pos[o] = (float(h.nodes[o].max_depth), y)
        return y

    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for r in sorted(roots):
            place(r)
    finally:
        sys.setrecursionlimit(limit)
    return pos


def plot_hierarchy(result: OntologyResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the hierarchy induced by the label synsets, features placed on their LCH nodes.

    x = depth, one row per leaf; node area and colour = number of features whose LCH is that
    node (grey = none); label synsets have a black ring and their label names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    h = result.hierarchy
    pos = _layout(h)
    counts = result.lch_counts
    names = result.mapping.label_names
    n_rows = max(1.0, max((y for _, y in pos.values()), default=0) + 1)
    max_d = max((x for x, _ in pos.values()), default=0)
    height = min(60.0, max(5.0, 0.26 * n_rows + 1.5))
    width = min(24.0, max(10.0, 1.2 * (max_d + 1) + 4))
    fig, ax = plt.subplots(figsize=(width, height))
    for p, c in h.edges:
        (x0, y0), (x1, y1) = pos[p], pos[c]
        ax.plot([x0, x1], [y0, y1], color="0.75", lw=0.7, zorder=1)
    offs = list(h.nodes)
    xs = np.array([pos[o][0] for o in offs])
    ys = np.array([pos[o][1] for o in offs])
    cnt = np.array([counts.get(o, 0) for o in offs], dtype=float)
    bare = cnt == 0
    ax.scatter(xs[bare], ys[bare], s=14, c="0.8", zorder=2, linewidths=0)
    sc = None
    if (~bare).any():
        vmax = max(2.0, cnt.max())
        sc = ax.scatter(xs[~bare], ys[~bare], s=30 + 60 * np.sqrt(cnt[~bare]), c=cnt[~bare],
                        cmap="viridis", norm=LogNorm(vmin=1, vmax=vmax), zorder=3,
                        edgecolors="white", linewidths=0.5)
    cls = np.array([o in h.classes for o in offs])
    ax.scatter(xs[cls], ys[cls], s=60, facecolors="none", edgecolors="black", linewidths=1.0,
               zorder=4)
    fs = 7 if n_rows < 80 else 5
    for o, x, y, c in zip(offs, xs, ys, cnt):
        syn = h.nodes[o]
        if o in h.classes:
            labs = ", ".join(_short(names[i].split(":")[-1], 18) for i in h.classes[o])
            text = f"{labs} ({syn.name})" + (f" [{int(c)}]" if c else "")
            pad = 6 + (np.sqrt(30 + 60 * np.sqrt(c)) / 2 if c else 4)  # clear of the marker
            ax.annotate(text, (x, y), xytext=(pad, 0), textcoords="offset points", va="center",
                        fontsize=fs, zorder=5)
        elif c:
            ax.annotate(f"{syn.name} [{int(c)}]", (x, y), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=fs, color="#1f3b73", zorder=5,
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
    if sc is not None:
        fig.colorbar(sc, ax=ax, fraction=0.025, pad=0.01, label="features with this LCH")
    s = result.summary()
    ax.set_xlabel("depth in WordNet (max_depth: edges to entity.n.01)")
    ax.set_yticks([])
    ax.set_xlim(-0.5, max_d + 3.5)
    ax.set_ylim(n_rows, -1)
    ax.set_title((title + "\n" if title else "") +
                 f"{s['n_analysed']} features placed on their lowest common hypernym; "
                 f"{s['nodes_covered']}/{s['hierarchy_nodes']} nodes covered", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["BUILTIN_SYNSETS", "LabelMapping", "map_labels", "split_label", "load_label_map",
           "ClassActivations", "FeatureOntology", "Hierarchy", "OntologyResult", "OntologyError",
           "analyze", "top_classes", "median_class_size", "display_label", "lch_depth_baseline", "markdown", "text_table",
           "plot_hierarchy", "FORMAT", "FORMAT_VERSION"]
