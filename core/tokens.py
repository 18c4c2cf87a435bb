"""Token kinds (CLS, registers, patches) and the layout that tells them apart.

Every backbone lays tokens out as ``[CLS]*n_cls + [REG]*n_registers + patches`` (row-major patch
grid). The layout travels with the tokens so that downstream code never guesses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch


class TokenKind(str, Enum):
    CLS = "cls"
    REGISTER = "register"
    PATCH = "patch"


ALL_KINDS: tuple[TokenKind, ...] = (TokenKind.CLS, TokenKind.REGISTER, TokenKind.PATCH)


def parse_kinds(kinds: str | Iterable[str | TokenKind]) -> tuple[TokenKind, ...]:
    """Parse ``"patch"``, ``"cls,patch"`` or a list into an ordered, de-duplicated tuple.

    The order is always CLS, registers, patches (the order in the sequence), whatever the input.
    """
    if isinstance(kinds, str):
        items = [k.strip() for k in kinds.split(",") if k.strip()]
    else:
        items = [k.value if isinstance(k, TokenKind) else str(k).strip() for k in kinds]
    aliases = {"registers": "register", "reg": "register", "patches": "patch", "all": "all"}
    out: set[TokenKind] = set()
    for item in items:
        name = aliases.get(item.lower(), item.lower())
        if name == "all":
            out.update(ALL_KINDS)
            continue
        try:
            out.add(TokenKind(name))
        except ValueError as err:
            raise ValueError(
                f"unknown token kind {item!r}: expected some of cls, register, patch (or 'all')"
            ) from err
    if not out:
        raise ValueError("at least one token kind is required (cls, register, patch)")
    return tuple(k for k in ALL_KINDS if k in out)


@dataclass(frozen=True)
class TokenLayout:
    """How a backbone's token sequence is laid out: CLS, then registers, then a patch grid."""

    n_cls: int
    n_registers: int
    grid: tuple[int, int]  # (rows, cols) of the patch grid

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_cls + self.n_registers + self.n_patches

    def indices(self, kinds: Sequence[TokenKind] | str) -> list[int]:
        """Sequence positions of the given kinds, in sequence order."""
        kinds = parse_kinds(kinds)
        idx: list[int] = []
        if TokenKind.CLS in kinds:
            idx.extend(range(self.n_cls))
        if TokenKind.REGISTER in kinds:
            idx.extend(range(self.n_cls, self.n_cls + self.n_registers))
        if TokenKind.PATCH in kinds:
            start = self.n_cls + self.n_registers
            idx.extend(range(start, start + self.n_patches))
        return idx

    def kinds_of(self, kinds: Sequence[TokenKind] | str) -> list[TokenKind]:
        """The kind of each selected token, aligned with :meth:`indices`."""
        kinds = parse_kinds(kinds)
        out: list[TokenKind] = []
        if TokenKind.CLS in kinds:
            out.extend([TokenKind.CLS] * self.n_cls)
        if TokenKind.REGISTER in kinds:
            out.extend([TokenKind.REGISTER] * self.n_registers)
        if TokenKind.PATCH in kinds:
            out.extend([TokenKind.PATCH] * self.n_patches)
        return out

    def select(self, tokens: torch.Tensor, kinds: Sequence[TokenKind] | str) -> torch.Tensor:
        """``tokens[..., T, D]`` -> the tokens of ``kinds`` (``[..., n, D]``)."""
        if tokens.shape[-2] != self.n_tokens:
            raise ValueError(
                f"expected {self.n_tokens} tokens for layout {self}, got {tokens.shape[-2]}"
            )
        idx = self.indices(kinds)
        if idx and idx[-1] - idx[0] + 1 == len(idx):  # contiguous: a view, no copy
            return tokens[..., idx[0] : idx[-1] + 1, :]
        return tokens[..., idx, :]

    def patch_index(self, row: int, col: int) -> int:
        """Sequence position of the patch at (row, col)."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"patch ({row}, {col}) outside the {rows}x{cols} grid")
        return self.n_cls + self.n_registers + row * cols + col

    def to_dict(self) -> dict:
        return {"n_cls": self.n_cls, "n_registers": self.n_registers, "grid": list(self.grid)}

    @classmethod
    def from_dict(cls, d: dict) -> TokenLayout:
        return cls(int(d["n_cls"]), int(d["n_registers"]), (int(d["grid"][0]), int(d["grid"][1])))


__all__ = ["TokenKind", "TokenLayout", "parse_kinds", "ALL_KINDS"]
