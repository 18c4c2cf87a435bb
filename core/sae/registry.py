"""The table of SAE architectures: every list of architecture names is read from here.

Why a registry: the CLI choices, the config validation, the checkpoint importers and the
k-sparse/penalty split used to be separate hand-written lists that had to agree. Now an
architecture module registers its class once (:func:`register_architecture`) and everything
else asks this table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

_ARCHITECTURES: dict[str, Any] = {}


def register_architecture(cls: T) -> T:
    """Class decorator: make ``cls`` the SAE for ``cls.architecture`` (its config name)."""
    name = getattr(cls, "architecture", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute 'architecture' (its name)")
    if name in _ARCHITECTURES and _ARCHITECTURES[name] is not cls:
        raise ValueError(
            f"SAE architecture {name!r} is already registered by "
            f"{_ARCHITECTURES[name].__qualname__}"
        )
    _ARCHITECTURES[name] = cls
    return cls


def get_architecture(name: str) -> Any:
    """The registered SAE class for ``name``; a ValueError lists the registered names."""
    try:
        return _ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown SAE architecture {name!r}: expected one of {architecture_names()}"
        ) from None


def architecture_names() -> tuple[str, ...]:
    """Every registered architecture name, in registration order (the CLI ``--arch`` choices)."""
    return tuple(_ARCHITECTURES)


def architectures() -> tuple[Any, ...]:
    """Every registered SAE class, in registration order."""
    return tuple(_ARCHITECTURES.values())


def _names_where(test: Callable[[Any], bool]) -> tuple[str, ...]:
    return tuple(name for name, cls in _ARCHITECTURES.items() if test(cls))


def k_sparse_names() -> tuple[str, ...]:
    """Architectures whose sparsity is a count ``k`` (no penalty coefficient)."""
    return _names_where(lambda cls: cls.k_sparse)


def is_k_sparse(name: str) -> bool:
    """Whether ``name`` is a registered k-sparse architecture (False for unknown names)."""
    cls = _ARCHITECTURES.get(name)
    return bool(cls is not None and cls.k_sparse)


__all__ = [
    "register_architecture",
    "get_architecture",
    "architecture_names",
    "architectures",
    "k_sparse_names",
    "is_k_sparse",
]
