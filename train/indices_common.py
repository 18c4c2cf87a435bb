"""Input checks and progress shared by the index builders of ``saescope index``.

The patch index (:mod:`saescope.train.indices_patches`), the feature matches
(:mod:`saescope.train.indices_matches`) and the step itself (:mod:`saescope.train.indices`) all
refuse an SAE paired with a store of another model, layer or width, with the same message.
"""

from __future__ import annotations

import sys
from typing import Any

from saescope.core.sae import SAE, ShapeMismatch
from saescope.core.store import ActivationStore


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (disabled, not absent, when ``enabled`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, file=sys.stderr
    )


def check_pair(sae: SAE, store: ActivationStore) -> None:
    """Clear error when an SAE was not trained on the store's model, layer or width."""
    cfg = sae.cfg
    if cfg.d_in != store.d_model:
        raise ShapeMismatch(
            f"SAE {cfg.name} expects width {cfg.d_in}, store {store.path} holds "
            f"width {store.d_model}"
        )
    if cfg.model_id and store.model_id and cfg.model_id != store.model_id:
        raise ShapeMismatch(
            f"SAE {cfg.name} was trained on {cfg.model_id!r}, store {store.path} "
            f"holds {store.model_id!r}"
        )
    if cfg.layer is not None and cfg.layer != store.layer:
        raise ShapeMismatch(
            f"SAE {cfg.name} was trained on layer {cfg.layer}, store "
            f"{store.path} holds layer {store.layer}"
        )


def has_patches(store: ActivationStore) -> bool:
    """Whether ``store`` holds patch tokens on a non-empty grid."""
    return any(k.value == "patch" for k in store.kinds) and store.layout.n_patches > 0
