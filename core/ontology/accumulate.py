"""Accumulating per-image feature activations per class, with a running top-k per feature.

Why accumulate per class instead of keeping per-image activations: memory stays
``features x classes`` whatever the number of images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from saescope.core.ontology.labels import OntologyError


class ClassActivations:
    """Per feature and class: activation mass and firing images; per class: images seen; per
    feature: its ``top_k`` strongest images and their labels (a running top-k).

    Feed it per-image feature activations (max over patches) with the images' label indices
    (``-1`` = no label / excluded). Why both sums and a top-k: a feature's max over hundreds of
    patches is above zero on most images, so the sum over all images mostly measures class
    sizes; its strongest images say what it is about.
    """

    def __init__(self, n_features: int, n_classes: int, top_k: int = 32):
        if n_features < 1 or n_classes < 1 or top_k < 1:
            raise OntologyError(
                f"need >= 1 feature, class and top image, got {n_features}, {n_classes}, {top_k}"
            )
        self.n_features, self.n_classes, self.top_k = int(n_features), int(n_classes), int(top_k)
        self.mass = torch.zeros(self.n_features, self.n_classes, dtype=torch.float64)
        self.fires = torch.zeros(self.n_features, self.n_classes, dtype=torch.long)
        self.images = torch.zeros(self.n_classes, dtype=torch.long)
        self.top_values = torch.zeros(self.n_features, self.top_k)
        self.top_labels = torch.full((self.n_features, self.top_k), -1, dtype=torch.long)
        self.top_index = torch.full((self.n_features, self.top_k), -1, dtype=torch.long)
        self.n_seen = 0  # images added so far: their order breaks ties in the top-k
        self.n_skipped = 0

    @torch.no_grad()
    def update(self, image_acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> None:
        """Add ``image_acts`` ``[B, F]`` (>= 0) of images with label indices ``labels`` ``[B]``."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if image_acts.dim() != 2 or image_acts.shape != (len(labels), self.n_features):
            raise OntologyError(
                f"activations {tuple(image_acts.shape)} do not match "
                f"{len(labels)} labels x {self.n_features} features"
            )
        if (labels >= self.n_classes).any():
            raise OntologyError(f"label index {int(labels.max())} >= {self.n_classes} classes")
        keep = labels >= 0
        self.n_skipped += int((~keep).sum())
        acts, labels = image_acts[keep].detach().cpu(), labels[keep]
        if not len(labels):
            return
        acts = acts.float().clamp_min(0)
        self.images += torch.bincount(labels, minlength=self.n_classes)
        self.mass.index_add_(1, labels, acts.t().double())
        self.fires.index_add_(1, labels, (acts > 0).t().long())
        # running top-k over (value, earlier image first) keys, so that ties and batch sizes
        # never change the result: float bits of values >= 0 order like the values
        order = torch.arange(self.n_seen, self.n_seen + len(labels))
        self.n_seen += len(labels)
        F = self.n_features
        values = torch.cat([self.top_values, acts.t()], 1)
        index = torch.cat([self.top_index, order.expand(F, -1)], 1)
        labs = torch.cat([self.top_labels, labels.expand(F, -1)], 1)
        key = (values.contiguous().view(torch.int32).long() << 32) | (0xFFFFFFFF - (index + 1))
        idx = key.topk(self.top_k, dim=1, sorted=False).indices
        self.top_values, self.top_labels = values.gather(1, idx), labs.gather(1, idx)
        self.top_index = index.gather(1, idx)

    def top_mass(self) -> torch.Tensor:
        """``[F, C]`` activation summed per class over each feature's top-k firing images."""
        out = torch.zeros(self.n_features, self.n_classes, dtype=torch.float64)
        live = (self.top_values > 0) & (self.top_labels >= 0)
        out.view(-1).index_add_(
            0,
            (
                torch.arange(self.n_features)[:, None] * self.n_classes
                + self.top_labels.clamp_min(0)
            )[live],
            self.top_values[live].double(),
        )
        return out

    @classmethod
    def from_activations(
        cls,
        image_acts: np.ndarray | torch.Tensor,
        labels: Sequence[int],
        n_classes: int | None = None,
        top_k: int = 32,
    ) -> ClassActivations:
        """All at once, from a ``[n_images, F]`` matrix (tests, small sets)."""
        acts = torch.as_tensor(np.asarray(image_acts), dtype=torch.float32)
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = int(n_classes if n_classes is not None else int(labels.max()) + 1)
        acc = cls(acts.shape[1], n, top_k=top_k)
        acc.update(acts, labels)
        return acc


def median_class_size(labels: Sequence[int | None], exclude: Sequence[int] = ()) -> int:
    """Median number of images per class (labels in ``exclude`` and ``None`` left out).

    Why: the default number of top images per feature. A feature selective for one class can
    then have a one-class top set; with more top images than a class has, it never could.
    """
    drop = set(exclude)
    counts = Counter(int(y) for y in labels if y is not None and int(y) not in drop)
    return max(1, int(np.median(list(counts.values())))) if counts else 1


__all__ = ["ClassActivations", "median_class_size"]
