"""Measuring recall@k and tuning search parameters until an index reaches a target recall.

Why tune: the recall of an approximate index at given ``nprobe`` / ``efSearch`` / ``k_factor``
depends on the data, so the cheapest setting that reaches the target is measured per index on
held-out queries rather than guessed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from saescope.core.index.params import DEFAULT_TARGET_RECALL, apply_search_params, index_parts


def recall_from_ids(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ignoring -1) that appears in the row of ``found``."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        total += len(t)
        hits += len(np.intersect1d(f[f >= 0], t))
    return hits / total if total else 1.0


def drop_self(ids: np.ndarray, query_ids: np.ndarray | None, k: int) -> np.ndarray:
    """Rows of ``ids`` without each row's query id, cut (or padded with -1) to ``k`` columns."""
    if query_ids is None:
        return ids[:, :k]
    out = np.full((len(ids), k), -1, np.int64)
    for r, (row, qid) in enumerate(zip(ids, query_ids)):
        row = row[row != qid][:k]
        out[r, : len(row)] = row
    return out


def _timed_recall(
    vi: Any, q: np.ndarray, truth: np.ndarray, k: int, query_ids: np.ndarray | None
) -> tuple[float, float]:
    t = time.perf_counter()
    _, ids = vi.index.search(q, min(vi.n, k + (query_ids is not None)))
    secs = time.perf_counter() - t
    return recall_from_ids(drop_self(ids, query_ids, k), truth), secs


def _candidate_grids(vi: Any, k: int) -> list[list[dict[str, Any]]]:
    """Search settings to try, as grids ordered from cheapest to most expensive."""
    if vi.index_type == "hnsw":
        return [[{"efSearch": max(k, e)} for e in (16, 32, 64, 128, 256, 512, 1024)]]
    nlist = int(vi.params["nlist"])
    probes = sorted({min(nlist, 1 << i) for i in range(0, int(math.log2(nlist)) + 2)})
    kfs = (
        [1, 2, 4, 8, 16, 32]
        if vi.index_type == "ivfpq" and "refine" in index_parts(vi.index)
        else [None]
    )
    return [[{"nprobe": p} | ({"k_factor": kf} if kf else {}) for p in probes] for kf in kfs]


def tune(
    vi: Any,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float = DEFAULT_TARGET_RECALL,
    k: int = 10,
    query_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """Pick the cheapest search parameters whose recall@k on ``queries`` reaches ``target``.

    ``vi`` is a :class:`~saescope.core.index.VectorIndex`. ``queries`` are prepared (normalised)
    vectors, ``truth`` their exact top-k ids (without the query itself when ``query_ids`` says
    which stored vector each query is). The grid is doubling ``nprobe`` (IVF), ``efSearch``
    (HNSW), and for ``ivfpq`` the re-ranking ``k_factor`` too; among the settings that reach the
    target the fastest (measured) wins. When none does, the best recall is kept and ``reached``
    is false.
    """
    k = min(k, vi.n)
    best: tuple[float, float, dict] | None = None  # (seconds, -recall, params) among those reaching
    fallback: tuple[float, dict] = (-1.0, {})
    tried = []
    for grid in _candidate_grids(vi, k):  # each grid is ordered from cheapest to most expensive
        prev = -1.0
        for step, p in enumerate(grid):
            apply_search_params(vi.index, p)
            rec, secs = _timed_recall(vi, queries, truth, k, query_ids)
            tried.append(
                {**p, "recall": round(rec, 4), "ms_per_query": round(1e3 * secs / len(queries), 4)}
            )
            if rec > fallback[0]:
                fallback = (rec, p)
            if rec >= target:
                if best is None or secs < best[0]:
                    best = (secs, -rec, p)
                break
            if step >= 2 and rec <= prev + 1e-4:
                break  # saturated: scanning more cells cannot fix what the codes lose
            prev = rec
    chosen = best[2] if best else fallback[1]
    recall = -best[1] if best else fallback[0]
    vi.params.update(chosen)
    apply_search_params(vi.index, vi.params)
    return {
        "target_recall": target,
        "recall_at_k": round(recall, 4),
        "k": k,
        "queries": len(queries),
        "reached": best is not None,
        "chosen": chosen,
        "grid": tried,
    }


def recall_at_k(index: Any, exact_index: Any, queries: Any, k: int = 10) -> float:
    """Recall@k of ``index`` against ``exact_index`` (normally a ``flat`` one) on ``queries``.

    Both are :class:`~saescope.core.index.VectorIndex` objects.
    """
    _, truth = exact_index.search(queries, k)
    _, found = index.search(queries, k)
    return recall_from_ids(found, truth)


__all__ = ["recall_from_ids", "drop_self", "tune", "recall_at_k"]
