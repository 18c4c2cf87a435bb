"""Feature names: ``saescope labels`` gives every feature of a bundle a short label, stored in it.

A feature is named after the activation-weighted label distribution of its top-k exemplar images
(the bundle's exemplars: each image counts with the feature's maximum activation on it):

- where the images carry class labels (the activation store's, else the recorded source's), the
  **top classes**: the smallest set, largest share first, that holds ``coverage`` of the mass
  (at most ``top``), e.g. "digit 3"; WordNet ids (ImageNet) read as their lemma; two or more
  classes that share a WordNet hypernym of depth >= ``min_depth`` (the ontology step's label ->
  synset map, :func:`saescope.core.ontology.map_labels`) become "hypernym (class, class)", e.g.
  "hound (beagle, basset)" or "digit (3, 8)";
- otherwise the **dominant source images**, each augmented view counted as its original
  ("astronaut, coffee"). The packaged photos' labels *are* photo names (one class per photo),
  so they count as images too: a mixed bundle gets class labels where the exemplars are digits
  and image names where they are photos.

The result is the bundle's ``labels`` component (:mod:`saescope.core.feature_labels`), added with
a re-checksummed manifest.

    saescope labels --bundle runs/bundle [--store runs/acts] [--top 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from saescope.core.exemplars import Exemplars
from saescope.core.feature_labels import (
    KINDS,
    LABELS_DIR,
    FeatureLabels,
    FeatureLabelsError,
)
from saescope.core.ontology import map_labels, split_label
from saescope.core.wordnet import Synset, WordNet
from saescope.train.cli import ProgressOption, add_step, announce_config

IMAGE_LABEL_KINDS = ("builtin:photos",)
"""Sources whose labels name single pictures (all views of one photo), not classes."""


@dataclass
class ImageLabels:
    """The class label of every exemplar image, and where the labels came from."""

    names: list[str] | None  # label names (None: no labels)
    of_image: dict[int, int | None]  # exemplar image index -> index into names
    where: str  # "store <path>", "source <spec>" or "none"
    dataset_kind: str | None = None  # the source's kind, for bare label names

    @property
    def n_labelled(self) -> int:
        return sum(y is not None for y in self.of_image.values())


def _store_labels(ex: Exemplars, store_path: str | Path, strict: bool) -> ImageLabels | None:
    """Labels of the exemplar images from an activation store (image index = store index).

    ``strict``: a store that is not the bundle's (other images at those indices) is an error;
    else (the store path the exemplars record) it is just not used.
    """
    from saescope.core.store import ActivationStore

    store = ActivationStore(store_path)
    ids, labels = store.image_ids, store.labels
    for idx, (image_id, _) in ex.images.items():
        if idx >= len(ids) or ids[idx] != image_id:
            if not strict:
                return None
            there = ids[idx] if idx < len(ids) else "nothing"
            raise FeatureLabelsError(
                f"store {store.path} does not hold the bundle's exemplar images (image {idx} is "
                f"{there!r} there, {image_id!r} in the bundle)"
            )
    if not store.label_names or all(labels[i] is None for i in ex.images):
        return None
    kind = (store.manifest.get("source") or {}).get("kind")
    return ImageLabels(
        list(store.label_names),
        {i: labels[i] for i in ex.images},
        f"store {store.path}",
        kind,
    )


def _source_labels(ex: Exemplars) -> ImageLabels | None:
    """Labels of the exemplar images from the image source the exemplars record (no pixels are
    read); None when it has no labels or cannot be opened here."""
    desc = ex.meta.get("source") or {}
    if not desc.get("label_names"):
        return None
    try:
        source = ex.open_source()
    except (ValueError, OSError, ImportError):
        return None
    if not source.label_names:
        return None
    of_image: dict[int, int | None] = {}
    for idx, (image_id, si) in ex.images.items():
        ok = si is not None and 0 <= si < len(source) and source.image_id(si) == image_id
        of_image[idx] = source.label(si) if ok else None
    if all(y is None for y in of_image.values()):
        return None
    return ImageLabels(list(source.label_names), of_image, f"source {source.spec}", source.kind)


def image_labels(ex: Exemplars, store: str | Path | None = None) -> ImageLabels:
    """The exemplar images' labels: from ``store`` when given (it must be the bundle's), else
    from the store the exemplars record, else from their recorded source, else none."""
    if store is not None:
        found = _store_labels(ex, store, strict=True)
        if found is None:
            raise FeatureLabelsError(f"store {store} has no image labels")
        return found
    recorded = (ex.meta.get("store") or {}).get("path")
    if recorded and Path(recorded).is_dir():
        try:
            found = _store_labels(ex, recorded, strict=False)
        except (ValueError, OSError):
            found = None
        if found is not None:
            return found
    found = _source_labels(ex)
    kind = (ex.meta.get("source") or {}).get("kind")
    return found if found is not None else ImageLabels(None, {}, "none", kind)


def short_image_name(image_id: str) -> str:
    """A short name for an image id: ``photos/astronaut/0`` -> ``astronaut`` (a view number
    dropped), ``cats/tabby/img01.jpg`` -> ``tabby/img01``, ``digits/042`` -> ``digits/042``."""
    parts = [p for p in str(image_id).split("/") if p]
    if not parts:
        return str(image_id)
    last = parts[-1].rsplit(".", 1)[0] if "." in parts[-1][1:] else parts[-1]
    if len(parts) >= 3 and last.isdigit():
        return parts[-2]
    return "/".join([*parts[-2:-1], last])


def _class_names(il: ImageLabels, wn: WordNet | None) -> tuple[list[str], list[str], dict]:
    """Display name, short name and synset (where one maps) of every label."""
    names = il.names or []
    synsets: dict[int, Synset] = {}
    how: dict[int, str] = {}
    if wn is not None and names:
        mapping = map_labels(names, wn, dataset_kind=il.dataset_kind, warn=False)
        synsets, how = mapping.synsets, mapping.how
    full, short = [], []
    for i, label in enumerate(names):
        kind, bare = split_label(str(label), il.dataset_kind)
        if how.get(i) in ("id", "name"):  # ImageNet ids and synset names read as their lemma
            bare = synsets[i].lemmas[0].replace("_", " ")
        short.append(bare)
        full.append(f"digit {bare}" if kind == "builtin:digits" else bare)
    return full, short, synsets


def _origin_ids(ex: Exemplars, used: np.ndarray) -> dict[int, str]:
    """The id of the original image (first view) behind each used exemplar image."""
    by_source = {si: image_id for image_id, si in ex.images.values() if si is not None}
    out = {}
    for idx in used.tolist():
        image_id = ex.images.get(idx, (str(idx), None))[0]
        origin = ex.origins.get(idx)
        out[idx] = by_source.get(origin, image_id) if origin is not None else image_id
    return out


@dataclass
class _Names:
    """The vocabulary a feature can be named after, and each used image's entry in it."""

    table: list[dict[str, str]]
    short: list[str]
    synset: dict[int, Synset]  # name index -> synset (classes that map to WordNet)
    is_class: np.ndarray  # [V] bool
    used: np.ndarray  # sorted exemplar image indices
    key: np.ndarray  # name index of each used image


def _names(ex: Exemplars, il: ImageLabels, wn: WordNet | None) -> _Names:
    full, short_cls, synsets = _class_names(il, wn)
    used = np.unique(ex.indices[ex.indices >= 0].numpy()).astype(np.int64)
    origins = _origin_ids(ex, used)
    index: dict[tuple[str, Any], int] = {}
    table: list[dict[str, str]] = []
    short: list[str] = []
    synset: dict[int, Synset] = {}
    key = np.empty(len(used), np.int64)
    for j, idx in enumerate(used.tolist()):
        lab = il.of_image.get(idx)
        kind = split_label(str(il.names[lab]), il.dataset_kind)[0] if lab is not None else None
        if lab is not None and kind not in IMAGE_LABEL_KINDS:
            ref: tuple[str, Any] = ("class", lab)
            name, nick = full[lab], short_cls[lab]
        else:
            ref = ("image", origins[idx])
            name = nick = short_image_name(origins[idx])
        if ref not in index:
            index[ref] = len(table)
            table.append({"name": name, "short": nick, "kind": ref[0]})
            short.append(nick)
            if ref[0] == "class" and ref[1] in synsets:
                synset[index[ref]] = synsets[ref[1]]
        key[j] = index[ref]
    is_class = np.array([t["kind"] == "class" for t in table], dtype=bool)
    return _Names(table, short, synset, is_class, used, key)


def top_names(
    keys: np.ndarray, weights: np.ndarray, n_names: int, top: int, coverage: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature (row), the names (``keys``, -1 = empty slot) holding the largest shares of
    ``weights``: the smallest largest-first set reaching ``coverage``, at most ``top`` (ties by
    name index, as :func:`saescope.core.ontology.top_classes`). Returns ``top [F, top]`` (-1
    padded), ``share [F, top]`` and each row's total weight ``[F]``.

    Vectorised over (feature, name) pairs: 24,576 features x 128 exemplars in well under a second.
    """
    F, k = keys.shape
    valid = keys >= 0
    w = np.where(valid, np.maximum(weights, 0.0), 0.0).astype(np.float64)
    dead = (w.sum(1) <= 0) & valid.any(1)  # all-zero activations: count exemplars instead
    w[dead] = valid[dead].astype(np.float64)
    rows = np.broadcast_to(np.arange(F, dtype=np.int64)[:, None], (F, k))
    flat = rows[valid] * max(n_names, 1) + keys[valid]
    uniq, inv = np.unique(flat, return_inverse=True)
    mass = np.bincount(inv.ravel(), weights=w[valid], minlength=len(uniq))
    pf, pk = uniq // max(n_names, 1), uniq % max(n_names, 1)
    total = np.bincount(pf, weights=mass, minlength=F)
    share = mass / np.where(total[pf] > 0, total[pf], 1.0)
    order = np.lexsort((pk, -share, pf))
    pf, pk, share = pf[order], pk[order], share[order]
    first = np.searchsorted(pf, pf, side="left")
    rank = np.arange(len(pf)) - first
    before = np.cumsum(share) - share
    before -= before[first]
    keep = (rank < top) & (before < coverage - 1e-9)
    out_top = np.full((F, top), -1, np.int32)
    out_share = np.zeros((F, top), np.float32)
    out_top[pf[keep], rank[keep]] = pk[keep]
    out_share[pf[keep], rank[keep]] = share[keep]
    return out_top, out_share, total


class _Hypernyms:
    """Lowest common hypernyms of top-class sets, cached, kept when deep enough to say something."""

    def __init__(self, wn: WordNet | None, min_depth: int):
        self.wn, self.min_depth = wn, min_depth
        self.table: list[dict[str, str]] = []
        self._index: dict[int, int] = {}
        self._cache: dict[tuple[int, ...], int] = {}

    def of(self, synsets: list[Synset]) -> int:
        """Index into :attr:`table` of the synsets' common hypernym, -1 when none qualifies."""
        if self.wn is None or len(synsets) < 2:
            return -1
        key = tuple(sorted({s.offset for s in synsets}))
        if key not in self._cache:
            found = self.wn.lowest_common_hypernyms(synsets)
            h = found[0] if found else None
            if h is None or h.max_depth < self.min_depth:
                self._cache[key] = -1
            else:
                if h.offset not in self._index:
                    self._index[h.offset] = len(self.table)
                    lemma = h.lemmas[0].replace("_", " ")
                    self.table.append({"id": h.id, "name": h.name, "lemma": lemma})
                self._cache[key] = self._index[h.offset]
        return self._cache[key]


def compute_feature_labels(
    ex: Exemplars,
    il: ImageLabels,
    *,
    top: int = 3,
    coverage: float = 0.6,
    min_depth: int = 5,
    wn: WordNet | None = None,
    progress: bool = False,
) -> FeatureLabels:
    """Every feature's label from its exemplars' activation-weighted names (module docstring)."""
    if top < 1:
        raise FeatureLabelsError(f"top must be at least 1, got {top}")
    if not 0 < coverage <= 1:
        raise FeatureLabelsError(f"coverage must be in (0, 1], got {coverage}")
    names = _names(ex, il, wn)
    idx = ex.indices.numpy()
    keys = np.full(idx.shape, -1, np.int64)
    ok = idx >= 0
    keys[ok] = names.key[np.searchsorted(names.used, idx[ok])]
    weights = np.maximum(ex.values.numpy().astype(np.float64), 0.0)
    is_cls = ok & names.is_class[np.maximum(keys, 0)]
    total = np.where(ok, weights, 0.0).sum(1)
    labelled = np.where(
        total > 0, np.where(is_cls, weights, 0).sum(1) / np.maximum(total, 1e-30), 0
    )
    zero = (total <= 0) & ok.any(1)  # all-zero activations: count the exemplars instead
    labelled[zero] = is_cls[zero].sum(1) / ok[zero].sum(1)
    # a feature is named after classes when most of its mass is on labelled images, else after
    # images; shares are reported out of all its mass
    by_class = labelled >= 0.5
    mode_keys = np.where(is_cls == by_class[:, None], keys, -1)
    top_ids, shares, _ = top_names(mode_keys, weights, len(names.table), top, coverage)
    shares = (shares * np.where(by_class, labelled, 1 - labelled)[:, None]).astype(np.float32)
    labelled = labelled.astype(np.float32)
    hyp = _Hypernyms(wn, min_depth)
    F = len(idx)
    kind = np.zeros(F, np.uint8)
    hypernym = np.full(F, -1, np.int32)
    labels: list[str] = []
    for f in tqdm(range(F), desc="labels", unit="feat", disable=not progress, mininterval=1):
        ids = [int(i) for i in top_ids[f] if i >= 0]
        if not ids:
            labels.append("")
            continue
        classes = all(names.is_class[i] for i in ids)
        h = (
            hyp.of([names.synset[i] for i in ids])
            if classes and all(i in names.synset for i in ids)
            else -1
        )
        if h >= 0:
            kind[f], hypernym[f] = KINDS.index("hypernym"), h
            shorts = ", ".join(names.short[i] for i in ids)
            labels.append(f"{hyp.table[h]['lemma']} ({shorts})")
        else:
            kind[f] = KINDS.index("classes" if names.is_class[ids[0]] else "images")
            labels.append(", ".join(names.table[i]["name"] for i in ids))
    settings = {"top": top, "coverage": coverage, "min_depth": min_depth}
    meta = {
        "settings": settings,
        "labels_from": il.where,
        "n_labelled_images": il.n_labelled,
        "wordnet": None if wn is None else str(wn.root),
        "exemplars_k": ex.k,
    }
    return FeatureLabels(
        labels, kind, top_ids, shares, hypernym, labelled, names.table, hyp.table, meta
    )


def _wordnet(root: str | None) -> WordNet | None:
    """The WordNet reader, or None when it is not installed (labels then have no hypernyms);
    a folder given explicitly must hold it."""
    from saescope.core.wordnet import WordNetMissing, available
    from saescope.core.wordnet import load as load_wordnet

    if root is None and not available():
        return None
    try:
        return load_wordnet(root)
    except WordNetMissing as err:
        raise FeatureLabelsError(str(err).split(": install")[0]) from err


def add_labels_to_bundle(bundle_path: str | Path, labels: FeatureLabels) -> Path:
    """Store ``labels`` as the bundle's ``labels/`` component (replacing older ones) and
    re-checksum the manifest."""
    from saescope.core.bundle import update_manifest

    folder = Path(bundle_path) / LABELS_DIR
    shutil.rmtree(folder, ignore_errors=True)
    labels.save(folder)
    entry = {
        "path": LABELS_DIR,
        "from": labels.meta.get("labels_from"),
        "kinds": labels.kind_counts(),
        **labels.meta.get("settings", {}),
    }

    def change(info: dict) -> None:
        info.setdefault("components", {})["labels"] = LABELS_DIR
        info["labels"] = entry

    update_manifest(bundle_path, change)
    return folder


def label_bundle(
    bundle: str | Path,
    store: str | Path | None = None,
    *,
    top: int = 3,
    coverage: float = 0.6,
    min_depth: int = 5,
    wordnet_dir: str | None = None,
    progress: bool = True,
) -> FeatureLabels:
    """Compute the labels of a local bundle folder and add them to it (the ``labels`` step)."""
    from saescope.core.bundle import Bundle, BundleError

    path = Path(bundle).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"bundle folder {bundle} not found (labels are added to a local bundle folder; "
            "download a Hub bundle first)"
        )
    wn = _wordnet(wordnet_dir)
    b = Bundle.load(path)
    if not b.has("exemplars"):
        raise BundleError(f"bundle {b.name} has no exemplars to name its features from")
    ex = b.exemplars
    labels = compute_feature_labels(
        ex,
        image_labels(ex, store),
        top=top,
        coverage=coverage,
        min_depth=min_depth,
        wn=wn,
        progress=progress,
    )
    add_labels_to_bundle(path, labels)
    return labels


# ----------------------------------------------------------------------------- CLI
@dataclass(kw_only=True)
class LabelsConfig(ProgressOption):
    """The options of ``saescope labels``."""

    bundle: str
    """local bundle folder whose features are named (the labels are added to it)"""
    store: str | None = None
    """labelled activation store the bundle was built from (default: the one its exemplars
    record, else their image source)"""
    top: int = 3
    """name a feature after at most this many classes or images"""
    coverage: float = 0.6
    """top names: smallest set holding this share of the exemplars' activation mass"""
    min_depth: int = 5
    """use a common WordNet hypernym only this deep (edges below entity.n.01) or deeper"""
    wordnet_dir: str | None = None
    """WordNet 3.0 dict folder (default: $WORDNET_DIR or /usr/share/wordnet; none: no
    hypernyms)"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_step(
        subparsers,
        "labels",
        LabelsConfig,
        run,
        help="name every feature of a bundle after its top classes or source images",
        description="Give every feature of a bundle a short label from the label distribution "
        "of its top\nexemplar images (weighted by activation): its top classes and their "
        "WordNet common hypernym\nwhere the images are labelled, else the dominant source "
        "images. Adds them to the bundle\nas its 'labels' component.",
    )


def run(cfg: LabelsConfig) -> int:
    if cfg.top < 1:
        raise FeatureLabelsError(f"--top must be at least 1, got {cfg.top}")
    if not 0 < cfg.coverage <= 1:
        raise FeatureLabelsError(f"--coverage must be in (0, 1], got {cfg.coverage}")
    announce_config(cfg, "labels", None)
    t0 = time.perf_counter()
    labels = label_bundle(
        cfg.bundle,
        cfg.store,
        top=cfg.top,
        coverage=cfg.coverage,
        min_depth=cfg.min_depth,
        wordnet_dir=cfg.wordnet_dir,
        progress=cfg.progress,
    )
    counts = ", ".join(f"{n} {k}" for k, n in labels.kind_counts().items() if n)
    print(
        f"[labels] {labels.n_features} features labelled from {labels.meta['labels_from']} "
        f"({counts}) in {time.perf_counter() - t0:.1f}s; added to {cfg.bundle}",
        file=sys.stderr,
    )
    shown = [f for f in range(labels.n_features) if labels.labels[f]][:10]
    for f in shown:
        print(f"{f}\t{labels.label(f)}")
    return 0


__all__ = [
    "IMAGE_LABEL_KINDS",
    "ImageLabels",
    "image_labels",
    "short_image_name",
    "top_names",
    "compute_feature_labels",
    "add_labels_to_bundle",
    "label_bundle",
    "LabelsConfig",
    "add_parser",
    "run",
]
