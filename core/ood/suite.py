"""The calibrated OOD suite: fitted scorers, their in-distribution calibration, explanations.

Why calibrate: a raw score means nothing to a user; its percentile among held-out
in-distribution images and the threshold that keeps 95% of them say how unusual an image is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from saescope.core.ood.files import read_suite, save_suite
from saescope.core.ood.metrics import DEFAULT_TPR, percentile_of, tpr_threshold
from saescope.core.ood.scorers import SAE_COMBINED, ProbeScore, RareFeatures, Scorer
from saescope.core.ood.summary import ImageSummary, summarize


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
    def fit(
        cls,
        scorers: Sequence[Scorer],
        train: ImageSummary,
        cal: ImageSummary | None = None,
        *,
        cal_fraction: float = 0.2,
        combine: bool = True,
        tpr: float = DEFAULT_TPR,
        meta: dict | None = None,
        seed: int = 0,
    ) -> OODSuite:
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
            out.append(
                ScoreReport(
                    name,
                    self.label(name),
                    self.family(name),
                    val,
                    percentile_of(self.calibration[name], val),
                    thr,
                    val > thr,
                )
            )
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
        return [
            FeatureContribution(
                int(j),
                float(contrib[j]),
                float(m[j]),
                float(rare.frequency[j]),
                float(rare.surprisal[j]),
            )
            for j in order
        ]

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """``folder/ood.json`` + ``ood.safetensors`` + one FAISS index per k-NN scorer."""
        return save_suite(self, folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> OODSuite:
        """Read a suite written by :meth:`save` (refusing files of a newer saescope)."""
        scorers, info, t = read_suite(folder)
        suite = cls(
            scorers,
            combine=list(info.get("combine") or []),
            tpr=float(info["tpr"]),
            meta=info.get("meta", {}),
        )
        if suite.combine:
            suite.combo_mean, suite.combo_std = t["combine/mean"], t["combine/std"]
        suite.calibration = {
            k[len("calibration/") :]: v for k, v in t.items() if k.startswith("calibration/")
        }
        return suite


def score_tokens(
    suite: OODSuite, sae, patch_tokens: torch.Tensor, final_cls: torch.Tensor | None = None
) -> tuple[list[ScoreReport], ImageSummary]:
    """One image's layer-L patch tokens ``[P, d]`` -> its score reports (for the apps)."""
    s = summarize(
        sae,
        patch_tokens.reshape(1, *patch_tokens.shape[-2:]),
        final_cls=None if final_cls is None else final_cls.reshape(1, -1),
    )
    return suite.report(s, 0), s


__all__ = ["FeatureContribution", "ScoreReport", "OODSuite", "score_tokens"]
