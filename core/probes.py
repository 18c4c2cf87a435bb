"""Linear probes: frozen task heads fitted on a frozen backbone's final tokens.

A probe is what makes "edit a feature, watch the task change" possible for any backbone: it is a
:class:`~core.heads.Head`, so :func:`core.steering.steer` runs it after the edited layer like any
other head. Two kinds:

- **classification** reads one vector per image: the CLS token (``pooling="cls"``, the default),
  the mean of the patch tokens (``"mean"``), or both concatenated (``"cls+mean"``);
  output: class probabilities ``[B, C]``;
- **segmentation** reads every patch token (a 1x1 linear map on the patch grid), upsampled
  bilinearly to pixels; output: class probabilities ``[B, C, H, W]``.

Features are standardised with the training set's mean and standard deviation (stored in the
probe), then a multinomial logistic regression with L2 is fitted by full-batch L-BFGS: convex,
deterministic, and seconds on a CPU for ~1e5 x 384 features. Held-out accuracy is measured on
whole images the probe never saw (the split is by image, also for segmentation patches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from saescope.core.heads.base import Head, register_head
from saescope.core.tokens import TokenKind, TokenLayout

POOLINGS = ("cls", "mean", "cls+mean")
PROBE_KINDS = ("classification", "segmentation")


def pool_tokens(final_tokens: torch.Tensor, layout: TokenLayout, pooling: str) -> torch.Tensor:
    """[B, T, D] final tokens -> [B, D'] image vectors for a classification probe."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    parts = []
    if "cls" in pooling:
        if layout.n_cls < 1:
            raise ValueError("this backbone has no CLS token; use pooling='mean'")
        parts.append(layout.select(final_tokens, [TokenKind.CLS])[:, 0])
    if "mean" in pooling:
        parts.append(layout.select(final_tokens, [TokenKind.PATCH]).mean(1))
    return torch.cat(parts, -1)


@register_head
class LinearProbe(Head):
    """Standardise, then one linear layer: a frozen classification or segmentation head."""

    def __init__(
        self,
        d_in: int,
        class_names: Sequence[str],
        kind: str = "classification",
        pooling: str = "cls",
        patch_size: int = 14,
        name: str = "probe",
        backbone_id: str | None = None,
        metrics: dict | None = None,
    ) -> None:
        super().__init__()
        if kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe kind {kind!r}; use one of {PROBE_KINDS}")
        if len(class_names) < 2:
            raise ValueError("a probe needs at least two classes")
        if kind == "classification" and pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
        self.kind, self.name, self.backbone_id = kind, name, backbone_id
        self.class_names = [str(c) for c in class_names]
        self.pooling = pooling if kind == "classification" else "patch"
        self.patch_size = int(patch_size)
        self.d_in = int(d_in)
        self.d_features = self.d_in * (2 if self.pooling == "cls+mean" else 1)
        self.linear = nn.Linear(self.d_features, len(self.class_names))
        self.register_buffer("mean", torch.zeros(self.d_features))
        self.register_buffer("std", torch.ones(self.d_features))
        self.metrics = dict(metrics or {})
        self.config = {
            "d_in": self.d_in,
            "class_names": self.class_names,
            "kind": kind,
            "pooling": pooling,
            "patch_size": self.patch_size,
            "name": name,
            "backbone_id": backbone_id,
            "metrics": self.metrics,
        }

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "output": "probability",
            "classes": self.class_names,
            "pooling": self.pooling,
            "metrics": self.metrics,
        }

    # -- computation -------------------------------------------------------------------------
    def features(self, final_tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """What the probe reads: [B, D'] (classification) or [B, rows * cols, D] (segmentation)."""
        if final_tokens.shape[-1] != self.d_in:
            from saescope.core.heads.base import HeadError

            raise HeadError(
                f"probe {self.name!r} was fitted on {self.d_in}-d tokens, got "
                f"{final_tokens.shape[-1]}-d (a probe from another backbone?)"
            )
        if self.kind == "classification":
            return pool_tokens(final_tokens, layout, self.pooling)
        return layout.select(final_tokens, [TokenKind.PATCH])

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear((feats.to(self.mean.dtype) - self.mean) / self.std)

    def forward(
        self, final_tokens: torch.Tensor, layout: TokenLayout, return_logits: bool = False
    ) -> torch.Tensor:
        feats = self.features(final_tokens, layout)
        if self.kind == "classification":
            logits = self.logits_from_features(feats)
            return logits if return_logits else torch.softmax(logits, -1)
        b = final_tokens.shape[0]
        rows, cols = layout.grid
        logits = (
            self.logits_from_features(feats).transpose(1, 2).reshape(b, self.n_classes, rows, cols)
        )
        size = (rows * self.patch_size, cols * self.patch_size)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits if return_logits else torch.softmax(logits, 1)


# ------------------------------------------------------------------------------ fitting
@dataclass
class ProbeReport:
    """Held-out quality of a probe (accuracy on images it was not fitted on)."""

    kind: str
    n_classes: int
    n_train: int  # rows (images, or patches for segmentation)
    n_test: int
    n_train_images: int
    n_test_images: int
    train_accuracy: float
    test_accuracy: float
    test_balanced_accuracy: float  # mean per-class recall over classes present in the test set
    chance_accuracy: float  # majority class of the training set, measured on the test set
    l2: float
    per_class_recall: dict = field(default_factory=dict)
    test_miou: float | None = None  # segmentation only
    pixel_accuracy: float | None = None  # segmentation only, when masks are given

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        s = (
            f"{self.kind} probe, {self.n_classes} classes: held-out accuracy "
            f"{self.test_accuracy:.3f} (balanced {self.test_balanced_accuracy:.3f}, chance "
            f"{self.chance_accuracy:.3f}) on {self.n_test_images} unseen images; train "
            f"{self.train_accuracy:.3f}"
        )
        if self.test_miou is not None:
            s += f"; patch mIoU {self.test_miou:.3f}"
        if self.pixel_accuracy is not None:
            s += f"; pixel accuracy {self.pixel_accuracy:.3f}"
        return s


def split_by_group(groups: np.ndarray, test_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean test mask over rows such that no group (image) is on both sides."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError("need at least two images to hold some out")
    rng = np.random.default_rng(seed)
    n_test = min(len(uniq) - 1, max(1, round(test_fraction * len(uniq))))
    test_groups = rng.choice(uniq, n_test, replace=False)
    return np.isin(groups, test_groups)


def _lbfgs_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    weights: torch.Tensor | None,
    max_iter: int,
) -> nn.Linear:
    """Multinomial logistic regression on standardised ``x`` (L2 on the weights, not the bias)."""
    torch.manual_seed(0)
    lin = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(
        lin.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y, reduction="none")
        loss = (loss * weights).sum() / weights.sum() if weights is not None else loss.mean()
        loss = loss + 0.5 * l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin


def _recalls(pred: np.ndarray, y: np.ndarray, n_classes: int) -> dict[int, float]:
    return {c: float((pred[y == c] == c).mean()) for c in range(n_classes) if (y == c).any()}


def _miou(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    ious = []
    for c in range(n_classes):
        union = ((pred == c) | (y == c)).sum()
        if (y == c).any() and union:
            ious.append(((pred == c) & (y == c)).sum() / union)
    return float(np.mean(ious)) if ious else 0.0


def fit_linear_probe(
    features: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    *,
    kind: str = "classification",
    groups: np.ndarray | None = None,
    test_fraction: float = 0.2,
    l2: float = 1e-3,
    balanced: bool = False,
    max_iter: int = 100,
    seed: int = 0,
    pooling: str = "cls",
    patch_size: int = 14,
    name: str = "probe",
    backbone_id: str | None = None,
    d_in: int | None = None,
    test_mask: np.ndarray | None = None,
) -> tuple[LinearProbe, ProbeReport]:
    """Fit a :class:`LinearProbe` on ``features`` [N, D'] with integer ``labels`` [N].

    ``groups`` [N] says which image each row comes from (defaults to one image per row); whole
    images are held out for the test accuracy. ``balanced`` weights rows inversely to their
    class frequency (useful for segmentation, where background dominates). Rows labelled ``-1``
    are ignored (e.g. patches without a majority label). ``test_mask`` [N] fixes the held-out
    rows instead (it must not split an image).
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"features must be [N, D] and labels [N]; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n_classes = len(class_names)
    if len(y) and (y.max() >= n_classes or y.min() < -1):
        raise ValueError(
            f"labels must lie in [0, {n_classes}) (or -1 to ignore); got "
            f"{int(y.min())}..{int(y.max())}"
        )
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if test_mask is None:
        test_mask = split_by_group(groups, test_fraction, seed)
    keep = (y >= 0).numpy()
    x, y, groups = x[keep], y[keep], groups[keep]
    test = torch.as_tensor(np.asarray(test_mask, bool)[keep])
    if len(torch.unique(y)) < 2:
        raise ValueError("the labelled data has fewer than two classes; nothing to separate")
    if not test.any() or test.all():
        raise ValueError("the held-out split left no labelled rows on one side; use more images")
    xtr, ytr = x[~test], y[~test]
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    weights = None
    if balanced:
        counts = torch.bincount(ytr, minlength=n_classes).float()
        weights = (1.0 / counts.clamp_min(1))[ytr]
    lin = _lbfgs_logreg((xtr - mean) / std, ytr, n_classes, l2, weights, max_iter)
    d_feat = x.shape[1]
    if d_in is None:
        d_in = d_feat // 2 if (kind == "classification" and pooling == "cls+mean") else d_feat
    probe = LinearProbe(
        d_in,
        class_names,
        kind=kind,
        pooling=pooling,
        patch_size=patch_size,
        name=name,
        backbone_id=backbone_id,
    )
    if probe.d_features != d_feat:
        raise ValueError(
            f"features have {d_feat} dims but a {pooling!r} probe on {d_in}-d tokens "
            f"reads {probe.d_features}"
        )
    with torch.no_grad():
        probe.linear.load_state_dict(lin.state_dict())
        probe.mean.copy_(mean)
        probe.std.copy_(std)
        pred = probe.logits_from_features(x).argmax(-1).numpy()
    yn, tn = y.numpy(), test.numpy()
    recalls = _recalls(pred[tn], yn[tn], n_classes)
    majority = int(torch.bincount(ytr, minlength=n_classes).argmax())
    report = ProbeReport(
        kind=kind,
        n_classes=n_classes,
        n_train=int((~tn).sum()),
        n_test=int(tn.sum()),
        n_train_images=len(np.unique(groups[~tn])),
        n_test_images=len(np.unique(groups[tn])),
        train_accuracy=float((pred[~tn] == yn[~tn]).mean()),
        test_accuracy=float((pred[tn] == yn[tn]).mean()),
        test_balanced_accuracy=float(np.mean(list(recalls.values()))) if recalls else 0.0,
        chance_accuracy=float((yn[tn] == majority).mean()),
        l2=l2,
        per_class_recall={probe.class_names[c]: r for c, r in recalls.items()},
        test_miou=_miou(pred[tn], yn[tn], n_classes) if kind == "segmentation" else None,
    )
    probe.metrics = report.to_dict()
    probe.config["metrics"] = probe.metrics
    return probe.eval().requires_grad_(False), report


def majority_patch_labels(
    mask: np.ndarray,
    grid: tuple[int, int],
    patch_size: int,
    ignore: int = -1,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """Patch label = the majority pixel label inside the patch ([rows, cols] int64).

    ``mask`` is the per-pixel label map already cropped like the image ([rows * p, cols * p]).
    Pixels labelled ``ignore`` do not vote; a patch whose winner covers less than
    ``min_fraction`` of its pixels (or has no voting pixel) gets ``ignore``.
    """
    rows, cols = grid
    if mask.shape != (rows * patch_size, cols * patch_size):
        raise ValueError(f"mask {mask.shape} does not match the patch grid {grid} x {patch_size}px")
    blocks = (
        mask.reshape(rows, patch_size, cols, patch_size)
        .transpose(0, 2, 1, 3)
        .reshape(rows, cols, -1)
    )
    out = np.full((rows, cols), ignore, np.int64)
    for r in range(rows):
        for c in range(cols):
            vals = blocks[r, c]
            vals = vals[vals != ignore]
            if len(vals):
                counts = np.bincount(vals)
                win = int(counts.argmax())
                if counts[win] >= min_fraction * patch_size * patch_size:
                    out[r, c] = win
    return out


__all__ = [
    "LinearProbe",
    "POOLINGS",
    "PROBE_KINDS",
    "ProbeReport",
    "fit_linear_probe",
    "majority_patch_labels",
    "pool_tokens",
    "split_by_group",
]
