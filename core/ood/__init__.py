"""Out-of-distribution (OOD) scores from SAE codes, with raw-embedding and probe baselines.

Why SAE codes: an SAE trained on in-distribution activations explains them with a dictionary of
features, so an image it was not made for should show up as (a) a larger reconstruction error,
(b) activation mass on features that rarely fire in distribution, or (c) a bag of features far from
every in-distribution image's bag. Each of these is also *explainable*: the features that carry
the score are named, which raw-embedding scores cannot offer.

Every scorer follows one interface: ``fit(train)`` on in-distribution summaries, then
``score(summaries)`` -> one number per image, **higher = more OOD**. Summaries
(:class:`ImageSummary`) are computed once per image set by :func:`summarize` (SAE codes, per-image
FVU, mean-pooled layer tokens, final CLS), so every scorer reads the same pass.

- SAE: ``sae_recon`` (per-image FVU of the layer's patch tokens), ``sae_rare`` (activation-weighted
  surprisal ``-log p_j`` of the active features, ``p_j`` = in-distribution firing frequency per
  token), ``sae_knn`` (cosine distance to the k-th nearest in-distribution image in the space of
  mean-pooled codes, FAISS), ``sae_combined`` (mean of the three z-scored on a calibration split);
- raw baselines: ``raw_maha_*`` (Mahalanobis with a shared Ledoit-Wolf covariance,
  class-conditional when labels exist) and ``raw_knn_*`` (cosine k-NN, FAISS) on the mean-pooled
  layer-L tokens (``layer``) and on the final CLS token (``cls``);
- probe baselines: ``probe_msp`` (negative max softmax) and ``probe_energy`` (negative
  log-sum-exp of the logits) of a linear probe fitted on in-distribution labels.

:class:`OODSuite` fits a set of scorers, calibrates them on held-out in-distribution images
(sorted scores for percentiles, the threshold that keeps 95% of in-distribution images) and is
stored in a bundle's ``ood/`` folder as safetensors + JSON + FAISS indices (never pickle).
Metrics: :func:`auroc` (rank based, ties count one half) and :func:`fpr_at_tpr` (the fraction of
OOD images accepted at the threshold that keeps 95% of in-distribution images).

Modules: :mod:`.metrics`, :mod:`.summary` (:func:`summarize`), :mod:`.scorers`, :mod:`.suite`
(:class:`OODSuite`, :func:`score_tokens`) and :mod:`.files` (the suite on disk).
"""

from saescope.core.ood.files import FORMAT, FORMAT_VERSION
from saescope.core.ood.metrics import DEFAULT_TPR, auroc, fpr_at_tpr, percentile_of, tpr_threshold
from saescope.core.ood.scorers import (
    FAMILIES,
    SAE_COMBINED,
    KNNDistance,
    Mahalanobis,
    ProbeScore,
    RareFeatures,
    ReconstructionError,
    Scorer,
    default_scorers,
    ledoit_wolf,
)
from saescope.core.ood.suite import FeatureContribution, OODSuite, ScoreReport, score_tokens
from saescope.core.ood.summary import ImageSummary, summarize

__all__ = [
    "FeatureContribution",
    "ImageSummary",
    "KNNDistance",
    "Mahalanobis",
    "OODSuite",
    "ProbeScore",
    "RareFeatures",
    "ReconstructionError",
    "ScoreReport",
    "Scorer",
    "SAE_COMBINED",
    "auroc",
    "default_scorers",
    "fpr_at_tpr",
    "ledoit_wolf",
    "percentile_of",
    "score_tokens",
    "summarize",
    "tpr_threshold",
    "FAMILIES",
    "DEFAULT_TPR",
    "FORMAT",
    "FORMAT_VERSION",
]
