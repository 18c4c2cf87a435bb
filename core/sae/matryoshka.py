"""Matryoshka SAE: BatchTopK codes whose nested prefixes must each reconstruct the input.

Why: the first latents are pushed to carry the most general features, so a prefix of the
dictionary is itself a usable, coarser SAE, and features split less as the width grows.
"""

from __future__ import annotations

import torch

from saescope.core.sae.base import Codes, SAEConfig
from saescope.core.sae.batchtopk import BatchTopKSAE
from saescope.core.sae.registry import register_architecture


def default_matryoshka_prefixes(d_sae: int) -> list[int]:
    """Nested widths d/16, d/8, d/4, d/2, d (those >= 1, de-duplicated)."""
    return sorted({max(1, d_sae // 2**i) for i in range(4, -1, -1)})


@register_architecture
class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK codes; the loss averages the MSE of every prefix in ``matryoshka_prefixes``."""

    architecture = "matryoshka"
    description = "BatchTopK codes whose nested prefixes must each reconstruct the input"
    saev_activation = None
    saelens_names = (("matryoshka_batchtopk", None),)

    @classmethod
    def validate_config(cls, cfg: SAEConfig) -> None:
        super().validate_config(cfg)
        if not cfg.matryoshka_prefixes:
            cfg.matryoshka_prefixes = default_matryoshka_prefixes(cfg.d_sae)
        p = list(cfg.matryoshka_prefixes)
        if p != sorted(set(p)) or p[-1] != cfg.d_sae or p[0] <= 0:
            raise ValueError(
                f"matryoshka_prefixes must increase strictly and end at d_sae={cfg.d_sae}, got {p}"
            )

    def _reconstruction(
        self, codes: Codes, xn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        prefixes = self.cfg.matryoshka_prefixes or [self.cfg.d_sae]
        mses = [(self._decode_normalized(codes, upto=p) - xn).pow(2).mean() for p in prefixes]
        return mses[-1], torch.stack(mses).mean(), None
