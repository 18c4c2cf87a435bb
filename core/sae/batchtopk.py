"""BatchTopK SAE: the k x batch largest codes of the whole batch (Bussmann et al. 2024).

Why: tokens differ in how many features they need; keeping the top k N over a batch of N tokens
lets the count vary per token at the same average L0. At inference there is no batch to rank, so
a learned global threshold (an EMA of the smallest kept value) replaces the ranking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saescope.core.sae.base import SAE, Codes
from saescope.core.sae.registry import register_architecture
from saescope.core.sae.topk import topk_codes


@register_architecture
class BatchTopKSAE(SAE):
    """Batch-level top-k in training, the ``threshold`` buffer at inference."""

    architecture = "batchtopk"
    description = "the k x batch largest codes over the batch; a learned threshold at inference"
    k_sparse = True
    default_hyperparameters = {"k": 32}
    saev_activation = "BatchTopK"
    saelens_names = (("batchtopk", None),)

    def _activate(self, pre: torch.Tensor, training: bool, k: int | None = None) -> Codes:
        k = k or self.cfg.k
        if not training and self.threshold.item() <= 0:
            return topk_codes(pre, k)  # no threshold learned yet: plain TopK
        if training:
            return self._batch_topk(pre, k)
        return Codes(dense=pre * (pre > self.threshold))

    def _batch_topk(self, pre: torch.Tensor, k: int) -> Codes:
        """Keep the k x N largest activations of the batch; update the inference threshold.

        Candidates are each token's top ``batchtopk_candidates * k`` latents (so one token uses at
        most that many): the exact global top-(k N) over the full [N, d_sae] matrix costs ~3x more
        on CPU and almost never differs.
        """
        n = pre.shape[0]
        m = min(self.cfg.d_sae, self.cfg.batchtopk_candidates * k)
        vals, idx = F.relu(pre).topk(m, dim=-1, sorted=False)
        flat = vals.flatten()
        keep = min(k * n, flat.numel())
        top_vals, top_pos = flat.topk(keep, sorted=False)
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[top_pos] = True
        mask &= flat > 0
        with torch.no_grad():
            kept = top_vals[top_vals > 0]
            if kept.numel():
                smallest = kept.min()
                if self.threshold.item() <= 0:
                    self.threshold.fill_(float(smallest))
                else:
                    self.threshold.mul_(0.99).add_(0.01 * smallest)
        return Codes(indices=idx, values=vals * mask.view_as(vals))
