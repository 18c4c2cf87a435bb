"""TopK SAE: the k largest pre-activations per token (Gao et al. 2024).

Why: the sparsity is set exactly (L0 = k) instead of through a penalty to tune, and there is no
shrinkage of the kept values. Dead latents are revived by the shared AuxK loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saescope.core.sae.base import SAE, Codes
from saescope.core.sae.registry import register_architecture


def topk_codes(pre: torch.Tensor, k: int) -> Codes:
    """The k largest pre-activations of each row (ReLU'd), in k-sparse form."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return Codes(indices=idx, values=F.relu(vals))


@register_architecture
class TopKSAE(SAE):
    """Per-token top-k codes; ``k`` may be overridden per step (k annealing)."""

    architecture = "topk"
    description = "the k largest pre-activations per token"
    k_sparse = True
    default_hyperparameters = {"k": 32}
    saev_activation = "TopK"
    saelens_names = (("topk", None), (None, "topk"))

    def _activate(self, pre: torch.Tensor, training: bool, k: int | None = None) -> Codes:
        return topk_codes(pre, k or self.cfg.k)
