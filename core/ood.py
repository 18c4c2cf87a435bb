"""Out-of-distribution (OOD) scores from SAE codes, with raw-embedding and probe baselines.

Why SAE codes: an SAE trained on in-distribution activations explains them with a dictionary of
features, so an image it was not made for should show up as (a) a larger reconstruction error,
(b) activation mass on features that rarely fire in distribution, or (c) a bag of features far from
every in-distribution image's bag. Each of these is also *explainable*: the features that carry
the score are named, which raw-embedding scores cannot offer.

Every scorer follows one interface: ``fit(train)`` on in-distribution summaries, then
``score(summaries)`` -> one number per image, **higher = more OOD**. Summaries
(:class:`ImageSummary`) are computed once per image set by :func:`summarize` (SAE codes, per-image
FVU, mean-pooled layer tokens, final CLS), so every scorer reads the same pass.

- SAE: ``sae_recon`` (per-image FVU of the layer's patch tokens), ``sae_rare`` (activation-weighted
  surprisal ``-log p_j`` of the active features, ``p_j`` = in-distribution firing frequency per
  token), ``sae_knn`` (cosine distance to the k-th nearest in-distribution image in the space of
  mean-pooled codes, FAISS), ``sae_combined`` (mean of the three z-scored on a calibration split);
- raw baselines: ``raw_maha_*`` (Mahalanobis with a shared Ledoit-Wolf covariance,
  class-conditional when labels exist) and ``raw_knn_*`` (cosine k-NN, FAISS) on the mean-pooled
  layer-L tokens (``layer``) and on the final CLS token (``cls``);
- probe baselines: ``probe_msp`` (negative max softmax) and ``probe_energy`` (negative
  log-sum-exp of the logits) of a linear probe fitted on in-distribution labels.

:class:`OODSuite` fits a set of scorers, calibrates them on held-out in-distribution images
(sorted scores for percentiles, the threshold that keeps 95% of in-distribution images) and is
stored in a bundle's ``ood/`` folder as safetensors + JSON + FAISS indices (never pickle).
Metrics: :func:`auroc` (rank based, ties count one half) and :func:`fpr_at_tpr` (the fraction of
OOD images accepted at the threshold that keeps 95% of in-distribution images).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

FORMAT = "saescope.ood"
FORMAT_VERSION = 1
FAMILIES = ("sae", "raw", "probe")
SAE_COMBINED = "sae_combined"
DEFAULT_TPR = 0.95


# ------------------------------------------------------------------------------ metrics
def _finite_1d(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(a).any():
        raise ValueError(f"{what} contain NaN")
    return a


def auroc(in_scores: Any, out_scores: Any) -> float:
    """P(OOD score > in-dist score) + 0.5 P(tie): the Mann-Whitney U statistic, average ranks.

    Rank based, so any strictly increasing transform of the scores leaves it unchanged.
    """
    a, b = _finite_1d(in_scores, "in-distribution scores"), _finite_1d(out_scores, "OOD scores")
    if not len(a) or not len(b):
        raise ValueError(f"AUROC needs both sets non-empty (got {len(a)} in, {len(b)} out)")
    allv = np.concatenate([a, b])
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inv]
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2.0
    return float(u / (len(a) * len(b)))


def tpr_threshold(in_scores: Any, tpr: float = DEFAULT_TPR) -> float:
    """The smallest score ``t`` with at least ``tpr`` of in-distribution scores ``<= t``.

    Images scoring above ``t`` are called OOD; in-distribution is the positive class (the
    convention of the OOD literature: TPR = in-distribution images kept).
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s = np.sort(_finite_1d(in_scores, "in-distribution scores"))
    if not len(s):
        raise ValueError("no in-distribution scores to set a threshold on")
    k = max(0, int(math.ceil(tpr * len(s) - 1e-9)) - 1)
    return float(s[k])


def fpr_at_tpr(in_scores: Any, out_scores: Any, tpr: float = DEFAULT_TPR) -> float:
    """Fraction of OOD images accepted as in-distribution at the ``tpr`` threshold (FPR@95)."""
    b = _finite_1d(out_scores, "OOD scores")
    if not len(b):
        raise ValueError("no OOD scores")
    return float((b <= tpr_threshold(in_scores, tpr)).mean())


def percentile_of(sorted_scores: np.ndarray, score: float) -> float:
    """Percentage of calibration scores ``<= score`` (0..100)."""
    if not len(sorted_scores):
        return float("nan")
    return float(100.0 * np.searchsorted(sorted_scores, score, side="right") / len(sorted_scores))


# ------------------------------------------------------------------------------ summaries
@dataclass
class ImageSummary:
    """What the scorers read about a set of images (one row per image)."""

    fvu: np.ndarray | None = None  # [N] per-image FVU of the SAE on the patch tokens
    code_mean: np.ndarray | None = None  # [N, d_sae] codes averaged over patches
    fire_count: np.ndarray | None = None  # [N, d_sae] uint16: patches where each feature fired
    raw_mean: np.ndarray | None = None  # [N, d] mean-pooled layer-L patch tokens
    cls_final: np.ndarray | None = None  # [N, d] final normalised CLS token
    labels: np.ndarray | None = None  # [N] int64, -1 = unknown
    label_names: list[str] | None = None
    n_patches: int = 0
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        for a in (self.fvu, self.raw_mean, self.cls_final, self.code_mean):
            if a is not None:
                return len(a)
        return 0

    def field(self, name: str) -> np.ndarray:
        arr = getattr(self, name)
        if arr is None:
            raise ValueError(f"these image summaries carry no {name!r} (computed without it)")
        return arr

    def subset(self, rows: Any) -> "ImageSummary":
        rows = np.asarray(rows)
        pick = (lambda a: None if a is None else a[rows])
        ids = [self.ids[i] for i in np.arange(len(self))[rows]] if self.ids else []
        return ImageSummary(pick(self.fvu), pick(self.code_mean), pick(self.fire_count),
                            pick(self.raw_mean), pick(self.cls_final), pick(self.labels),
                            self.label_names, self.n_patches, ids)

    @classmethod
    def concat(cls, parts: Sequence["ImageSummary"]) -> "ImageSummary":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()

        def cat(name):
            arrs = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrs) else np.concatenate(arrs)

        return cls(cat("fvu"), cat("code_mean"), cat("fire_count"), cat("raw_mean"),
                   cat("cls_final"), cat("labels"), parts[0].label_names, parts[0].n_patches,
                   [i for p in parts for i in p.ids])


@torch.inference_mode()
def summarize(sae, patch_tokens: torch.Tensor, *, final_cls: torch.Tensor | None = None,
              labels: Sequence[int | None] | None = None, label_names: list[str] | None = None,
              ids: Sequence[str] | None = None, chunk_images: int = 16) -> ImageSummary:
    """Per-image summaries of layer-L patch tokens ``[B, P, d]`` (raw units) through ``sae``.

    ``sae`` may be ``None`` (raw baselines only). The FVU is the one the browser shows: squared
    reconstruction error over the image's own patch variance.
    """
    x_all = patch_tokens.float()
    if x_all.ndim != 3:
        raise ValueError(f"patch tokens must be [B, P, d], got {tuple(x_all.shape)}")
    b, p, d = x_all.shape
    fvu, means, fires = [], [], []
    if sae is not None:
        for a in range(0, b, chunk_images):
            x = x_all[a:a + chunk_images]
            flat = x.reshape(-1, d)
            codes = sae.encode(flat)
            err = (flat - sae.decode(codes)).pow(2).sum(-1).view(len(x), p).sum(1)
            var = (x - x.mean(1, keepdim=True)).pow(2).sum((1, 2)).clamp_min(1e-12)
            codes = codes.view(len(x), p, -1)
            fvu.append((err / var).double().numpy())
            means.append(codes.mean(1).numpy().astype(np.float32))
            fires.append((codes > 0).sum(1).numpy().astype(np.uint16))
    lab = None
    if labels is not None:
        lab = np.array([-1 if v is None else int(v) for v in labels], np.int64)
    return ImageSummary(
        fvu=np.concatenate(fvu) if fvu else None,
        code_mean=np.concatenate(means) if means else None,
        fire_count=np.concatenate(fires) if fires else None,
        raw_mean=x_all.mean(1).double().numpy().astype(np.float32),
        cls_final=None if final_cls is None else final_cls.float().reshape(b, -1).numpy(),
        labels=lab, label_names=label_names, n_patches=p, ids=list(ids or []))


# ------------------------------------------------------------------------------ scorers
class Scorer:
    """Fit on in-distribution summaries, score any summaries (higher = more OOD)."""

    name: str = ""
    family: str = "sae"
    label: str = ""
    needs_labels: bool = False
    saveable: bool = True

    def fit(self, train: ImageSummary) -> "Scorer":
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

    def fit(self, train: ImageSummary) -> "RareFeatures":
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


_FIELD_LABEL = {"code_mean": "mean-pooled SAE codes", "raw_mean": "mean-pooled layer tokens",
                "cls_final": "final CLS"}


class KNNDistance(Scorer):
    """Cosine distance to the k-th nearest in-distribution image (FAISS, exact)."""

    def __init__(self, field: str, name: str, family: str, k: int = 5) -> None:
        self.field_name, self.name, self.family, self.k = field, name, family, int(k)
        self.label = f"{'SAE code' if family == 'sae' else 'raw'} k-NN (k={self.k}, " \
                     f"{_FIELD_LABEL.get(field, field)})"
        self.index = None

    def fit(self, train: ImageSummary) -> "KNNDistance":
        from saescope.core.index import VectorIndex

        x = train.field(self.field_name)
        if len(x) < self.k:
            raise ValueError(f"{self.name}: {len(x)} training images for k={self.k}")
        self.index = VectorIndex.build(x, metric="cosine", index_type="flat", kind=f"ood-{self.name}",
                                       meta={"field": self.field_name, "k": self.k})
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
    beta = ((x ** 2).sum(1) ** 2).sum() - n * (s ** 2).sum()
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

    def fit(self, train: ImageSummary) -> "Mahalanobis":
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
        d2 = ((xp * x).sum(1)[:, None] - 2 * xp @ self.means.T
              + ((self.means @ self.precision) * self.means).sum(1)[None])
        return d2.min(1)

    def state(self, folder: Path):
        return {"means": self.means, "precision": self.precision}, {"field": self.field_name,
                                                                     "label": self.label}

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

    def fit(self, train: ImageSummary) -> "ProbeScore":
        from saescope.core.probes import fit_linear_probe

        y = train.labels
        if y is None or train.label_names is None or len(np.unique(y[y >= 0])) < 2:
            raise ValueError("the in-distribution images carry fewer than two class labels")
        self.probe, self.report = fit_linear_probe(train.field("cls_final"), y, train.label_names,
                                                   pooling="cls", name="ood-probe")
        return self

    def use_probe(self, probe, report=None) -> "ProbeScore":
        """Share one fitted probe between the MSP and energy scorers (fit once)."""
        self.probe, self.report = probe, report
        return self

    def score(self, s: ImageSummary) -> np.ndarray:
        with torch.no_grad():
            logits = self.probe.logits_from_features(torch.from_numpy(s.field("cls_final"))).double()
        if self.kind == "msp":
            return -torch.softmax(logits, -1).max(-1).values.numpy()
        return -torch.logsumexp(logits, -1).numpy()


def default_scorers(families: Sequence[str] = FAMILIES, k: int = 5,
                    raw_fields: Sequence[str] = ("raw_mean", "cls_final")) -> list[Scorer]:
    """The standard set: three SAE scores, Mahalanobis + k-NN per raw field, MSP + energy."""
    out: list[Scorer] = []
    bad = set(families) - set(FAMILIES)
    if bad:
        raise ValueError(f"unknown scorer families {sorted(bad)}; use {FAMILIES}")
    if "sae" in families:
        out += [ReconstructionError(), RareFeatures(), KNNDistance("code_mean", "sae_knn", "sae", k)]
    if "raw" in families:
        for f in raw_fields:
            tag = {"raw_mean": "layer", "cls_final": "cls"}.get(f, f)
            out += [Mahalanobis(f, f"raw_maha_{tag}"), KNNDistance(f, f"raw_knn_{tag}", "raw", k)]
    if "probe" in families:
        out += [ProbeScore("msp"), ProbeScore("energy")]
    return out


# ------------------------------------------------------------------------------ explanation
@dataclass
class FeatureContribution:
    """One feature's share of an image's rare-feature score above the in-distribution typical."""

    feature: int
    contribution: float  # w_j * (surprisal_j - typical score); they sum to score - typical
    activation: float  # mean activation over the image's patches
    frequency: float  # in-distribution firing frequency per token
    surprisal: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class ScoreReport:
    """One score of one image, read against the in-distribution calibration."""

    name: str
    label: str
    family: str
    score: float
    percentile: float  # % of calibration (in-dist) images scoring at most this
    threshold: float  # the 95%-TPR threshold
    is_ood: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


# ------------------------------------------------------------------------------ the suite
@dataclass
class OODSuite:
    """Fitted scorers + their in-distribution calibration (percentiles, 95%-TPR thresholds)."""

    scorers: list[Scorer]
    combine: list[str] = field(default_factory=list)
    combo_mean: np.ndarray | None = None
    combo_std: np.ndarray | None = None
    calibration: dict[str, np.ndarray] = field(default_factory=dict)  # sorted in-dist scores
    skipped: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    tpr: float = DEFAULT_TPR

    @property
    def names(self) -> list[str]:
        """Scorer names: SAE scores, their combination, then the baselines."""
        sae = [s.name for s in self.scorers if s.family == "sae"]
        rest = [s.name for s in self.scorers if s.family != "sae"]
        return sae + ([SAE_COMBINED] if self.combine else []) + rest

    def scorer(self, name: str) -> Scorer:
        for s in self.scorers:
            if s.name == name:
                return s
        raise KeyError(f"no OOD scorer {name!r} (have: {', '.join(self.names)})")

    def label(self, name: str) -> str:
        if name == SAE_COMBINED:
            return "SAE combined (mean z-score of " + ", ".join(self.combine) + ")"
        return self.scorer(name).label

    def family(self, name: str) -> str:
        return "sae" if name == SAE_COMBINED else self.scorer(name).family

    @classmethod
    def fit(cls, scorers: Sequence[Scorer], train: ImageSummary, cal: ImageSummary | None = None,
            *, cal_fraction: float = 0.2, combine: bool = True, tpr: float = DEFAULT_TPR,
            meta: dict | None = None, seed: int = 0) -> "OODSuite":
        """Fit ``scorers`` on ``train`` and calibrate on ``cal`` (default: a random
        ``cal_fraction`` of ``train``, held out from fitting, so that thresholds and percentiles
        are those of unseen in-distribution images). Scorers that cannot be fitted (e.g. a
        probe without labels) are skipped with the reason in :attr:`skipped`."""
        if cal is None:
            n = len(train)
            n_cal = max(1, int(round(cal_fraction * n)))
            if n - n_cal < 2:
                raise ValueError(f"{n} in-distribution images are too few to fit and calibrate on")
            perm = np.random.default_rng(seed).permutation(n)
            train, cal = train.subset(np.sort(perm[n_cal:])), train.subset(np.sort(perm[:n_cal]))
        if not len(train) or not len(cal):
            raise ValueError("no in-distribution images to fit or calibrate the OOD scores on")
        fitted, skipped = [], {}
        probe_shared = None
        for s in scorers:
            try:
                if isinstance(s, ProbeScore) and probe_shared is not None:
                    s.use_probe(*probe_shared)
                else:
                    s.fit(train)
                    if isinstance(s, ProbeScore):
                        probe_shared = (s.probe, s.report)
                fitted.append(s)
            except ValueError as err:
                skipped[s.name] = str(err)
        suite = cls(fitted, skipped=skipped, tpr=tpr, meta=dict(meta or {}))
        suite.meta.update(n_fit=len(train), n_calibration=len(cal))
        base = {s.name: s.score(cal) for s in fitted}
        comps = [n for n in ("sae_recon", "sae_rare", "sae_knn") if n in base]
        if combine and len(comps) >= 2:
            z = np.stack([base[n] for n in comps], 1)
            suite.combine = comps
            suite.combo_mean = z.mean(0)
            suite.combo_std = np.maximum(z.std(0), 1e-12)
            base[SAE_COMBINED] = suite._combined(base)
        suite.calibration = {n: np.sort(v) for n, v in base.items()}
        return suite

    def _combined(self, base: dict[str, np.ndarray]) -> np.ndarray:
        z = np.stack([base[n] for n in self.combine], 1)
        return ((z - self.combo_mean) / self.combo_std).mean(1)

    def scores(self, s: ImageSummary) -> dict[str, np.ndarray]:
        """Every score of every image in ``s`` (scorers whose inputs ``s`` lacks are left out)."""
        out: dict[str, np.ndarray] = {}
        for sc in self.scorers:
            try:
                out[sc.name] = sc.score(s)
            except ValueError:
                continue
        if self.combine and all(n in out for n in self.combine):
            out[SAE_COMBINED] = self._combined(out)
        return {n: out[n] for n in self.names if n in out}

    def threshold(self, name: str) -> float:
        return tpr_threshold(self.calibration[name], self.tpr)

    def report(self, s: ImageSummary, row: int = 0) -> list[ScoreReport]:
        """Scores of image ``row`` of ``s`` with percentile and verdict, in :attr:`names` order."""
        out = []
        for name, v in self.scores(s).items():
            val, thr = float(v[row]), self.threshold(name)
            out.append(ScoreReport(name, self.label(name), self.family(name), val,
                                   percentile_of(self.calibration[name], val), thr, val > thr))
        return out

    def explain(self, code_mean: np.ndarray, top: int = 8) -> list[FeatureContribution]:
        """The features that push the rare-feature score above its typical in-distribution value.

        Contribution of feature j = ``w_j (surprisal_j - typical)`` with ``w`` the image's
        activation shares and ``typical`` the median calibration score: they sum to
        ``score - typical``, so the listed features are what makes the image surprising.
        """
        rare = self.scorer("sae_rare")
        assert isinstance(rare, RareFeatures)
        m = np.asarray(code_mean, np.float64).reshape(-1)
        w = rare.weights(m)
        typical = float(np.median(self.calibration["sae_rare"]))
        contrib = w * (rare.surprisal - typical)
        tol = 1e-9 * max(1.0, abs(typical))  # surprisal equal to the typical score: not a driver
        active = np.nonzero((m > 0) & (contrib > tol * w))[0]
        order = active[np.argsort(-contrib[active], kind="stable")][:top]
        return [FeatureContribution(int(j), float(contrib[j]), float(m[j]), float(rare.frequency[j]),
                                    float(rare.surprisal[j])) for j in order]

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """``folder/ood.json`` + ``ood.safetensors`` + one FAISS index per k-NN scorer."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        entries = []
        for s in self.scorers:
            if not s.saveable:
                continue  # probes need the final tokens and labels; they live in probes/
            t, m = s.state(folder)
            tensors.update({f"{s.name}/{k}": np.ascontiguousarray(v) for k, v in t.items()})
            entries.append({**s.describe(), "class": type(s).__name__, "state": m})
        saved = {e["name"] for e in entries}
        for name, v in self.calibration.items():
            if name in saved or name == SAE_COMBINED:
                tensors[f"calibration/{name}"] = np.ascontiguousarray(v, np.float64)
        if self.combine:
            tensors["combine/mean"] = np.asarray(self.combo_mean, np.float64)
            tensors["combine/std"] = np.asarray(self.combo_std, np.float64)
        save_file(tensors, str(folder / "ood.safetensors"))
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "scorers": entries,
                "combine": self.combine, "tpr": self.tpr, "meta": self.meta,
                "thresholds": {n: self.threshold(n) for n in self.calibration
                               if n in saved or n == SAE_COMBINED}}
        tmp = folder / "ood.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, folder / "ood.json")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "OODSuite":
        from safetensors.numpy import load_file

        folder = Path(folder)
        path = folder / "ood.json"
        if not path.is_file():
            raise FileNotFoundError(f"no OOD calibration in {folder} (missing ood.json)")
        info = json.loads(path.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"{path} is not an OOD calibration file")
        if int(info.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{path}: OOD format version {info['format_version']} is newer than "
                             f"this saescope reads ({FORMAT_VERSION}); upgrade saescope")
        t = load_file(str(folder / "ood.safetensors"))
        scorers: list[Scorer] = []
        for e in info["scorers"]:
            kind, st = e["class"], e.get("state", {})
            if kind == "ReconstructionError":
                s: Scorer = ReconstructionError()
            elif kind == "RareFeatures":
                s = RareFeatures()
            elif kind == "KNNDistance":
                s = KNNDistance(st["field"], e["name"], e["family"], st["k"])
            elif kind == "Mahalanobis":
                s = Mahalanobis(st["field"], e["name"])
            else:
                raise ValueError(f"{path}: unknown OOD scorer class {kind!r}")
            pre = f"{e['name']}/"
            s.load_state({k[len(pre):]: v for k, v in t.items() if k.startswith(pre)}, st, folder)
            scorers.append(s)
        suite = cls(scorers, combine=list(info.get("combine") or []), tpr=float(info["tpr"]),
                    meta=info.get("meta", {}))
        if suite.combine:
            suite.combo_mean, suite.combo_std = t["combine/mean"], t["combine/std"]
        suite.calibration = {k[len("calibration/"):]: v for k, v in t.items()
                             if k.startswith("calibration/")}
        return suite


def score_tokens(suite: OODSuite, sae, patch_tokens: torch.Tensor,
                 final_cls: torch.Tensor | None = None) -> tuple[list[ScoreReport], ImageSummary]:
    """One image's layer-L patch tokens ``[P, d]`` -> its score reports (for the apps)."""
    s = summarize(sae, patch_tokens.reshape(1, *patch_tokens.shape[-2:]),
                  final_cls=None if final_cls is None else final_cls.reshape(1, -1))
    return suite.report(s, 0), s


__all__ = ["FeatureContribution", "ImageSummary", "KNNDistance", "Mahalanobis", "OODSuite",
           "ProbeScore", "RareFeatures", "ReconstructionError", "ScoreReport", "Scorer",
           "SAE_COMBINED", "auroc", "default_scorers", "fpr_at_tpr", "ledoit_wolf",
           "percentile_of", "score_tokens", "summarize", "tpr_threshold"]
