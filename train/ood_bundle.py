"""``ood-fit``'s work: calibrated OOD scorers stored as a bundle's ``ood/`` component.

Kept apart from the ``ood-eval`` experiment: the offline default bundles
(:func:`saescope.train.default_bundle.ensure_default_ood`) need only this, not the experiment.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from saescope.core.ood import OODSuite, default_scorers
from saescope.train.ood_data import store_summary


def fit_bundle_ood(
    bundle_path: str | Path,
    store_path: str | Path,
    *,
    max_images: int = 2000,
    k: int = 5,
    progress: bool = True,
) -> Path:
    """Fit and calibrate the SAE and raw (layer-token) scorers of a bundle on its activation
    store; store them as the bundle's ``ood/`` component.

    A random fifth of the store calibrates; the bundle's SAE was trained on the whole store, so
    its calibration images are not unseen and the thresholds lean low (the verdict errs towards
    "OOD"). Calibrating on images the SAE never saw needs a store of them (``OODSuite.fit``).
    """
    from saescope.core.bundle import Bundle
    from saescope.core.store import ActivationStore

    bundle = Bundle.load(bundle_path, verify=False)
    store = ActivationStore(store_path)
    sae = bundle.sae.eval()
    model_id = bundle.model.get("model_id")
    if model_id and store.model_id != model_id:
        raise ValueError(
            f"store {store_path} holds activations of {store.model_id!r}, but bundle "
            f"{bundle.name} uses {model_id!r}"
        )
    if sae.cfg.layer is not None and store.layer != sae.cfg.layer:
        raise ValueError(
            f"store {store_path} holds layer {store.layer}, but the SAE of bundle "
            f"{bundle.name} reads layer {sae.cfg.layer}"
        )
    if store.d_model != sae.cfg.d_in:
        raise ValueError(f"store width {store.d_model} does not match the SAE's {sae.cfg.d_in}")
    t0 = time.perf_counter()
    summary = store_summary(
        Path(store_path),
        sae,
        None,
        with_cls=False,
        max_images=max_images,
        progress=progress,
        desc=f"ood calibration {bundle.name}",
    )
    scorers = default_scorers(("sae", "raw"), k=k, raw_fields=("raw_mean",))
    suite = OODSuite.fit(
        scorers,
        summary,
        meta={
            "source": (store.manifest.get("source") or {}).get("spec"),
            "n_images": len(summary),
            "layer": store.layer,
            "model_id": store.model_id,
            "sae": sae.cfg.name,
            "fit_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    return add_ood_to_bundle(bundle.path, suite)


def add_ood_to_bundle(bundle_path: str | Path, suite: OODSuite) -> Path:
    """Store a fitted suite as the bundle's ``ood/`` component (replacing an older one)."""
    from saescope.core.bundle import update_manifest

    folder = Path(bundle_path) / "ood"
    shutil.rmtree(folder, ignore_errors=True)
    suite.save(folder)
    entry = {
        "path": "ood",
        "scores": suite.names,
        "n_fit": suite.meta.get("n_fit"),
        "n_calibration": suite.meta.get("n_calibration"),
        "source": suite.meta.get("source"),
    }

    def change(info: dict) -> None:
        info.setdefault("components", {})["ood"] = "ood"
        info["ood"] = entry

    update_manifest(bundle_path, change)
    return folder


__all__ = ["add_ood_to_bundle", "fit_bundle_ood"]
