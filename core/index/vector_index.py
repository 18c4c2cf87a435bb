"""The index itself: :class:`VectorIndex` (build, search, save, load) and its streaming
:class:`IndexBuilder`.

Why together: ``VectorIndex.build`` is a thin wrapper over the builder, and the builder makes and
fills a ``VectorIndex``; apart they would import each other.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from saescope import __version__
from saescope.core import formats
from saescope.core.index.files import read_index, write_index
from saescope.core.index.params import (
    DEFAULT_TARGET_RECALL,
    MEMORY_BUDGET,
    METRICS,
    SMALL_BATCH,
    TRAIN_PER_CENTROID,
    TUNE_QUERIES,
    apply_search_params,
    choose_index_type,
    default_params,
    factory_string,
    index_parts,
    set_seed,
)
from saescope.core.index.threads import set_threads, single_thread
from saescope.core.index.tuning import drop_self, tune
from saescope.core.index.vectors import as_f32, l2_normalize


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
    def empty(
        cls,
        d: int,
        n_expected: int,
        metric: str = "cosine",
        index_type: str = "auto",
        params: dict[str, Any] | None = None,
        kind: str = "vectors",
        memory_budget: int = MEMORY_BUDGET,
        meta: dict[str, Any] | None = None,
    ) -> VectorIndex:
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
            index_parts(index)["hnsw"].hnsw.efConstruction = int(p["efConstruction"])
        apply_search_params(index, p)
        return cls(
            index=index,
            metric=metric,
            index_type=index_type,
            params=p,
            kind=kind,
            meta=dict(meta or {}),
        )

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (
            f"<VectorIndex {self.kind}: {self.n} x {self.d} {self.metric}, {self.index_type} "
            f"{self.params}>"
        )

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def prepare(self, x: Any, what: str = "vectors") -> np.ndarray:
        """Vectors as the index stores them (float32, unit length for ``cosine``)."""
        x = as_f32(x, self.d, what)
        return l2_normalize(x) if self.metric == "cosine" else x

    def train(self, sample: Any, seed: int = 0) -> None:
        """Train the coarse quantiser / PQ codebooks on a sample of the data (no-op for
        flat/hnsw)."""
        if self.index.is_trained:
            return
        x = self.prepare(sample, "training sample")
        if "nlist" in self.params and len(x) < self.params["nlist"]:
            raise ValueError(
                f"{len(x)} training vectors for {self.params['nlist']} IVF cells: "
                "give a larger sample or a smaller nlist"
            )
        set_seed(self.index, seed)
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
    def build(
        cls,
        vectors: Any,
        ids: Any = None,
        metric: str = "cosine",
        index_type: str = "auto",
        params: dict[str, Any] | None = None,
        kind: str = "vectors",
        target_recall: float = DEFAULT_TARGET_RECALL,
        tune: bool = True,
        seed: int = 0,
        threads: int | None = None,
        memory_budget: int = MEMORY_BUDGET,
        meta: dict[str, Any] | None = None,
    ) -> VectorIndex:
        """Build (train on a random sample, add everything, tune) from in-memory ``vectors``.

        ``ids`` default to ``0..N-1``. For data that does not fit in memory use
        :class:`IndexBuilder`, which this wraps.
        """
        x = as_f32(vectors)
        ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        rng = np.random.default_rng(seed)
        builder = IndexBuilder(
            x.shape[1],
            len(x),
            metric=metric,
            index_type=index_type,
            params=params,
            kind=kind,
            target_recall=target_recall,
            tune=tune,
            seed=seed,
            threads=threads,
            memory_budget=memory_budget,
            meta=meta,
        )
        n_sample = min(len(x), builder.sample_size)
        rows = np.sort(rng.choice(len(x), n_sample, replace=False))
        sample, sample_ids = x[rows], ids[rows]
        builder.train(sample, sample_ids)
        for a in range(0, len(x), 1 << 16):
            builder.add(x[a : a + (1 << 16)], ids[a : a + (1 << 16)])
        return builder.finish()

    # ------------------------------------------------------------------ searching
    def set_search_params(self, **params: Any) -> None:
        """Override search-time parameters (``nprobe``, ``efSearch``, ``k_factor``)."""
        unknown = set(params) - {"nprobe", "efSearch", "k_factor"}
        if unknown:
            raise ValueError(f"unknown search parameters {sorted(unknown)}")
        self.params.update(params)
        apply_search_params(self.index, params)

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
        """The JSON sidecar that describes (and vouches for) the saved index file."""
        return {
            **formats.VECTOR_INDEX.header(),
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
        return write_index(self.index, path, self.sidecar)

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> VectorIndex:
        """Read an index saved by :meth:`save`, checking size and (``verify``) sha256 first."""
        index, info = read_index(path, verify)
        out = cls(
            index=index,
            metric=info["metric"],
            index_type=info["index_type"],
            params=dict(info.get("params", {})),
            kind=info.get("kind", "vectors"),
            meta=dict(info.get("meta", {})),
            tuning=dict(info.get("tuning", {})),
        )
        apply_search_params(index, out.params)
        return out

    def nbytes(self) -> int:
        """Size of the serialised index (what it takes in memory, to within a few percent)."""
        return int(faiss.serialize_index(self.index).nbytes)


class _ExactTopK:
    """Running exact top-k of a few tuning queries, merged batch by batch while vectors are added.

    With ``query_ids`` (the queries are vectors of the data) each query's own id is left out of
    its neighbours: a query that finds itself would flatter the recall of every index.
    """

    def __init__(
        self, queries: np.ndarray, k: int, metric: str, query_ids: np.ndarray | None = None
    ):
        self.q, self.k, self.metric, self.qids = queries, k, metric, query_ids
        self.keep = k + (query_ids is not None)
        self.heap = faiss.ResultHeap(len(queries), self.keep, keep_max=metric != "l2")

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        if not len(x):
            return
        k = min(self.keep, len(x))
        fm = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        dist, pos = faiss.knn(self.q, x, k, metric=fm)
        self.heap.add_result(
            np.ascontiguousarray(dist, np.float32),
            np.ascontiguousarray(np.where(pos >= 0, ids[pos], -1), np.int64),
        )

    def result(self) -> np.ndarray:
        self.heap.finalize()
        return drop_self(self.heap.I, self.qids, self.k)


class IndexBuilder:
    """Streaming construction: ``train(sample)``, ``add(batch, ids)`` any number of times,
    ``finish()``.

    Why streaming: a patch index over a store can exceed memory as float32. Tuning needs exact
    neighbours of some queries; they are taken from the training sample and their exact top-k is
    kept up to date as batches are added, so no second pass over the data is needed. Every vector
    of the sample must also be passed to :meth:`add` (the sample is a subset of the data).
    """

    def __init__(
        self,
        d: int,
        n_expected: int,
        metric: str = "cosine",
        index_type: str = "auto",
        params: dict[str, Any] | None = None,
        kind: str = "vectors",
        target_recall: float = DEFAULT_TARGET_RECALL,
        tune: bool = True,
        k: int = 10,
        seed: int = 0,
        threads: int | None = None,
        memory_budget: int = MEMORY_BUDGET,
        meta: dict[str, Any] | None = None,
    ):
        self.threads = set_threads(threads)
        self.vi = VectorIndex.empty(
            d, n_expected, metric, index_type, params, kind, memory_budget, meta
        )
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
        x = as_f32(sample, self.vi.d, "training sample")
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
        """Add a batch of the data (tuning queries are held back until :meth:`finish`)."""
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
            vi.tuning.update(
                tune(
                    vi, self._exact.q, truth, self.target_recall, self.k, query_ids=self._exact.qids
                )
            )
            vi.tuning["held_out_queries"] = self._exact.qids is not None
        elif vi.index_type == "flat":
            vi.tuning.update({"recall_at_k": 1.0, "k": self.k, "exact": True})
        for x, ids in self._held:
            vi.add(x, ids)
        self._held = []
        vi.tuning["build_seconds"] = round(time.perf_counter() - self._t0, 3)
        return vi


__all__ = ["VectorIndex", "IndexBuilder"]
