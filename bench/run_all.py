"""Run every benchmark in turn; each rewrites its own section of bench/RESULTS.md.

    python -m bench.run_all [--quick]

``--quick`` skips the long ones (SAE quality on 512k tokens, about 15 min on a quiet 2-core
machine; FAISS at 1M vectors, about 6 min and 8 GiB of memory; the ontology and OOD runs, which
extract and fit on the real offline model, about 5-8 min each).

The evaluations that are ``saescope`` steps (steer-eval, ood-eval) run as those steps with
``--results-md``, so the table in RESULTS.md is exactly what the command prints.
"""

from __future__ import annotations

import argparse
import importlib
import time

FAST = [
    "train_speed",
    "extract_speed",
    "exemplar_speed",
    "default_bundle",
    "app_latency",
    "steer_apps",
    "diffusion_steer",
]
LONG = ["faiss_search", "quality", "ontology"]
STEPS_FAST = [
    ["steer-eval", "--max-images", "50"],
    ["steer-eval", "--head", "digit-scenes", "--max-images", "40"],
]
STEPS_LONG = [
    [
        "ood-eval",
        "--model",
        "offline:dinov2-s-saliency",
        "--layer",
        "10",
        "--in",
        "builtin:digits",
        "builtin:fashion-mnist",
        "--out",
        "builtin:lfw",
        "builtin:photos",
        "--n-train",
        "400",
        "--n-test",
        "200",
    ]
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="skip the long benchmarks")
    args = p.parse_args(argv)
    for name in FAST + ([] if args.quick else LONG):
        print(f"==> bench.{name}", flush=True)
        t = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        module.main([])
        print(f"<== bench.{name} ({time.perf_counter() - t:.0f} s)", flush=True)
    from saescope.train.__main__ import main as train_main

    for step in STEPS_FAST + ([] if args.quick else STEPS_LONG):
        print(f"==> saescope {' '.join(step)} --results-md", flush=True)
        t = time.perf_counter()
        if train_main([*step, "--results-md"]) != 0:
            raise SystemExit(f"saescope {' '.join(step)} failed")
        print(f"<== {step[0]} ({time.perf_counter() - t:.0f} s)", flush=True)
    print("results: bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
