"""Feature names that travel in a bundle: a short label per SAE feature, and where it came from.

Why in core: the apps read these labels to caption feature cards; only
``saescope.train.feature_labels`` (``saescope labels``) computes them. Folder format
(``labels/`` in a bundle, ``format_version`` 1)::

    feature_labels.json         format, format_version, n_features, settings (top, coverage, ...),
                                where the image labels came from, names (the vocabulary: display
                                name and kind -- "class" or "image" -- of every class or source
                                image a feature can be named after), hypernyms (id, name, lemma
                                of every WordNet common hypernym used), labels (one string per
                                feature)
    feature_labels.safetensors  kind [F] uint8 (index into KINDS), top [F, T] int32 (index into
                                names, -1 = empty), share [F, T] float32 (share of the feature's
                                exemplar mass: the activation-weighted exemplars of that name),
                                hypernym [F] int32 (index into hypernyms, -1 = none), labelled
                                [F] float32 (share of the mass on exemplars with a class label)

A feature's kind says how its label was made: ``classes`` (its top classes), ``hypernym`` (the
WordNet common hypernym of its top classes, with them in brackets: "hound (beagle, basset)"),
``images`` (the dominant source images, for unlabelled data) or ``none`` (a feature without
exemplars). At 24,576 features x 3 top names the folder is about 1 MB; loading parses the JSON
and reads the arrays once (tens of milliseconds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saescope.core import formats
from saescope.core.fileio import atomic_path, atomic_write_text

FORMAT = formats.FEATURE_LABELS.name
FORMAT_VERSION = formats.FEATURE_LABELS.version
LABELS_DIR = "labels"
META_FILE = "feature_labels.json"
ARRAYS_FILE = "feature_labels.safetensors"
KINDS = ("none", "classes", "hypernym", "images")
NAME_KINDS = ("class", "image")
_ARRAYS = ("kind", "top", "share", "hypernym", "labelled")


class FeatureLabelsError(ValueError):
    """Feature labels that cannot be read (missing, damaged or unknown files) or are malformed."""


@dataclass
class FeatureLabels:
    """Per-feature labels and the top names behind them (see the module docstring)."""

    labels: list[str]
    kind: np.ndarray  # [F] uint8 into KINDS
    top: np.ndarray  # [F, T] int32 into names, -1 = empty
    share: np.ndarray  # [F, T] float32
    hypernym: np.ndarray  # [F] int32 into hypernyms, -1 = none
    labelled: np.ndarray  # [F] float32
    names: list[dict[str, str]]  # {"name": display name, "kind": "class" | "image"}
    hypernyms: list[dict[str, str]] = field(default_factory=list)  # {"id", "name", "lemma"}
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_features(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return self.n_features

    def validate(self) -> None:
        """Raise :class:`FeatureLabelsError` when the arrays disagree in shape or range."""
        F = len(self.labels)
        if self.top.ndim != 2 or self.share.shape != self.top.shape or len(self.top) != F:
            raise FeatureLabelsError(
                f"feature labels: top {self.top.shape} / share {self.share.shape} do not match "
                f"{F} labels"
            )
        for name in ("kind", "hypernym", "labelled"):
            if getattr(self, name).shape != (F,):
                raise FeatureLabelsError(
                    f"feature labels: {name} has shape {getattr(self, name).shape}, expected ({F},)"
                )
        if F and int(self.kind.max(initial=0)) >= len(KINDS):
            raise FeatureLabelsError(f"feature labels: kind codes beyond {KINDS}")
        if self.top.size and int(self.top.max(initial=-1)) >= len(self.names):
            raise FeatureLabelsError("feature labels: a top name index beyond the names table")
        if F and int(self.hypernym.max(initial=-1)) >= len(self.hypernyms):
            raise FeatureLabelsError("feature labels: a hypernym index beyond the hypernyms table")

    def check_feature(self, feature: int) -> int:
        """A valid feature id, or a clear error naming the range."""
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)):
            raise FeatureLabelsError(f"feature id must be an integer, got {feature!r}")
        f = int(feature)
        if not 0 <= f < self.n_features:
            raise FeatureLabelsError(
                f"unknown feature {feature}: these labels cover features 0..{self.n_features - 1}"
            )
        return f

    def label(self, feature: int) -> str:
        """The short label of a feature ("digit 3", "hound (beagle, basset)", "astronaut, coffee";
        empty for a feature without exemplars)."""
        return self.labels[self.check_feature(feature)]

    def details(self, feature: int) -> dict[str, Any]:
        """Label, kind, top names with their shares, the common hypernym (or None) and the share
        of the feature's exemplar mass on labelled images -- for a tooltip or an API."""
        f = self.check_feature(feature)
        top = [
            {**self.names[int(i)], "share": round(float(s), 4)}
            for i, s in zip(self.top[f], self.share[f])
            if int(i) >= 0
        ]
        h = int(self.hypernym[f])
        return {
            "feature": f,
            "label": self.labels[f],
            "kind": KINDS[int(self.kind[f])],
            "top": top,
            "hypernym": dict(self.hypernyms[h]) if h >= 0 else None,
            "labelled_share": round(float(self.labelled[f]), 4),
        }

    def kind_counts(self) -> dict[str, int]:
        """How many features have each kind of label."""
        counts = np.bincount(self.kind, minlength=len(KINDS))
        return {k: int(c) for k, c in zip(KINDS, counts)}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write both files atomically into ``folder`` (created when missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "kind": torch.from_numpy(np.ascontiguousarray(self.kind, dtype=np.uint8)),
            "top": torch.from_numpy(np.ascontiguousarray(self.top, dtype=np.int32)),
            "share": torch.from_numpy(np.ascontiguousarray(self.share, dtype=np.float32)),
            "hypernym": torch.from_numpy(np.ascontiguousarray(self.hypernym, dtype=np.int32)),
            "labelled": torch.from_numpy(np.ascontiguousarray(self.labelled, dtype=np.float32)),
        }
        with atomic_path(folder / ARRAYS_FILE, fsync=False) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        meta = {
            **self.meta,
            **formats.FEATURE_LABELS.header(),
            "n_features": self.n_features,
            "kinds": list(KINDS),
            "names": self.names,
            "hypernyms": self.hypernyms,
            "labels": self.labels,
        }
        atomic_write_text(folder / META_FILE, json.dumps(meta, separators=(",", ":")), fsync=False)
        return folder


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FeatureLabelsError(f"{path}: unreadable feature labels ({err})") from err
    formats.FEATURE_LABELS.check(meta, path, error=FeatureLabelsError)
    for key, kind in (("labels", list), ("names", list), ("hypernyms", list)):
        if not isinstance(meta.get(key), kind):
            raise FeatureLabelsError(f"{path}: field {key!r} is missing or not a list")
    if not all(isinstance(s, str) for s in meta["labels"]):
        raise FeatureLabelsError(f"{path}: every label must be a string")
    if not all(isinstance(n, dict) and n.get("kind") in NAME_KINDS for n in meta["names"]):
        raise FeatureLabelsError(f"{path}: every name needs a kind out of {NAME_KINDS}")
    return meta


def load_feature_labels(path: str | os.PathLike) -> FeatureLabels:
    """Open a labels folder (or its ``feature_labels.json``); :class:`FeatureLabelsError` with
    the file's name when it is missing, damaged, of another format or from a newer saescope."""
    path = Path(path)
    folder = path.parent if path.name == META_FILE else path
    meta_path, arrays_path = folder / META_FILE, folder / ARRAYS_FILE
    missing = [p.name for p in (meta_path, arrays_path) if not p.is_file()]
    if missing:
        raise FeatureLabelsError(f"{folder} holds no feature labels (missing {', '.join(missing)})")
    meta = _read_meta(meta_path)
    try:
        with safe_open(str(arrays_path), framework="numpy") as fh:
            absent = [n for n in _ARRAYS if n not in set(fh.keys())]
            if absent:
                raise FeatureLabelsError(f"{arrays_path}: arrays missing: {', '.join(absent)}")
            arrays = {n: fh.get_tensor(n) for n in _ARRAYS}
    except FeatureLabelsError:
        raise
    except Exception as err:
        raise FeatureLabelsError(f"{arrays_path}: unreadable feature labels ({err})") from err
    labels, names, hypernyms = meta.pop("labels"), meta.pop("names"), meta.pop("hypernyms")
    if meta.get("n_features") != len(labels):
        raise FeatureLabelsError(
            f"{meta_path}: n_features {meta.get('n_features')} but {len(labels)} labels"
        )
    for key in ("format", "format_version", "kinds"):
        meta.pop(key, None)
    try:
        return FeatureLabels(
            labels,
            arrays["kind"].astype(np.uint8),
            arrays["top"].astype(np.int32),
            arrays["share"].astype(np.float32),
            arrays["hypernym"].astype(np.int32),
            arrays["labelled"].astype(np.float32),
            names,
            hypernyms,
            meta,
        )
    except FeatureLabelsError as err:
        raise FeatureLabelsError(f"{folder}: {err}") from err


__all__ = [
    "FeatureLabels",
    "FeatureLabelsError",
    "load_feature_labels",
    "FORMAT",
    "FORMAT_VERSION",
    "LABELS_DIR",
    "META_FILE",
    "ARRAYS_FILE",
    "KINDS",
    "NAME_KINDS",
]
