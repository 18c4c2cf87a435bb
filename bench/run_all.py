"""Run every benchmark in turn; each rewrites its own section of bench/RESULTS.md.

    python -m bench.run_all [--quick]

``--quick`` skips the two long ones (SAE quality on 512k tokens, about 15 min on a quiet 2-core
machine; FAISS at 1M vectors, about 6 min and 8 GiB of memory).
"""

from __future__ import annotations

import argparse
import importlib
import time

FAST = ["train_speed", "extract_speed", "exemplar_speed", "default_bundle", "app_latency"]
LONG = ["faiss_search", "quality"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="skip the long benchmarks")
    args = p.parse_args(argv)
    for name in FAST + ([] if args.quick else LONG):
        print(f"==> bench.{name}", flush=True)
        t = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        module.main([])
        print(f"<== bench.{name} ({time.perf_counter() - t:.0f} s)", flush=True)
    print("results: bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
