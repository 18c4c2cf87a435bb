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

Modules: :mod:`.params` (index choice and faiss parameters), :mod:`.vectors` (input checks, patch
ids), :mod:`.threads`, :mod:`.tuning` (recall and parameter tuning), :mod:`.files` (index file +
sidecar), :mod:`.vector_index` (:class:`VectorIndex`, :class:`IndexBuilder`).
"""

from saescope.core.index.files import (
    FORMAT,
    FORMAT_VERSION,
    IndexFileError,
    read_sidecar,
    sidecar_path,
)
from saescope.core.index.params import (
    DEFAULT_TARGET_RECALL,
    FLAT_MAX,
    INDEX_TYPES,
    MEMORY_BUDGET,
    METRICS,
    SMALL_BATCH,
    TRAIN_PER_CENTROID,
    TUNE_QUERIES,
    choose_index_type,
    default_params,
    factory_string,
)
from saescope.core.index.threads import set_threads, single_thread
from saescope.core.index.tuning import recall_at_k, recall_from_ids, tune
from saescope.core.index.vector_index import IndexBuilder, VectorIndex
from saescope.core.index.vectors import l2_normalize, patch_id, split_patch_id

__all__ = [
    "VectorIndex",
    "IndexBuilder",
    "IndexFileError",
    "recall_at_k",
    "recall_from_ids",
    "choose_index_type",
    "default_params",
    "factory_string",
    "set_threads",
    "tune",
    "patch_id",
    "split_patch_id",
    "single_thread",
    "sidecar_path",
    "read_sidecar",
    "l2_normalize",
    "INDEX_TYPES",
    "METRICS",
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_TARGET_RECALL",
    "FLAT_MAX",
    "MEMORY_BUDGET",
    "SMALL_BATCH",
    "TRAIN_PER_CENTROID",
    "TUNE_QUERIES",
]
