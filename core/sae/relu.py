"""ReLU SAE: ReLU codes with an L1 penalty weighted by decoder-row norms (the seed recipe).

Why the norm weighting: with a penalty on the codes alone the model could shrink codes and grow
decoder rows; weighting by ``||W_dec[i]||`` makes the penalty invariant to that trade.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saescope.core.sae.base import SAE, Codes
from saescope.core.sae.registry import register_architecture


@register_architecture
class ReLUSAE(SAE):
    """``relu(pre)`` codes; ``l1_coefficient`` weighs the L1 penalty."""

    architecture = "relu"
    description = "ReLU codes with an L1 penalty weighted by decoder-row norms"
    penalty_option = "l1"
    default_hyperparameters = {"l1_coefficient": 3e-3}
    saev_activation = "Relu"
    saelens_names = (("standard", "relu"), ("relu", "relu"))

    def _activate(self, pre: torch.Tensor, training: bool, k: int | None = None) -> Codes:
        return Codes(dense=F.relu(pre))

    def _sparsity_term(self, pre: torch.Tensor, codes: Codes) -> torch.Tensor:
        return (codes.dense * self.W_dec.norm(dim=-1)).sum(-1).mean()
