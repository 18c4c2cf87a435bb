"""Give a served app's freed memory back to the system once a burst of visitors is over.

Why: a burst of requests allocates and frees many large buffers (decoded uploads, activations,
rendered and encoded pictures) across Gradio's worker threads. glibc's allocator keeps most of
that freed memory in its per-thread heaps, so the server's resident size stays near its peak
long after the burst (measured: +90 MB of +150 MB after 50 visitors on the tiny test bundle).
``malloc_trim(0)`` returns the free pages; :data:`IDLE_TRIM` runs it (after a garbage
collection) once no model work has been done for :data:`IDLE_SECONDS`, so it never competes with
a request. Off where the C library has no ``malloc_trim`` (macOS, musl): nothing happens there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Callable

IDLE_SECONDS = 1.5  # quiet time after the last request before memory is handed back
MAX_ARENAS = 2  # glibc heaps shared by all threads (its default: 8 per core, one per thread)
_M_ARENA_MAX = -8  # mallopt parameter number (malloc.h)


def _libc_function(name: str):
    """A function of glibc, or ``None`` where the C library has none by that name."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where there is none."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def limit_arenas(n: int = MAX_ARENAS) -> bool:
    """Let at most ``n`` glibc heaps serve all threads (unless ``MALLOC_ARENA_MAX`` says
    otherwise); returns whether the limit is set.

    Why: Gradio serves requests from a pool of up to 40 threads, and glibc gives each thread its
    own heap (up to 8 per core). Memory freed in one heap cannot serve another thread, so a burst
    leaves many half-empty heaps behind; measured on 50 visitors, two heaps keep about 30 MB
    less. The Python interpreter lock serialises most allocation anyway, so sharing costs
    nothing measurable. Call it before the server starts its threads (heaps already made stay).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, int(n)))


class IdleTrim:
    """Trims the heap once, ``delay`` seconds after the last :meth:`touch` (a debounce).

    One daemon thread, started on the first touch, sleeps until woken; a touch costs a clock read
    and an ``Event.set``.
    """

    def __init__(self, delay: float = IDLE_SECONDS, trim: Callable[[int], int] | None = None):
        self.delay = delay
        self._trim = trim if trim is not None else _malloc_trim()
        self._last = 0.0
        self._wake = threading.Event()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None
        self.trims = 0  # how many times memory was handed back (for tests)

    @property
    def available(self) -> bool:
        return self._trim is not None

    def touch(self) -> None:
        """Note that work was just done: trim once it has been quiet for ``delay`` s."""
        if self._trim is None:
            return
        self._last = time.monotonic()
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="saescope-idle-trim", daemon=True
                    )
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            while True:  # until quiet: touches meanwhile only move ``_last``
                while (left := self._last + self.delay - time.monotonic()) > 0:
                    time.sleep(left)
                self._wake.clear()
                if self._last + self.delay <= time.monotonic():  # none slipped in
                    break
            gc.collect()
            self._trim(0)
            self.trims += 1


IDLE_TRIM = IdleTrim()  # one per process: the heap is shared by every app it serves


def touch() -> None:
    """Called after model work: hand freed memory back once the server is idle."""
    IDLE_TRIM.touch()


__all__ = ["IDLE_SECONDS", "IDLE_TRIM", "MAX_ARENAS", "IdleTrim", "limit_arenas", "touch"]
