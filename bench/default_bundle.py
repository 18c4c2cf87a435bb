"""Time to build the offline default bundles from nothing, and to start on them once cached.

    python -m bench.default_bundle

Runs ``saescope default-bundle`` in a fresh, empty ``SAESCOPE_CACHE`` (so the ONNX model
conversion, extraction, two SAE trainings, exemplars, indices, thumbnails and cross-layer
matches are all included), then a second process that loads the cached bundle with full
checksum verification plus the backbone and head, as an app start does. Targets: build under
5 minutes, second start under 10 s, on this 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import write_section

ROOT = Path(__file__).resolve().parents[1]
LOAD = (
    "from saescope.train.default_bundle import ensure_default_bundle\n"
    "from saescope.core.bundle import Bundle\n"
    "b = Bundle.load(ensure_default_bundle())\n"
    "b.sae; b.exemplars; b.thumbnails; b.backbone; b.head\n"
)


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(
        cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    del argv  # no options
    cache = Path(tempfile.mkdtemp(prefix="saescope_cache_"))
    env = {
        **os.environ,
        "SAESCOPE_CACHE": str(cache),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    try:
        build = timed([sys.executable, "-m", "saescope.train", "default-bundle"], env)
        starts = [timed([sys.executable, "-c", LOAD], env) for _ in range(3)]
        size = sum(
            p.stat().st_size
            for p in (cache / "bundles").rglob("*")
            if p.is_file() and "dinov2-s-saliency-l" in str(p)
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    start = sorted(starts)[1]
    print(f"build from an empty cache: {build:.0f} s; cached start (median of 3): {start:.1f} s")
    md = [
        "## Offline default bundles (`python -m bench.default_bundle`)\n",
        "`saescope default-bundle` in an empty cache: ONNX conversion of the offline "
        "DINOv2-S, extraction of layers 6 and 10 over 420 packaged photos and digits, two TopK "
        "SAEs (8x, k=32, 3 epochs), exemplars, FAISS indices, thumbnails, cross-layer matches.\n",
        "| measurement | seconds | target |",
        "|---|---|---|",
        f"| build from an empty cache | **{build:.0f}** | < 300 |",
        "| second start: load + verify bundle, SAE, exemplars, model, head "
        f"(new process, median of 3) | "
        f"**{start:.1f}** | < 10 |",
        f"\nBoth bundles together: {size / 1e6:.0f} MB on disk.",
    ]
    data = {"build_s": build, "start_s": starts, "bytes": size}
    write_section("default_bundle", "\n".join(md), data)
    return data


if __name__ == "__main__":
    main()
