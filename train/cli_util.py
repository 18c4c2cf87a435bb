"""Helpers shared by the ``saescope`` steps: resolved-config printing and saving."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from saescope import __version__


def jsonable(value: Any) -> Any:
    """Best-effort conversion of argparse values to JSON (paths to str, tuples to lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):  # enums
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_config(args: argparse.Namespace) -> dict:
    """The step's arguments after defaults, as JSON-able dict (without the dispatch function)."""
    return {k: jsonable(v) for k, v in sorted(vars(args).items()) if k not in {"func"}}


def announce_config(args: argparse.Namespace, out_dir: str | os.PathLike | None,
                    filename: str | None = None) -> dict:
    """Print the resolved config and save it beside the outputs as ``<step>_config.json``.

    Why: a run must be reproducible from its folder alone, whatever defaults were in force.
    """
    cfg = resolved_config(args)
    cfg["saescope_version"] = __version__
    print(f"[{cfg.get('step', 'train')}] resolved config:", file=sys.stderr)
    print(json.dumps(cfg, indent=2), file=sys.stderr)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = filename or f"{cfg.get('step', 'run')}_config.json"
        tmp = out / (name + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, out / name)
    return cfg
