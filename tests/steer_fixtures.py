"""Bundles with probes for the steering-app tests (imported explicitly, like conftest_apps).

- :func:`tiny_probe_bundle`: the tiny random DINOv2 bundle of :mod:`conftest_apps` plus a
  ``digit-scenes`` segmentation probe and a ``digits`` classification probe fitted on a few dozen
  images through the real :func:`train.probes.fit_probe` (seconds). Enough for every code path.

The real-browser tests use the offline default bundle instead (real DINOv2-S with the same two
probes, built once per machine): fitting probes on a fresh offline bundle costs minutes on 2 cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest_apps import tiny_bundle

SCENES = "builtin:digit-scenes?n=300"
DIGITS = "builtin:digits?size=112&resample=nearest"


def add_probes(bundle: Path, n_scenes: int = 40, n_digits: int = 60) -> Path:
    """Fit the two probes on ``bundle``'s backbone and store them in it."""
    from saescope.core.bundle import Bundle
    from saescope.train.probes import add_probe_to_bundle, fit_probe
    from saescope.train.seg_sources import open_segmentation_source
    from saescope.train.sources import open_source

    backbone = Bundle.load(bundle, verify=False).backbone
    seg, _, _ = fit_probe(backbone, open_segmentation_source(SCENES, max_images=n_scenes),
                          "segmentation", name="digit-scenes", progress=False)
    add_probe_to_bundle(bundle, seg)
    cls, _, _ = fit_probe(backbone, open_source(DIGITS, max_images=n_digits), "classification",
                          name="digits", progress=False)
    add_probe_to_bundle(bundle, cls)
    return bundle


def tiny_probe_bundle(tmp_path_factory) -> Path:
    """Built once per test session (shared by the unit and the Spaces tests)."""
    root = tmp_path_factory.getbasetemp() / "apps-steer-tiny"
    path = root / "tiny-probes"
    if not (path / "probes" / "digits.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        add_probes(tiny_bundle(root, "tiny-probes"), n_scenes=24, n_digits=40)
    return path

