"""How many OpenMP threads faiss uses, globally and for one block of single queries.

Why: faiss otherwise takes every core of the host, which on a shared machine oversubscribes;
single-query latency does not improve with threads, batch search and training do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import faiss


def set_threads(n: int | None = None) -> int:
    """Set faiss's OpenMP threads (default: the CPUs this process may use, at most 8)."""
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


__all__ = ["set_threads", "single_thread"]
