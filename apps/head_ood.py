"""Is an image like the data a *head* was fitted on? A small calibrated reference per head.

Why: the bundle's OOD suite (``ood/``) is calibrated on the data the SAE was fitted on, which for
the offline default bundle includes the packaged photos; a motorcycle photo is then "in
distribution" for the SAE while the ``digits`` probe, fitted on handwritten digits only, still
answers "3 (99.9%)". The probe's answer can only be trusted near its own training data, so each
head gets a reference built from the data set it was fitted on (its ``metrics["source"]``): the
mean-pooled SAE codes of its first ``n`` images (ones its fit used), and, as the calibration, the
cosine distance of ``n`` *other* images spread over the whole data set to their k-th nearest
reference image. An image is flagged above the distance that keeps ``tpr`` of those, the same
convention as :mod:`core.ood` (95% of in-distribution images kept). Why calibrate on images
outside the reference, spread over the data set: leave-one-out distances inside the reference,
or distances of the fit's other images only, were too small, and 10-15% of the held-out digits
the app offers as examples (the end of the data set, other writers) were flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from saescope.core.ood.metrics import DEFAULT_TPR, percentile_of, tpr_threshold
from saescope.core.steering import cache_layer
from saescope.core.tokens import TokenKind

N_REFERENCE = 48  # reference and calibration images each (~6 s on 2 cores, once per head)
K_NEAREST = 3


@dataclass(frozen=True)
class HeadOOD:
    """One image against a head's reference."""

    head: str
    source: str
    score: float  # cosine distance to the k-th nearest reference image
    percentile: float  # % of reference images (leave-one-out) scoring at most this
    threshold: float
    tpr: float
    is_ood: bool


@dataclass
class HeadReference:
    """Unit-norm mean SAE codes of a head's training images and their leave-one-out scores."""

    head: str
    source: str
    vectors: np.ndarray  # [n, d_sae] float32, unit norm
    calibration: np.ndarray  # sorted leave-one-out scores
    k: int = K_NEAREST
    tpr: float = DEFAULT_TPR

    @property
    def threshold(self) -> float:
        return tpr_threshold(self.calibration, self.tpr)

    def distance(self, code_mean: np.ndarray) -> float:
        v = _unit(np.asarray(code_mean, np.float32).reshape(1, -1))[0]
        sims = np.sort(self.vectors @ v)[::-1]
        return float(1.0 - sims[min(self.k, len(sims)) - 1])

    def check(self, code_mean: np.ndarray) -> HeadOOD:
        s, t = self.distance(code_mean), self.threshold
        return HeadOOD(
            self.head, self.source, s, percentile_of(self.calibration, s), t, self.tpr, s > t
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _open(source: str, kind: str):
    if kind == "segmentation":
        from saescope.core.sources import open_segmentation_source

        return open_segmentation_source(source)
    from saescope.core.sources import open_source

    return open_source(source)


def _code_means(backbone, sae, images: list, batch: int) -> np.ndarray:
    """Unit-norm mean-pooled SAE codes of the patch tokens of ``images``."""
    means = []
    for a in range(0, len(images), batch):
        cache = cache_layer(backbone, sae, backbone.preprocess(images[a : a + batch]))
        pos = cache.layout.indices([TokenKind.PATCH])
        x = cache.tokens[:, pos].float()
        codes = sae.encode(x.reshape(-1, x.shape[-1])).view(x.shape[0], len(pos), -1)
        means.append(codes.mean(1).float().numpy())
    return _unit(np.concatenate(means).astype(np.float32))


@torch.inference_mode()
def fit_reference(
    backbone,
    sae,
    head: str,
    source: str,
    kind: str,
    n: int = N_REFERENCE,
    k: int = K_NEAREST,
    n_used: int = 0,
    spread: bool = True,
    batch: int = 8,
) -> HeadReference | None:
    """The reference of ``head``: the first ``n`` images of ``source``, calibrated on ``n``
    others spread over the rest of the data set (``spread=False``: over the rest of the images
    its fit used only, ``n_used``; ``2 n`` when unknown).
    ``None`` when the data set cannot be opened (e.g. an ``hf:`` set while offline) or is too
    small."""
    try:
        src = _open(source, kind)
        total = len(src)
        end = total if spread else min(total, max(int(n_used), 2 * n))
        n_ref = min(n, end // 2)
        if n_ref < k + 1 or end - n_ref < 4:
            return None
        cal_idx = np.unique(np.linspace(n_ref, end - 1, min(n, end - n_ref)).round().astype(int))
        ref_images = [src.load(i) for i in range(n_ref)]
        cal_images = [src.load(int(i)) for i in cal_idx]
    except (OSError, ValueError, KeyError, ImportError):
        return None
    vectors = _code_means(backbone, sae, ref_images, batch)
    cal = _code_means(backbone, sae, cal_images, batch)
    kth = -np.sort(-(cal @ vectors.T), axis=1)[:, k - 1]
    return HeadReference(head, source, vectors, np.sort(1.0 - kth), k)


__all__ = ["HeadOOD", "HeadReference", "N_REFERENCE", "fit_reference"]
