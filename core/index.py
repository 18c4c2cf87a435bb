"""Nearest-neighbour search over float32 vectors: a small, self-checking wrapper over faiss.

Why a wrapper: the apps search three kinds of vectors (dataset patches, decoder directions, and
whatever a bundle adds later), at sizes from a few thousand to millions. Picking and tuning a faiss
index for each size, carrying int64 ids, and reloading it safely from a downloaded bundle should
happen in one place. Every index built here is tuned so that recall@10 against exact search meets a
target (0.98 on held-out queries by default, a margin that keeps fresh queries above 0.95:
at 1M vectors a tuned 0.97 measured 0.96 on fresh queries).

Index types (``index_type``):

- ``flat``   exact search (``IndexFlatIP``/``IndexFlatL2``); the default up to 50k vectors,
             where a full scan is already below a millisecond or two;
- ``ivf``    IVF-Flat: k-means cells, only ``nprobe`` of them scanned. Full-precision vectors, so
             the memory equals ``flat``; the default while that is below ``memory_budget`` (2 GiB,
             about 1.4M vectors of width 384). Builds in seconds, unlike HNSW;
- ``hnsw``   HNSW graph over full vectors (``efSearch`` tuned); opt-in: fastest queries but a build
             that is minutes at 1M vectors on two cores;
- ``ivfpq``  IVF with 4-bit fast-scan product quantisation, re-ranked with 8-bit scalar-quantised
             vectors (``k_factor`` x k candidates; 16-bit below width 128): about ``d/8 + d + 8``
             bytes a vector, 3.5x less than ``flat`` at d=384; the default beyond
             ``memory_budget``. ``refine="none"`` drops the re-ranking codes (``d/8 + 8`` bytes a
             vector), but PQ alone cannot reach recall@10 of 0.95 on realistic data.

On disk an index is two files: ``NAME`` (``faiss.write_index``, never pickle) and ``NAME.json``, a
sidecar with the format version, kind, metric, sizes, index type and parameters, the tuned recall,
free-form metadata and the sha256 of the index file; :meth:`VectorIndex.load` verifies it and raises
:class:`IndexFileError` on any mismatch.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

from saescope import __version__

FORMAT = "saescope.vector_index"
FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
METRICS = ("cosine", "ip", "l2")
FLAT_MAX = 50_000  # auto: exact search up to this many vectors
MEMORY_BUDGET = 2 << 30  # auto: full-precision vectors (ivf) while n * d * 4 stays below this
DEFAULT_TARGET_RECALL = 0.98
TUNE_QUERIES = 512
SMALL_BATCH = 16  # searches of fewer queries run single-threaded (see single_thread)
TRAIN_PER_CENTROID = 64  # k-means training points per IVF cell (faiss warns below 39)


class IndexFileError(ValueError):
    """A saved index that is missing, truncated, modified, or not an index of this format."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of index file ``path`` (``NAME`` -> ``NAME.json``)."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def set_threads(n: int | None = None) -> int:
    """Set faiss's OpenMP threads (default: the CPUs this process may use, at most 8).

    Why: faiss otherwise takes every core of the host, which on a shared machine oversubscribes;
    single-query latency does not improve with threads, batch search and training do.
    """
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n = os.cpu_count() or 1
        n = min(n, 8)
    n = max(1, int(n))
    faiss.omp_set_num_threads(n)
    return n


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run faiss on one OpenMP thread within the block (the setting is per calling thread).

    Why: a single query has no parallel work, but with several OpenMP threads it still waits at a
    barrier for all of them; on a loaded machine that wait is a scheduler slice (measured here:
    flat search over 100k vectors, p50 92 ms with 2 threads vs 16 ms with 1).
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_f32(x: Any, d: int | None = None, what: str = "vectors") -> np.ndarray:
    """Array-like (numpy or torch) -> C-contiguous float32 ``[N, d]``."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{what} must be [N, d], got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{what} have width {x.shape[1]}, the index holds width {d}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(x)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, eps), dtype=np.float32)


def choose_index_type(n: int, d: int, memory_budget: int = MEMORY_BUDGET) -> str:
    """The automatic choice for ``n`` vectors of width ``d`` (see the module docstring)."""
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


def _parts(index: faiss.Index) -> dict[str, Any]:
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


def _apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    parts = _parts(index)
    if "nprobe" in params and "ivf" in parts:
        parts["ivf"].nprobe = int(params["nprobe"])
    if "efSearch" in params and "hnsw" in parts:
        parts["hnsw"].hnsw.efSearch = int(params["efSearch"])
    if "k_factor" in params and "refine" in parts:
        parts["refine"].k_factor = float(params["k_factor"])


def _file_sha256(path: Path, block: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(block):
            sha.update(chunk)
    return sha.hexdigest()


def recall_from_ids(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ignoring -1) that appears in the row of ``found``."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        total += len(t)
        hits += len(np.intersect1d(f[f >= 0], t))
    return hits / total if total else 1.0


@dataclass
class VectorIndex:
    """A faiss index with int64 ids, a metric, its (tuned) parameters and free-form metadata.

    ``search`` returns similarities for ``cosine``/``ip`` (descending) and squared L2 distances for
    ``l2`` (ascending); id -1 marks a slot with no result (only when an approximate index found
    fewer than k). ``k`` is clamped to the number of stored vectors.
    """

    index: faiss.Index
    metric: str
    index_type: str
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "vectors"
    meta: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ building
    @classmethod
    def empty(cls, d: int, n_expected: int, metric: str = "cosine", index_type: str = "auto",
              params: dict[str, Any] | None = None, kind: str = "vectors",
              memory_budget: int = MEMORY_BUDGET, meta: dict[str, Any] | None = None
              ) -> "VectorIndex":
        """An untrained, empty index sized for about ``n_expected`` vectors of width ``d``."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: use one of {METRICS}")
        if d <= 0:
            raise ValueError(f"vector width must be positive, got {d}")
        if index_type == "auto":
            index_type = choose_index_type(n_expected, d, memory_budget)
        p = {**default_params(index_type, max(1, n_expected), d), **(params or {})}
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(d, factory_string(index_type, p), faiss_metric)
        if index_type == "hnsw":
            _parts(index)["hnsw"].hnsw.efConstruction = int(p["efConstruction"])
        _apply_search_params(index, p)
        return cls(index=index, metric=metric, index_type=index_type, params=p, kind=kind,
                   meta=dict(meta or {}))

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"<VectorIndex {self.kind}: {self.n} x {self.d} {self.metric}, {self.index_type} "
                f"{self.params}>")

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def prepare(self, x: Any, what: str = "vectors") -> np.ndarray:
        """Vectors as the index stores them (float32, unit length for ``cosine``)."""
        x = _as_f32(x, self.d, what)
        return l2_normalize(x) if self.metric == "cosine" else x

    def train(self, sample: Any, seed: int = 0) -> None:
        """Train the coarse quantiser / PQ codebooks on a sample of the data (no-op for flat/hnsw)."""
        if self.index.is_trained:
            return
        x = self.prepare(sample, "training sample")
        if "nlist" in self.params and len(x) < self.params["nlist"]:
            raise ValueError(f"{len(x)} training vectors for {self.params['nlist']} IVF cells: "
                             "give a larger sample or a smaller nlist")
        _set_seed(self.index, seed)
        self.index.train(x)

    def add(self, vectors: Any, ids: Any) -> None:
        """Add vectors with their int64 ids (train first for ivf/ivfpq)."""
        x = self.prepare(vectors)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(ids)} ids")
        if not self.index.is_trained:
            raise ValueError(f"this {self.index_type} index must be trained before adding vectors")
        self.index.add_with_ids(x, ids)

    @classmethod
    def build(cls, vectors: Any, ids: Any = None, metric: str = "cosine", index_type: str = "auto",
              params: dict[str, Any] | None = None, kind: str = "vectors",
              target_recall: float = DEFAULT_TARGET_RECALL, tune: bool = True, seed: int = 0,
              threads: int | None = None, memory_budget: int = MEMORY_BUDGET,
              meta: dict[str, Any] | None = None) -> "VectorIndex":
        """Build (train on a random sample, add everything, tune) from in-memory ``vectors``.

        ``ids`` default to ``0..N-1``. For data that does not fit in memory use
        :class:`IndexBuilder`, which this wraps.
        """
        x = _as_f32(vectors)
        ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        rng = np.random.default_rng(seed)
        builder = IndexBuilder(x.shape[1], len(x), metric=metric, index_type=index_type,
                               params=params, kind=kind, target_recall=target_recall, tune=tune,
                               seed=seed, threads=threads, memory_budget=memory_budget, meta=meta)
        n_sample = min(len(x), builder.sample_size)
        rows = np.sort(rng.choice(len(x), n_sample, replace=False))
        sample, sample_ids = x[rows], ids[rows]
        builder.train(sample, sample_ids)
        for a in range(0, len(x), 1 << 16):
            builder.add(x[a:a + (1 << 16)], ids[a:a + (1 << 16)])
        return builder.finish()

    # ------------------------------------------------------------------ searching
    def set_search_params(self, **params: Any) -> None:
        """Override search-time parameters (``nprobe``, ``efSearch``, ``k_factor``)."""
        unknown = set(params) - {"nprobe", "efSearch", "k_factor"}
        if unknown:
            raise ValueError(f"unknown search parameters {sorted(unknown)}")
        self.params.update(params)
        _apply_search_params(self.index, params)

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``queries [Q, d]`` -> ``(scores [Q, k'], ids [Q, k'])`` with ``k' = min(k, n)``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self.prepare(queries, "queries")
        k = min(int(k), self.n)
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if len(q) < SMALL_BATCH:
            with single_thread():
                return self.index.search(q, k)
        return self.index.search(q, k)

    # ------------------------------------------------------------------ saving
    def sidecar(self, sha256: str, nbytes: int, filename: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "metric": self.metric,
            "d": self.d,
            "n": self.n,
            "index_type": self.index_type,
            "factory": factory_string(self.index_type, self.params),
            "params": self.params,
            "tuning": self.tuning,
            "meta": self.meta,
            "index_file": filename,
            "bytes": nbytes,
            "sha256": sha256,
            "library_version": __version__,
            "faiss_version": faiss.__version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` and its sidecar to ``path.json`` (each atomically)."""
        path = Path(path)
        if path.suffix == ".json":
            raise ValueError(f"{path}: an index file must not end in .json (the sidecar does)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("." + path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        info = self.sidecar(_file_sha256(tmp), tmp.stat().st_size, path.name)
        side = sidecar_path(path)
        tmp_side = side.with_name("." + side.name + ".tmp")
        tmp_side.write_text(json.dumps(info, indent=1))
        # index first, sidecar last: a crash in between leaves a sidecar whose hash fails (clear
        # error), never a sidecar that vouches for a half-written index
        os.replace(tmp, path)
        os.replace(tmp_side, side)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "VectorIndex":
        """Read an index saved by :meth:`save`, checking size and (``verify``) sha256 first."""
        path = Path(path)
        info = read_sidecar(path)
        if not path.is_file():
            raise IndexFileError(f"index file {path} is missing (its sidecar is there)")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise IndexFileError(f"index file {path} is truncated or changed: {size} bytes, the "
                                 f"sidecar records {info['bytes']}; rebuild or re-download it")
        if verify and _file_sha256(path) != info["sha256"]:
            raise IndexFileError(f"index file {path} fails its sha256 check (modified or "
                                 "corrupt); rebuild or re-download it")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise IndexFileError(f"faiss cannot read {path}: {str(err).splitlines()[0]}") from err
        if index.d != info["d"] or index.ntotal != info["n"]:
            raise IndexFileError(f"{path} holds {index.ntotal} x {index.d}, the sidecar says "
                                 f"{info['n']} x {info['d']}")
        out = cls(index=index, metric=info["metric"], index_type=info["index_type"],
                  params=dict(info.get("params", {})), kind=info.get("kind", "vectors"),
                  meta=dict(info.get("meta", {})), tuning=dict(info.get("tuning", {})))
        _apply_search_params(index, out.params)
        return out

    def nbytes(self) -> int:
        """Size of the serialised index (what it takes in memory, to within a few percent)."""
        return int(faiss.serialize_index(self.index).nbytes)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The validated sidecar of index file ``path``."""
    side = sidecar_path(path)
    if not side.is_file():
        raise IndexFileError(f"no index sidecar {side} (an index is saved as NAME + NAME.json)")
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise IndexFileError(f"index sidecar {side} is unreadable or corrupt ({err})") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IndexFileError(f"{side} is not a saescope vector-index sidecar")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFileError(f"{side}: index format version {version!r} is newer than this "
                             f"saescope reads ({FORMAT_VERSION}); upgrade saescope")
    missing = [k for k in ("metric", "d", "n", "index_type", "bytes", "sha256") if k not in info]
    if missing or info["metric"] not in METRICS or info["index_type"] not in INDEX_TYPES:
        raise IndexFileError(f"{side} lacks or has bad fields {missing or ['metric/index_type']}")
    return info


def _set_seed(index: faiss.Index, seed: int) -> None:
    """Make k-means deterministic for a given seed (faiss's default seed is fixed anyway)."""
    ivf = _parts(index).get("ivf")
    if ivf is not None:
        ivf.cp.seed = int(seed)
        ivf.cp.niter = 10  # cells only steer which vectors get scanned; tuning absorbs the rest


class _ExactTopK:
    """Running exact top-k of a few tuning queries, merged batch by batch while vectors are added.

    With ``query_ids`` (the queries are vectors of the data) each query's own id is left out of
    its neighbours: a query that finds itself would flatter the recall of every index.
    """

    def __init__(self, queries: np.ndarray, k: int, metric: str,
                 query_ids: np.ndarray | None = None):
        self.q, self.k, self.metric, self.qids = queries, k, metric, query_ids
        self.keep = k + (query_ids is not None)
        self.heap = faiss.ResultHeap(len(queries), self.keep, keep_max=metric != "l2")

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        if not len(x):
            return
        k = min(self.keep, len(x))
        fm = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        dist, pos = faiss.knn(self.q, x, k, metric=fm)
        self.heap.add_result(np.ascontiguousarray(dist, np.float32),
                             np.ascontiguousarray(np.where(pos >= 0, ids[pos], -1), np.int64))

    def result(self) -> np.ndarray:
        self.heap.finalize()
        return drop_self(self.heap.I, self.qids, self.k)


def drop_self(ids: np.ndarray, query_ids: np.ndarray | None, k: int) -> np.ndarray:
    """Rows of ``ids`` without each row's query id, cut (or padded with -1) to ``k`` columns."""
    if query_ids is None:
        return ids[:, :k]
    out = np.full((len(ids), k), -1, np.int64)
    for r, (row, qid) in enumerate(zip(ids, query_ids)):
        row = row[row != qid][:k]
        out[r, : len(row)] = row
    return out


class IndexBuilder:
    """Streaming construction: ``train(sample)``, ``add(batch, ids)`` any number of times, ``finish()``.

    Why streaming: a patch index over a store can exceed memory as float32. Tuning needs exact
    neighbours of some queries; they are taken from the training sample and their exact top-k is
    kept up to date as batches are added, so no second pass over the data is needed. Every vector
    of the sample must also be passed to :meth:`add` (the sample is a subset of the data).
    """

    def __init__(self, d: int, n_expected: int, metric: str = "cosine", index_type: str = "auto",
                 params: dict[str, Any] | None = None, kind: str = "vectors",
                 target_recall: float = DEFAULT_TARGET_RECALL, tune: bool = True, k: int = 10,
                 seed: int = 0, threads: int | None = None, memory_budget: int = MEMORY_BUDGET,
                 meta: dict[str, Any] | None = None):
        self.threads = set_threads(threads)
        self.vi = VectorIndex.empty(d, n_expected, metric, index_type, params, kind,
                                    memory_budget, meta)
        self.target_recall, self.do_tune, self.k, self.seed = target_recall, tune, k, seed
        self.n_expected = int(n_expected)
        self._exact: _ExactTopK | None = None
        self._held: list[tuple[np.ndarray, np.ndarray]] = []
        self._t0 = time.perf_counter()

    @property
    def sample_size(self) -> int:
        """How many vectors :meth:`train` wants (training points plus tuning queries)."""
        need = TRAIN_PER_CENTROID * self.vi.params.get("nlist", 0)
        if self.vi.index_type == "ivfpq":
            need = max(need, 16 * 64)  # 4-bit PQ codebooks: 16 centroids per sub-quantiser
        return max(need, TUNE_QUERIES) + TUNE_QUERIES

    def train(self, sample: Any, sample_ids: Any = None) -> None:
        """Train on ``sample`` (raw vectors from the data); keep some as tuning queries.

        Pass the ``sample_ids`` the sampled vectors will be added under: the tuning queries are
        then held out of the index (and of the exact neighbours) until tuning is done, so recall
        is measured as a fresh query sees it. Without ids a query finds itself, and HNSW in
        particular looks better than it is (its own graph links lead to its neighbours). The
        queries are also kept out of k-means, whose cells would otherwise centre on them (at 1M
        vectors that inflated the tuned recall from 0.965 on fresh queries to 0.98).
        """
        x = _as_f32(sample, self.vi.d, "training sample")
        rng = np.random.default_rng(self.seed)
        # at most a tenth of the data is held out, so that small indices tune on what they hold
        nq = max(1, min(TUNE_QUERIES, len(x), self.n_expected // 10))
        pick = rng.choice(len(x), nq, replace=False)
        qids = None if sample_ids is None else np.asarray(sample_ids, np.int64).reshape(-1)[pick]
        self._exact = _ExactTopK(self.vi.prepare(x[pick]), self.k, self.vi.metric, qids)
        if self.vi.needs_training:
            rest = np.delete(x, pick, axis=0)
            enough = len(rest) >= max(self.vi.params.get("nlist", 1), 16 * 39)
            self.vi.train(rest if enough else x, seed=self.seed)

    def add(self, vectors: Any, ids: Any) -> None:
        x = self.vi.prepare(vectors)
        ids = np.asarray(ids, np.int64).reshape(-1)
        if self._tuning:
            held = np.isin(ids, self._exact.qids) if self._exact.qids is not None else None
            if held is not None and held.any():  # tuning queries join the index after tuning
                self._held.append((x[held], ids[held]))
                x, ids = x[~held], ids[~held]
            self._exact.add(x, ids)
        self.vi.add(x, ids)

    @property
    def _tuning(self) -> bool:
        return self._exact is not None and self.do_tune and self.vi.index_type != "flat"

    def finish(self) -> VectorIndex:
        """Tune search parameters to the target recall; record build time and tuning results."""
        vi = self.vi
        vi.tuning = {"build_seconds": None, "threads": self.threads}
        if self._tuning and vi.n:
            truth = self._exact.result()
            vi.tuning.update(tune(vi, self._exact.q, truth, self.target_recall, self.k,
                                  query_ids=self._exact.qids))
            vi.tuning["held_out_queries"] = self._exact.qids is not None
        elif vi.index_type == "flat":
            vi.tuning.update({"recall_at_k": 1.0, "k": self.k, "exact": True})
        for x, ids in self._held:
            vi.add(x, ids)
        self._held = []
        vi.tuning["build_seconds"] = round(time.perf_counter() - self._t0, 3)
        return vi


def _timed_recall(vi: VectorIndex, q: np.ndarray, truth: np.ndarray, k: int,
                  query_ids: np.ndarray | None) -> tuple[float, float]:
    t = time.perf_counter()
    _, ids = vi.index.search(q, min(vi.n, k + (query_ids is not None)))
    secs = time.perf_counter() - t
    return recall_from_ids(drop_self(ids, query_ids, k), truth), secs


def tune(vi: VectorIndex, queries: np.ndarray, truth: np.ndarray,
         target: float = DEFAULT_TARGET_RECALL, k: int = 10,
         query_ids: np.ndarray | None = None) -> dict[str, Any]:
    """Pick the cheapest search parameters whose recall@k on ``queries`` reaches ``target``.

    ``queries`` are prepared (normalised) vectors, ``truth`` their exact top-k ids (without the
    query itself when ``query_ids`` says which stored vector each query is). The grid is
    doubling ``nprobe`` (IVF), ``efSearch`` (HNSW), and for ``ivfpq`` the re-ranking ``k_factor``
    too; among the settings that reach the target the fastest (measured) wins. When none does, the
    best recall is kept and ``reached`` is false.
    """
    k = min(k, vi.n)
    if vi.index_type == "hnsw":
        grids = [{"efSearch": max(k, e)} for e in (16, 32, 64, 128, 256, 512, 1024)]
        candidates = [grids]
    else:
        nlist = int(vi.params["nlist"])
        probes = sorted({min(nlist, 1 << i) for i in range(0, int(math.log2(nlist)) + 2)})
        kfs = [1, 2, 4, 8, 16, 32] if vi.index_type == "ivfpq" and "refine" in _parts(vi.index) \
            else [None]
        candidates = [[{"nprobe": p} | ({"k_factor": kf} if kf else {}) for p in probes]
                      for kf in kfs]
    best: tuple[float, float, dict] | None = None  # (seconds, -recall, params) among those reaching
    fallback: tuple[float, dict] = (-1.0, {})
    tried = []
    for grid in candidates:  # each grid is ordered from cheapest to most expensive
        prev = -1.0
        for step, p in enumerate(grid):
            _apply_search_params(vi.index, p)
            rec, secs = _timed_recall(vi, queries, truth, k, query_ids)
            tried.append({**p, "recall": round(rec, 4),
                          "ms_per_query": round(1e3 * secs / len(queries), 4)})
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
    _apply_search_params(vi.index, vi.params)
    return {"target_recall": target, "recall_at_k": round(recall, 4), "k": k,
            "queries": len(queries), "reached": best is not None, "chosen": chosen,
            "grid": tried}


def recall_at_k(index: VectorIndex, exact_index: VectorIndex, queries: Any, k: int = 10) -> float:
    """Recall@k of ``index`` against ``exact_index`` (normally a ``flat`` one) on ``queries``."""
    _, truth = exact_index.search(queries, k)
    _, found = index.search(queries, k)
    return recall_from_ids(found, truth)


def patch_id(image_index: Any, patch: Any, n_patches: int) -> Any:
    """The id scheme of patch indices: ``image_index * n_patches + patch``."""
    return np.asarray(image_index, np.int64) * int(n_patches) + np.asarray(patch, np.int64)


def split_patch_id(ids: Any, n_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`patch_id`: ``(image_index, patch)`` arrays."""
    return np.divmod(np.asarray(ids, np.int64), int(n_patches))


__all__ = ["VectorIndex", "IndexBuilder", "IndexFileError", "recall_at_k", "recall_from_ids",
           "choose_index_type", "default_params", "factory_string", "set_threads", "tune",
           "patch_id", "split_patch_id", "single_thread", "sidecar_path", "read_sidecar", "l2_normalize",
           "INDEX_TYPES", "METRICS", "FORMAT", "FORMAT_VERSION"]
