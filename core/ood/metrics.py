"""OOD metrics: AUROC, the threshold that keeps a fraction of in-distribution images, FPR there.

Why rank based: scorers live on unrelated scales (FVU, surprisal, distances, logits); ranks make
their AUROC comparable and unchanged by any strictly increasing transform.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULT_TPR = 0.95


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
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2.0
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


__all__ = ["DEFAULT_TPR", "auroc", "tpr_threshold", "fpr_at_tpr", "percentile_of"]
