"""Write one benchmark's section of ``bench/RESULTS.md`` (between markers) and its raw JSON.

Why in the library: pipeline steps (``ood-eval``, ``steer-eval`` with ``--results-md``) publish
their tables there too, and the library must not import the ``bench`` scripts, which sit on top
of it. The scripts in ``bench/`` use this same writer.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"  # the checkout's bench/ folder
RESULTS_MD = BENCH_DIR / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\nEach section is written by the script named in it; "
    "rerun it to refresh.\n"
)


def machine() -> str:
    """The CPU, core count and torch threads, printed under every measured table."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )


def write_section(name: str, markdown: str, data: dict) -> Path:
    """Replace the ``name`` section of RESULTS.md and write ``results/<name>.json``."""
    (BENCH_DIR / "results").mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    data = {**data, "machine": machine(), "date": stamp}
    (BENCH_DIR / "results" / f"{name}.json").write_text(json.dumps(data, indent=2))
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = f"{start}\n{markdown.strip()}\n\n_{machine()}; measured {stamp}._\n{end}"
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else HEADER
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    RESULTS_MD.write_text(text)
    return RESULTS_MD


__all__ = ["BENCH_DIR", "RESULTS_MD", "HEADER", "machine", "write_section"]
