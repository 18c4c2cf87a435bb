"""Which faiss index to build for a data size, and how its parameters are read and set.

Why in one place: the automatic choice, the build-time parameters, the ``index_factory`` string
and the search-time knobs (``nprobe``, ``efSearch``, ``k_factor``) must agree with each other and
with what a saved sidecar records, or a reloaded index searches differently from the one built.
"""

from __future__ import annotations

import math
from typing import Any

import faiss

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
METRICS = ("cosine", "ip", "l2")
FLAT_MAX = 50_000  # auto: exact search up to this many vectors
MEMORY_BUDGET = 2 << 30  # auto: full-precision vectors (ivf) while n * d * 4 stays below this
DEFAULT_TARGET_RECALL = 0.98
TUNE_QUERIES = 512
SMALL_BATCH = 16  # searches of fewer queries run single-threaded (see threads.single_thread)
TRAIN_PER_CENTROID = 64  # k-means training points per IVF cell (faiss warns below 39)


def choose_index_type(n: int, d: int, memory_budget: int = MEMORY_BUDGET) -> str:
    """The automatic choice for ``n`` vectors of width ``d`` (see the package docstring)."""
    if n <= FLAT_MAX:
        return "flat"
    if n * d * 4 <= memory_budget:
        return "ivf"
    return "ivfpq"


def _pow2(x: float) -> int:
    return 1 << max(0, int(round(math.log2(max(1.0, x)))))


def default_params(index_type: str, n: int, d: int) -> dict[str, Any]:
    """Build-time parameters for ``index_type`` at size ``n`` (search parameters are tuned)."""
    if index_type == "flat":
        return {}
    if index_type == "hnsw":
        return {"M": 32, "efConstruction": 80, "efSearch": 64}
    # ~sqrt(n) cells (a power of 2), at least 39 training points each (or faiss complains).
    # Why not the usual 4-16 sqrt(n): on a 2-core machine k-means and assigning every vector to
    # its cell dominate the build, and both scale with nlist; queries stay well below 1 ms.
    nlist = max(1, min(_pow2(math.sqrt(n)), n // 39))
    if index_type == "ivf":
        return {"nlist": nlist, "nprobe": 8}
    if index_type == "ivfpq":
        # 4-bit fast-scan PQ: m sub-quantisers of width d/m; m even and dividing d, about d/4
        m = max((m for m in range(2, max(2, d // 4) + 1, 2) if d % m == 0), default=1)
        # re-ranking codes: 8-bit rounding errors average out in the inner products of wide
        # vectors but cap recall of narrow ones (measured at d=24: recall@10 stalls near 0.97)
        refine = "SQ8" if d >= 128 else "SQfp16"
        return {"nlist": nlist, "m": m, "nbits": 4, "refine": refine, "nprobe": 8, "k_factor": 4}
    raise ValueError(f"unknown index type {index_type!r}: use one of {INDEX_TYPES} or 'auto'")


def factory_string(index_type: str, params: dict[str, Any]) -> str:
    """The ``faiss.index_factory`` description (always wrapped in ``IDMap`` for int64 ids)."""
    if index_type == "flat":
        body = "Flat"
    elif index_type == "hnsw":
        body = f"HNSW{params['M']},Flat"
    elif index_type == "ivf":
        body = f"IVF{params['nlist']},Flat"
    elif index_type == "ivfpq":
        fs = "fs" if params.get("nbits", 4) == 4 and params["m"] % 2 == 0 else ""
        body = f"IVF{params['nlist']},PQ{params['m']}x{params.get('nbits', 4)}{fs}"
        if params.get("refine", "SQ8") not in (None, "none"):
            body += f",Refine({params['refine']})"
    else:
        raise ValueError(f"unknown index type {index_type!r}: use one of {INDEX_TYPES}")
    return "IDMap," + body


def index_parts(index: faiss.Index) -> dict[str, Any]:
    """The inner faiss objects whose search parameters we set (through IDMap / Refine wrappers)."""
    out: dict[str, Any] = {}
    idx = faiss.downcast_index(index)
    if isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        idx = faiss.downcast_index(idx.index)
    if isinstance(idx, faiss.IndexRefine):
        out["refine"] = idx
        idx = faiss.downcast_index(idx.base_index)
    if isinstance(idx, faiss.IndexHNSW):
        out["hnsw"] = idx
    ivf = faiss.try_extract_index_ivf(idx) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        out["ivf"] = ivf
    return out


def apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Set the search-time knobs in ``params`` on the faiss objects that have them."""
    parts = index_parts(index)
    if "nprobe" in params and "ivf" in parts:
        parts["ivf"].nprobe = int(params["nprobe"])
    if "efSearch" in params and "hnsw" in parts:
        parts["hnsw"].hnsw.efSearch = int(params["efSearch"])
    if "k_factor" in params and "refine" in parts:
        parts["refine"].k_factor = float(params["k_factor"])


def set_seed(index: faiss.Index, seed: int) -> None:
    """Make k-means deterministic for a given seed (faiss's default seed is fixed anyway)."""
    ivf = index_parts(index).get("ivf")
    if ivf is not None:
        ivf.cp.seed = int(seed)
        ivf.cp.niter = 10  # cells only steer which vectors get scanned; tuning absorbs the rest


__all__ = [
    "INDEX_TYPES",
    "METRICS",
    "FLAT_MAX",
    "MEMORY_BUDGET",
    "DEFAULT_TARGET_RECALL",
    "TUNE_QUERIES",
    "SMALL_BATCH",
    "TRAIN_PER_CENTROID",
    "choose_index_type",
    "default_params",
    "factory_string",
    "index_parts",
    "apply_search_params",
    "set_seed",
]
