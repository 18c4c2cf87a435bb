"""The one place where layer indices are resolved.

Layer ``L`` is the output of transformer block ``L`` counted from 0, i.e. ``hidden_states[L + 1]``
in transformers terms. Negative values count from the end (``-1`` is the last block). Steering at
layer ``L`` replaces that output and runs blocks ``L + 1`` onward. Nothing else in the code base
does arithmetic on layer numbers; it calls :func:`resolve_layer`.
"""

from __future__ import annotations


class LayerOutOfRange(ValueError):
    """A requested layer does not exist in the backbone."""


def resolve_layer(layer: int, n_layers: int) -> int:
    """Return the non-negative block index for ``layer`` in a model with ``n_layers`` blocks.

    Raises :class:`LayerOutOfRange` with the valid range when ``layer`` is outside it, so a typo
    on the command line fails before any image is read.
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        try:
            layer = int(layer)
        except (TypeError, ValueError) as err:
            raise LayerOutOfRange(f"layer must be an integer, got {layer!r}") from err
    if n_layers <= 0:
        raise LayerOutOfRange(f"model has no transformer blocks (n_layers={n_layers})")
    if not -n_layers <= layer < n_layers:
        raise LayerOutOfRange(
            f"layer {layer} is out of range for a model with {n_layers} blocks: "
            f"use 0..{n_layers - 1} or -{n_layers}..-1 (layer L = output of block L)"
        )
    return layer % n_layers
