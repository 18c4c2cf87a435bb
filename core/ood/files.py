"""An OOD suite on disk: ``ood.json`` (scorers, settings, thresholds) + ``ood.safetensors``
(their fitted arrays and calibration scores) + one FAISS index per k-NN scorer; never pickle.

Why apart from the suite: reading must refuse a file of another kind or of a newer saescope
before anything is rebuilt from it, and writing must never leave a half-written ``ood.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from saescope.core import formats
from saescope.core.fileio import atomic_path, atomic_write_json
from saescope.core.ood.scorers import (
    SAE_COMBINED,
    KNNDistance,
    Mahalanobis,
    RareFeatures,
    ReconstructionError,
    Scorer,
)

FORMAT = formats.OOD.name
FORMAT_VERSION = formats.OOD.version
MANIFEST = "ood.json"
TENSORS = "ood.safetensors"


def save_suite(suite: Any, folder: str | os.PathLike) -> Path:
    """Write ``suite`` (an :class:`~saescope.core.ood.OODSuite`) into ``folder``."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    entries = []
    for s in suite.scorers:
        if not s.saveable:
            continue  # probes need the final tokens and labels; they live in probes/
        t, m = s.state(folder)
        tensors.update({f"{s.name}/{k}": np.ascontiguousarray(v) for k, v in t.items()})
        entries.append({**s.describe(), "class": type(s).__name__, "state": m})
    saved = {e["name"] for e in entries}
    for name, v in suite.calibration.items():
        if name in saved or name == SAE_COMBINED:
            tensors[f"calibration/{name}"] = np.ascontiguousarray(v, np.float64)
    if suite.combine:
        tensors["combine/mean"] = np.asarray(suite.combo_mean, np.float64)
        tensors["combine/std"] = np.asarray(suite.combo_std, np.float64)
    with atomic_path(folder / TENSORS) as tmp:
        save_file(tensors, str(tmp))
    info = {
        **formats.OOD.header(),
        "scorers": entries,
        "combine": suite.combine,
        "tpr": suite.tpr,
        "meta": suite.meta,
        "thresholds": {
            n: suite.threshold(n) for n in suite.calibration if n in saved or n == SAE_COMBINED
        },
    }
    atomic_write_json(folder / MANIFEST, info, indent=2)
    return folder


def _scorer_from_entry(entry: dict[str, Any], path: Path) -> Scorer:
    """An unfitted scorer of the class an ``ood.json`` entry names."""
    kind, st = entry["class"], entry.get("state", {})
    if kind == "ReconstructionError":
        return ReconstructionError()
    if kind == "RareFeatures":
        return RareFeatures()
    if kind == "KNNDistance":
        return KNNDistance(st["field"], entry["name"], entry["family"], st["k"])
    if kind == "Mahalanobis":
        return Mahalanobis(st["field"], entry["name"])
    raise ValueError(f"{path}: unknown OOD scorer class {kind!r}")


def read_suite(
    folder: str | os.PathLike,
) -> tuple[list[Scorer], dict[str, Any], dict[str, np.ndarray]]:
    """The fitted scorers, the ``ood.json`` manifest and the tensors of a saved suite."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no OOD calibration in {folder} (missing {MANIFEST})")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{path} is not an OOD calibration file")
    # files from before the version field are version 1
    formats.OOD.check(info, path, check_name=False, default_version=FORMAT_VERSION)
    t = load_file(str(folder / TENSORS))
    scorers: list[Scorer] = []
    for e in info["scorers"]:
        s = _scorer_from_entry(e, path)
        pre = f"{e['name']}/"
        s.load_state(
            {k[len(pre) :]: v for k, v in t.items() if k.startswith(pre)},
            e.get("state", {}),
            folder,
        )
        scorers.append(s)
    return scorers, info, t


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "TENSORS", "save_suite", "read_suite"]
