"""Write one benchmark's section of bench/RESULTS.md (between markers) and its raw JSON.

The writer lives in the library (:mod:`saescope.train.results_md`), which pipeline steps use
too; the bench scripts import it from here.
"""

from __future__ import annotations

from saescope.train.results_md import BENCH_DIR, HEADER, RESULTS_MD, machine, write_section

__all__ = ["BENCH_DIR", "HEADER", "RESULTS_MD", "machine", "write_section"]
