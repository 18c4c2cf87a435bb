"""Sparse autoencoders: one small interface over pluggable architectures.

Architectures (``SAEConfig.architecture``), one module each:

- ``relu``: ReLU codes with an L1 penalty weighted by decoder-row norms (the seed recipe);
- ``topk``: the k largest pre-activations per token (Gao et al. 2024);
- ``batchtopk``: the k x batch largest over the whole batch in training, a learned global
  threshold at inference (Bussmann et al. 2024);
- ``jumprelu``: per-feature learned thresholds trained with straight-through estimators and an L0
  penalty (Rajamanoharan et al. 2024);
- ``matryoshka``: BatchTopK codes whose nested prefixes must each reconstruct the input.

``SAE(cfg, seed=...)`` builds the class registered for ``cfg.architecture``; ``base.py`` holds
what they share (normalisation, encode/decode, unit-norm decoder, AuxK, training statistics) and
``registry.py`` the table every list of names is read from (config validation, the ``--arch``
choices via :func:`architecture_names`, the k-sparse set via :func:`k_sparse_names` /
:func:`is_k_sparse`, the saev and SAELens importers).

How to add an architecture
--------------------------
1. Write ``core/sae/<name>.py`` with a subclass of :class:`SAE` decorated with
   :func:`register_architecture`. Set ``architecture = "<name>"`` and ``description``; set
   ``k_sparse = True`` if its sparsity is a count ``k`` (it then gets the AuxK loss and the
   ``0 < k <= d_sae`` check), otherwise ``penalty_option`` (the sweep flag of its
   ``l1_coefficient``); ``default_hyperparameters`` for the CLI defaults; and
   ``saev_activation`` / ``saelens_names`` if foreign checkpoints of it can be imported.
2. Override ``_activate(pre, training, k)`` (pre-activations -> :class:`Codes`), and where
   needed ``_sparsity_term`` (its penalty), ``_reconstruction`` (its reconstruction loss),
   ``_init_extra_parameters`` (extra weights; they are saved and loaded automatically),
   ``validate_config`` (checks of its config fields; call ``super()``) and
   ``saelens_extra_tensors``. New config fields go into :class:`SAEConfig`, prefixed with the
   architecture name.
3. Import the module below (the import registers it).
4. Add ``tests/sae/test_<name>.py`` with its specific behaviour;
   ``tests/sae/test_sae_registry.py`` fails until it exists, and runs the shared checks (save/load
   round trip, unit-norm decoder, learning sparse data) over every registered architecture.
"""

from __future__ import annotations

from typing import Any

from saescope.core.sae.base import (
    FORMAT_VERSION,
    SAE,
    Codes,
    SAEConfig,
    ShapeMismatch,
    TrainOutput,
    sparse_decode,
)
from saescope.core.sae.registry import (
    architecture_names,
    architectures,
    get_architecture,
    is_k_sparse,
    k_sparse_names,
    register_architecture,
)

# Importing an architecture module registers it; this order is the order of ARCHITECTURES (and
# of the CLI choices), so the imports are kept out of import sorting.
# isort: off
from saescope.core.sae.relu import ReLUSAE
from saescope.core.sae.topk import TopKSAE
from saescope.core.sae.batchtopk import BatchTopKSAE
from saescope.core.sae.jumprelu import JumpReLUSAE
from saescope.core.sae.matryoshka import MatryoshkaSAE, default_matryoshka_prefixes
# isort: on


def __getattr__(name: str) -> Any:
    """``ARCHITECTURES`` and ``K_SPARSE``: name tuples computed from the registry on access."""
    if name == "ARCHITECTURES":
        return architecture_names()
    if name == "K_SPARSE":
        return k_sparse_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "K_SPARSE",
    "FORMAT_VERSION",
    "SAE",
    "SAEConfig",
    "Codes",
    "TrainOutput",
    "ShapeMismatch",
    "sparse_decode",
    "default_matryoshka_prefixes",
    "register_architecture",
    "get_architecture",
    "architecture_names",
    "architectures",
    "k_sparse_names",
    "is_k_sparse",
    "ReLUSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "MatryoshkaSAE",
]
