"""Cross-checks of a bundle: its manifest's fields, and whether its parts fit its SAE.

Why: checksums prove that a bundle's files are the ones its manifest lists, not that they fit
together. A user who swaps in an SAE of another width and re-checksums (``update_manifest``) gets
a bundle that verifies, then shows statistics of features that do not exist, or crashes in
warm-up. :func:`check_bundle` compares the SAE's sizes (``d_in``, ``d_sae``), model and layer with
every other part (exemplars, statistics, indices, matches, probes, OOD calibration, the manifest's
own blocks) and raises one :class:`~saescope.core.bundle.BundleError` naming both sides.

It reads only JSON files and safetensors *headers* (shapes, never data), so it costs
milliseconds even on a 10 GB bundle. :func:`load_manifest` / :func:`check_manifest_fields` make
a damaged or hostile ``bundle.json`` (wrong types, paths leaving the folder, odd versions) one
``BundleError`` instead of a ``KeyError`` or ``TypeError`` deep in the loader.
"""

from __future__ import annotations

from typing import Any

from saescope.core.bundle_manifest import (  # noqa: F401  (re-exported)
    MANIFEST,
    MAX_MANIFEST_BYTES,
    BundleError,
    BundleView,
    check_manifest_fields,
    load_manifest,
)
from saescope.core.bundle_parts import (
    check_parts,
    sae_reference,
)


# ------------------------------------------------------------------------------ entry points
def check_bundle(bundle: BundleView) -> None:
    """Refuse a bundle whose parts disagree with its SAE (one BundleError naming both sides).

    Reads JSON files and safetensors headers only (milliseconds, whatever the bundle's size);
    safe to call more than once.
    """
    check_manifest_fields(bundle.manifest, bundle.path / MANIFEST)
    check_parts(bundle, sae_reference(bundle))


def check_backbone(bundle: BundleView, backbone: Any) -> None:
    """Refuse a backbone whose width or depth does not fit the bundle's SAE.

    Why separate: the backbone is loaded lazily (seconds); this runs once it is, so a bundle
    without ``model.d_model`` in its manifest still fails with one line, not in warm-up.
    """
    ref = sae_reference(bundle)
    name = getattr(backbone, "model_id", "the backbone")
    ref.vs(
        bundle,
        int(backbone.d_model),
        "d_in",
        f"the backbone {name} gives {{}}-d tokens",
        "backbone",
    )
    n_layers = int(backbone.n_layers)
    if ref.layer is not None and not -n_layers <= ref.layer < n_layers:
        raise BundleError(
            f"bundle {bundle.name}: the SAE reads layer {ref.layer} but the backbone {name} has "
            f"{n_layers} blocks (backbone vs {ref.where})"
        )


__all__ = [
    "MAX_MANIFEST_BYTES",
    "check_backbone",
    "check_bundle",
    "check_manifest_fields",
    "load_manifest",
    "sae_reference",
]
