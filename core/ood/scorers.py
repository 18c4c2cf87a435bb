"""The OOD scorers: fit on in-distribution summaries, score any summaries (higher = more OOD).

Why one interface (:class:`Scorer`): the suite fits, calibrates, saves and explains SAE scores and
raw-embedding or probe baselines the same way, so that they are compared on equal terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from saescope.core.ood.summary import ImageSummary

FAMILIES = ("sae", "raw", "probe")
SAE_COMBINED = "sae_combined"  # the suite's mean z-score of the SAE scorers


class Scorer:
    """Fit on in-distribution summaries, score any summaries (higher = more OOD)."""

    name: str = ""
    family: str = "sae"
    label: str = ""
    needs_labels: bool = False
    saveable: bool = True

    def fit(self, train: ImageSummary) -> Scorer:
        return self

    def score(self, s: ImageSummary) -> np.ndarray:
        raise NotImplementedError

    # persistence: tensors (float arrays) + JSON-able meta; indices go beside as files
    def state(self, folder: Path) -> tuple[dict[str, np.ndarray], dict]:
        return {}, {}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict, folder: Path) -> None:
        pass

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "label": self.label}


class ReconstructionError(Scorer):
    """Per-image FVU: an SAE fitted in distribution should explain OOD tokens worse."""

    name, family, label = "sae_recon", "sae", "SAE reconstruction error (per-image FVU)"

    def score(self, s: ImageSummary) -> np.ndarray:
        return s.field("fvu").astype(np.float64)


class RareFeatures(Scorer):
    """Activation-weighted mean surprisal ``-log p_j`` of the features that fire on the image."""

    name, family, label = "sae_rare", "sae", "SAE rare features (activation-weighted surprisal)"

    def __init__(self) -> None:
        self.surprisal: np.ndarray | None = None
        self.frequency: np.ndarray | None = None
        self.n_tokens = 0

    def fit(self, train: ImageSummary) -> RareFeatures:
        counts = train.field("fire_count").astype(np.float64).sum(0)
        self.n_tokens = int(len(train) * train.n_patches)
        # add-half smoothing: a feature never seen in distribution gets a large, finite surprisal
        self.frequency = (counts + 0.5) / (self.n_tokens + 1.0)
        self.surprisal = -np.log(self.frequency)
        return self

    def weights(self, code_mean: np.ndarray) -> np.ndarray:
        m = np.asarray(code_mean, np.float64)
        return m / np.maximum(m.sum(-1, keepdims=True), 1e-12)

    def score(self, s: ImageSummary) -> np.ndarray:
        w = self.weights(s.field("code_mean"))
        out = w @ self.surprisal
        # no active feature at all: nothing the dictionary knows, the most surprising case
        return np.where(w.sum(-1) > 0, out, float(self.surprisal.max()))

    def state(self, folder: Path):
        return {"frequency": self.frequency}, {"n_tokens": self.n_tokens}

    def load_state(self, tensors, meta, folder):
        self.frequency = tensors["frequency"].astype(np.float64)
        self.surprisal = -np.log(self.frequency)
        self.n_tokens = int(meta["n_tokens"])


_FIELD_LABEL = {
    "code_mean": "mean-pooled SAE codes",
    "raw_mean": "mean-pooled layer tokens",
    "cls_final": "final CLS",
}


class KNNDistance(Scorer):
    """Cosine distance to the k-th nearest in-distribution image (FAISS, exact)."""

    def __init__(self, field: str, name: str, family: str, k: int = 5) -> None:
        self.field_name, self.name, self.family, self.k = field, name, family, int(k)
        self.label = (
            f"{'SAE code' if family == 'sae' else 'raw'} k-NN (k={self.k}, "
            f"{_FIELD_LABEL.get(field, field)})"
        )
        self.index = None

    def fit(self, train: ImageSummary) -> KNNDistance:
        from saescope.core.index import VectorIndex

        x = train.field(self.field_name)
        if len(x) < self.k:
            raise ValueError(f"{self.name}: {len(x)} training images for k={self.k}")
        self.index = VectorIndex.build(
            x,
            metric="cosine",
            index_type="flat",
            kind=f"ood-{self.name}",
            meta={"field": self.field_name, "k": self.k},
        )
        return self

    def score(self, s: ImageSummary) -> np.ndarray:
        sims, _ = self.index.search(s.field(self.field_name), self.k)
        return 1.0 - sims[:, -1].astype(np.float64)

    def neighbours(self, vector: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.asarray(vector, np.float32).reshape(1, -1), k or self.k)

    def state(self, folder: Path):
        self.index.save(folder / f"{self.name}.faiss")
        return {}, {"field": self.field_name, "k": self.k, "index": f"{self.name}.faiss"}

    def load_state(self, tensors, meta, folder):
        from saescope.core.index import VectorIndex

        self.index = VectorIndex.load(folder / meta["index"])


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of centred rows ``x`` [n, d] (float64).

    Why shrinkage: a few hundred images in 384 dimensions give a singular sample covariance.
    """
    x = np.asarray(x, np.float64)
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta = ((s - mu * np.eye(d)) ** 2).sum() / d
    beta = ((x**2).sum(1) ** 2).sum() - n * (s**2).sum()
    beta = min(max(beta / (n * n * d), 0.0), delta)
    shrink = 0.0 if delta == 0 else beta / delta
    return (1 - shrink) * s + shrink * mu * np.eye(d)


class Mahalanobis(Scorer):
    """Squared Mahalanobis distance to the nearest class mean (one shared covariance)."""

    def __init__(self, field: str, name: str) -> None:
        self.field_name, self.name, self.family = field, name, "raw"
        self.label = f"Mahalanobis ({_FIELD_LABEL.get(field, field)})"
        self.means: np.ndarray | None = None
        self.precision: np.ndarray | None = None

    def fit(self, train: ImageSummary) -> Mahalanobis:
        x = train.field(self.field_name).astype(np.float64)
        y = train.labels
        classes = [] if y is None else [c for c in np.unique(y) if c >= 0 and (y == c).sum() >= 2]
        if len(classes) >= 2:
            keep = np.isin(y, classes)
            x, y = x[keep], y[keep]
            self.means = np.stack([x[y == c].mean(0) for c in classes])
            centred = x - self.means[np.searchsorted(classes, y)]
            self.label += ", class-conditional"
        else:
            self.means = x.mean(0, keepdims=True)
            centred = x - self.means
        self.precision = np.linalg.inv(ledoit_wolf(centred))
        return self

    def score(self, s: ImageSummary) -> np.ndarray:
        x = s.field(self.field_name).astype(np.float64)
        xp = x @ self.precision
        d2 = (
            (xp * x).sum(1)[:, None]
            - 2 * xp @ self.means.T
            + ((self.means @ self.precision) * self.means).sum(1)[None]
        )
        return d2.min(1)

    def state(self, folder: Path):
        return {"means": self.means, "precision": self.precision}, {
            "field": self.field_name,
            "label": self.label,
        }

    def load_state(self, tensors, meta, folder):
        self.means = tensors["means"].astype(np.float64)
        self.precision = tensors["precision"].astype(np.float64)
        self.label = meta.get("label", self.label)


class ProbeScore(Scorer):
    """Max softmax probability or energy of a linear probe on the final CLS token."""

    needs_labels = True
    saveable = False

    def __init__(self, kind: str) -> None:
        if kind not in ("msp", "energy"):
            raise ValueError(f"probe score must be msp or energy, got {kind!r}")
        self.kind, self.name, self.family = kind, f"probe_{kind}", "probe"
        self.label = "probe max softmax (negated)" if kind == "msp" else "probe energy (-logsumexp)"
        self.probe = None
        self.report = None

    def fit(self, train: ImageSummary) -> ProbeScore:
        from saescope.core.probes import fit_linear_probe

        y = train.labels
        if y is None or train.label_names is None or len(np.unique(y[y >= 0])) < 2:
            raise ValueError("the in-distribution images carry fewer than two class labels")
        self.probe, self.report = fit_linear_probe(
            train.field("cls_final"), y, train.label_names, pooling="cls", name="ood-probe"
        )
        return self

    def use_probe(self, probe, report=None) -> ProbeScore:
        """Share one fitted probe between the MSP and energy scorers (fit once)."""
        self.probe, self.report = probe, report
        return self

    def score(self, s: ImageSummary) -> np.ndarray:
        with torch.no_grad():
            feats = torch.from_numpy(s.field("cls_final"))
            logits = self.probe.logits_from_features(feats).double()
        if self.kind == "msp":
            return -torch.softmax(logits, -1).max(-1).values.numpy()
        return -torch.logsumexp(logits, -1).numpy()


def default_scorers(
    families: Sequence[str] = FAMILIES,
    k: int = 5,
    raw_fields: Sequence[str] = ("raw_mean", "cls_final"),
) -> list[Scorer]:
    """The standard set: three SAE scores, Mahalanobis + k-NN per raw field, MSP + energy."""
    out: list[Scorer] = []
    bad = set(families) - set(FAMILIES)
    if bad:
        raise ValueError(f"unknown scorer families {sorted(bad)}; use {FAMILIES}")
    if "sae" in families:
        out += [
            ReconstructionError(),
            RareFeatures(),
            KNNDistance("code_mean", "sae_knn", "sae", k),
        ]
    if "raw" in families:
        for f in raw_fields:
            tag = {"raw_mean": "layer", "cls_final": "cls"}.get(f, f)
            out += [Mahalanobis(f, f"raw_maha_{tag}"), KNNDistance(f, f"raw_knn_{tag}", "raw", k)]
    if "probe" in families:
        out += [ProbeScore("msp"), ProbeScore("energy")]
    return out


__all__ = [
    "FAMILIES",
    "SAE_COMBINED",
    "Scorer",
    "ReconstructionError",
    "RareFeatures",
    "KNNDistance",
    "ledoit_wolf",
    "Mahalanobis",
    "ProbeScore",
    "default_scorers",
]
