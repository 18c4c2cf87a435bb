"""Causal edits of SAE features inside a frozen backbone, read out by a frozen head.

Recipe (same layer convention everywhere, see :mod:`core.layers`): take the tokens ``x`` at the
SAE's layer L; encode the chosen tokens, edit the codes (set a feature to a value, or scale it),
and replace the tokens by ``decode(edited) + (x - decode(codes))``, i.e. the edited reconstruction
plus the SAE's error term. It is computed as ``x + (decode(edited) - decode(codes))`` so that an
empty edit leaves ``x`` bit-for-bit unchanged. Then blocks L+1 onward and the head run as usual.

Which tokens are edited is explicit: by default only patch tokens (optionally a subset of patches);
CLS and register tokens only when asked for with ``kinds``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from saescope.core.sae import SAE
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds


@dataclass(frozen=True)
class Edit:
    """Set ``feature`` to ``value`` (where given) and/or multiply it by ``scale``.

    ``Edit(f, scale=0)`` switches a feature off; ``Edit(f, value=5.0)`` clamps it to 5 on every
    edited token (also where it was not active: that is how a feature is *added*).
    """

    feature: int
    value: float | None = None
    scale: float | None = None


@dataclass
class LayerCache:
    """A backbone forward up to the SAE's layer, kept so that edits only rerun the rest."""

    tokens: torch.Tensor  # [B, T, D] output of block `layer`
    layout: TokenLayout
    layer: int
    base_final: torch.Tensor | None = None  # final tokens without edits (computed lazily)
    base_head: torch.Tensor | None = None


@dataclass
class SteerResult:
    tokens_before: torch.Tensor  # [B, T, D] at layer L
    tokens_after: torch.Tensor
    positions: list[int]  # sequence positions that were edited
    codes_before: torch.Tensor  # [B, n_positions, d_sae]
    codes_after: torch.Tensor
    final_before: torch.Tensor
    final_after: torch.Tensor
    head_before: torch.Tensor | None = None
    head_after: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


@torch.inference_mode()
def cache_layer(backbone, sae: SAE, pixels: torch.Tensor) -> LayerCache:
    """Run ``backbone`` up to the SAE's layer once (the expensive part of an interactive edit)."""
    if sae.cfg.layer is None:
        raise ValueError("this SAE does not record its layer, so it cannot be spliced in")
    layer = backbone.resolve_layer(sae.cfg.layer)
    if backbone.d_model != sae.cfg.d_in:
        from saescope.core.sae import ShapeMismatch

        raise ShapeMismatch(
            f"SAE width {sae.cfg.d_in} does not match backbone width {backbone.d_model}"
        )
    out = backbone.forward_layers(pixels, [layer])
    return LayerCache(out.tokens[layer], out.layout, layer)


def edit_positions(
    layout: TokenLayout,
    patches: Iterable[tuple[int, int]] | np.ndarray | None = None,
    kinds: Sequence[TokenKind] | str = "patch",
) -> list[int]:
    """Sequence positions to edit: the given patches (a list of (row, col) or a boolean mask
    [rows, cols]) or all patches, plus CLS/register tokens when ``kinds`` names them."""
    kinds = parse_kinds(kinds)
    positions = (
        [p for p in layout.indices([k for k in kinds if k != TokenKind.PATCH])]
        if any(k != TokenKind.PATCH for k in kinds)
        else []
    )
    if TokenKind.PATCH in kinds:
        if patches is None:
            positions += layout.indices([TokenKind.PATCH])
        else:
            if isinstance(patches, np.ndarray) and patches.dtype == bool:
                if patches.shape != tuple(layout.grid):
                    raise ValueError(
                        f"patch mask has shape {patches.shape}, the grid is {layout.grid}"
                    )
                patches = [tuple(rc) for rc in np.argwhere(patches)]
            positions += sorted({layout.patch_index(int(r), int(c)) for r, c in patches})
    if not positions:
        raise ValueError("no tokens selected to edit (empty patch selection?)")
    return positions


def splice(tokens: torch.Tensor, positions: Sequence[int], new: torch.Tensor) -> torch.Tensor:
    """Copy of ``tokens`` [B, T, D] whose ``positions`` are replaced by ``new`` [B, len, D]."""
    out = tokens.clone()
    out[:, list(positions)] = new.to(out.dtype)
    return out


def apply_edits(codes: torch.Tensor, edits: Sequence[Edit], sae: SAE) -> torch.Tensor:
    """Edited copy of dense codes [..., d_sae]."""
    out = codes.clone()
    for e in edits:
        f = sae.check_feature(e.feature)
        if e.value is not None:
            out[..., f] = float(e.value)
        if e.scale is not None:
            out[..., f] = out[..., f] * float(e.scale)
    return out


@torch.inference_mode()
def steer(
    backbone,
    sae: SAE,
    cache: LayerCache,
    edits: Sequence[Edit],
    patches: Iterable[tuple[int, int]] | np.ndarray | None = None,
    kinds: Sequence[TokenKind] | str = "patch",
    head=None,
) -> SteerResult:
    """Apply ``edits`` to the chosen tokens at the SAE's layer and run the rest of the model."""
    positions = edit_positions(cache.layout, patches, kinds)
    x = cache.tokens[:, positions]
    codes = sae.encode(x)
    edited = apply_edits(codes, edits, sae)
    tokens = cache.tokens
    if edits:
        tokens = splice(
            cache.tokens, positions, x + (sae.decode(edited) - sae.decode(codes)).to(x.dtype)
        )
    if cache.base_final is None:
        cache.base_final = backbone.run_from(cache.layer, cache.tokens)
        if head is not None:
            cache.base_head = head(cache.base_final, cache.layout)
    final = backbone.run_from(cache.layer, tokens) if edits else cache.base_final
    result = SteerResult(cache.tokens, tokens, positions, codes, edited, cache.base_final, final)
    if head is not None:
        if cache.base_head is None:
            cache.base_head = head(cache.base_final, cache.layout)
        result.head_before = cache.base_head
        result.head_after = head(final, cache.layout) if edits else cache.base_head
    return result


def random_direction_like(
    sae: SAE, feature: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random unit direction in activation space with the decoder row's norm (a control)."""
    row = sae.W_dec[sae.check_feature(feature)]
    r = torch.randn(row.shape, generator=generator, dtype=row.dtype)
    return r / r.norm() * row.norm()
