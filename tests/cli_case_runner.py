"""Run many ``saescope`` command lines as separate processes without paying the start-up each time.

``tests/test_cli_bad_input.py`` checks dozens of bad command lines; a fresh interpreter costs
2-7 s here (torch, transformers), so this script imports the command line once and then, for each
case, forks a child that is exactly what the ``saescope`` console script is: ``sys.exit(main())``
with that ``argv``, its stdout and stderr in files, an exception that escapes ``main`` printed
as a traceback with exit status 1 (what the interpreter does). Usage::

    python tests/cli_case_runner.py CASES.json RESULTS.json

CASES.json is ``{"preload": [module, ...], "cases": [{"id": ..., "argv": [...]}, ...]}``: the
parent imports the ``preload`` modules (which the steps would import anyway, later) so that each
child does not; RESULTS.json gets, per case, ``id``, ``code``, ``stdout``, ``stderr`` and
``seconds``. A case that runs past ``--timeout`` seconds is killed (code -9), so a hang is a
failure, not a stuck test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _child(argv: list[str], out: Path, err: Path) -> None:
    """The console script, in the forked child; never returns."""
    code: int = 1
    try:
        for fd, path in ((1, out), (2, err)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.argv = ["saescope", *argv]
        from saescope.train.__main__ import main

        code = int(main(argv) or 0)
    except SystemExit as exc:  # argparse errors, sys.exit(...)
        if exc.code is None or isinstance(exc.code, int):
            code = int(exc.code or 0)
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_case(argv: list[str], timeout: float, scratch: Path) -> dict:
    """Fork, run ``saescope argv`` in the child, wait at most ``timeout`` seconds."""
    out, err = scratch / "stdout", scratch / "stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(argv, out, err)
    code = None
    while code is None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
        elif time.perf_counter() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = -9
        else:
            time.sleep(0.02)
    return {
        "code": code,
        "stdout": out.read_text(errors="replace") if out.exists() else "",
        "stderr": err.read_text(errors="replace") if err.exists() else "",
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cases")
    p.add_argument("results")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    spec = json.loads(Path(args.cases).read_text())
    from saescope.train.__main__ import build_parser

    build_parser()  # import every step module once, before the first fork
    for module in spec.get("preload", []):
        importlib.import_module(module)
    results = []
    with tempfile.TemporaryDirectory(prefix="cli-cases-") as tmp:
        for case in spec["cases"]:
            results.append({"id": case["id"], **run_case(case["argv"], args.timeout, Path(tmp))})
    Path(args.results).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
