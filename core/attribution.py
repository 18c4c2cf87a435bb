"""Which SAE features *matter* for a frozen head on selected patches, not which fire most.

The feature that fires most on a selection often does nothing to the head (switching off the
strongest eye feature on 20 eye patches moved 0.0% of saliency pixels). This module ranks the
features by their causal effect instead, in two steps (see :func:`attribute`):

1. **Attribution by gradient x activation, one backward pass.** The layer-L tokens of the selected
   patches are written as ``x + decode(z) - decode(z0)`` with ``z = z0`` the SAE codes (the error
   term ``x - decode(z0)`` held constant, so the forward is exactly the unedited model, as in
   :mod:`core.steering`). ``z`` requires grad; the rest of the model (``run_from``) and the head
   run once; a scalar *objective* of the head's output (below) is differentiated once. For
   feature ``f``: ``attribution[f] = sum_p z[p, f] * dO/dz[p, f]`` over the selected patches, the
   first-order estimate of the objective's change when the feature is switched off there being
   ``-attribution[f]``. Features are ranked by ``|attribution|``.
2. **Confirmation by real ablation.** The top ``confirm`` features are switched off (scale 0 on
   the selected patches, :func:`core.steering.steer`) and the head's actual change is measured
   with the numbers the apps show.

Objectives (``target``), chosen so that a first-order change predicts what the apps report:

- classification (head output ``[B, C]``): the log-probability of the currently predicted class
  (``target=int``: of that class). Log, not probability: at 99.9 % the probability barely moves
  to first order while the log-probability still does, and the ranking is the same.
- segmentation (``[B, C, H, W]``; one channel = ``(1 - p, p)``): the sum over pixels of the
  probability of each pixel's *current* class, i.e. the head's confidence in its own current
  map. Pixels near the decision boundary carry the largest gradients, so features whose removal
  flips pixels rank first; ``target="region"`` sums only over the selected patches' pixels,
  ``target=int`` sums that class's probability over the image.
- any callable ``head_output -> scalar`` (tests use a plain sum for an exactly linear case).

Measured effects (:class:`Ablation`): segmentation -- fraction of pixels whose predicted class
changes (argmax; ``p > 0.5`` for one channel, as the segmentation app counts), fraction of
pixels whose probability moved by more than 0.01 (the browser app's number) and the mean
per-pixel total variation (``|dp|`` for one channel); classification -- the change of the
predicted class's probability, whether the prediction flips, and the total variation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from saescope.core.sae import SAE
from saescope.core.steering import Edit, LayerCache, cache_layer, edit_positions, splice, steer
from saescope.core.tokens import TokenKind, TokenLayout

MOVE_THRESHOLD = 0.01  # |dp| above which the browser app counts a pixel as changed
Objective = Callable[[torch.Tensor], torch.Tensor]


class AttributionError(ValueError):
    """A request that cannot be attributed (no patches, patches off the grid, bad target)."""


@dataclass
class FeatureScore:
    """One feature on the selection: how much it fires and how much it matters (first order)."""

    feature: int
    activation: float  # mean code over the selected tokens (0 where silent)
    n_active: int  # selected tokens where it fires
    attribution: float  # sum_p z * dO/dz
    estimate: float  # first-order change of the objective when switched off (= -attribution)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Ablation:
    """The measured effect of switching one feature off on the selected tokens."""

    feature: int
    estimate: float  # first-order objective change (from the gradient)
    objective_change: float  # measured objective change (same units as ``estimate``)
    metrics: dict  # what the apps show (see the module docstring)
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttributionResult:
    """Both rankings for one selection, and the ablations that confirm the attributed one."""

    kind: str  # "segmentation" or "classification"
    objective: str  # what was differentiated, in words
    objective_value: float
    positions: list[int]  # sequence positions attributed (the selected tokens)
    ranking: list[FeatureScore]  # by |attribution|, largest first
    activation_ranking: list[FeatureScore]  # by mean activation, strongest first
    confirmed: list[Ablation]  # the top ``confirm`` of ``ranking``, really ablated
    head_before: torch.Tensor = field(repr=False)  # the unedited head output
    seconds: dict = field(default_factory=dict)

    def features(self, n: int | None = None) -> list[int]:
        """Feature ids by causal effect (what fills the sliders)."""
        return [s.feature for s in self.ranking[:n]]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "objective": self.objective,
            "objective_value": self.objective_value,
            "n_positions": len(self.positions),
            "ranking": [s.to_dict() for s in self.ranking],
            "activation_ranking": [s.to_dict() for s in self.activation_ranking],
            "confirmed": [a.to_dict() for a in self.confirmed],
            "seconds": dict(self.seconds),
        }


# ------------------------------------------------------------------------------ inputs
def _layer_cache(backbone, sae: SAE, source) -> LayerCache:
    """A :class:`LayerCache` from a cache, a pixel batch ``[1, 3, H, W]`` or a PIL image."""
    if isinstance(source, LayerCache):
        cache = source
    elif isinstance(source, Image.Image):
        cache = cache_layer(backbone, sae, backbone.preprocess([source]))
    elif isinstance(source, torch.Tensor) and source.dim() == 4:
        cache = cache_layer(backbone, sae, source)
    else:
        raise AttributionError(
            "attribute() takes a LayerCache, a pixel batch [1, 3, H, W] or a PIL image, "
            f"got {type(source).__name__}"
        )
    if cache.tokens.shape[0] != 1:
        raise AttributionError(f"attribution works on one image, got {cache.tokens.shape[0]}")
    return cache


def check_patches(
    layout: TokenLayout, patches: Iterable[tuple[int, int]] | np.ndarray | None
) -> list[tuple[int, int]] | np.ndarray | None:
    """The selection, checked: ``None`` = every patch; an empty one or a patch off the grid is
    an :class:`AttributionError` (a ValueError), never an IndexError from deep inside."""
    if patches is None:
        return None
    rows, cols = layout.grid
    if isinstance(patches, np.ndarray) and patches.dtype == bool:
        if patches.shape != (rows, cols):
            raise AttributionError(
                f"patch mask has shape {patches.shape}, the grid is {rows}x{cols}"
            )
        if not patches.any():
            raise AttributionError("no patches selected (the mask is empty)")
        return patches
    out = []
    for item in patches:
        try:
            r, c = (int(v) for v in item)
        except (TypeError, ValueError) as err:
            raise AttributionError(
                f"a patch is a (row, col) pair of integers, got {item!r}"
            ) from err
        if not (0 <= r < rows and 0 <= c < cols):
            raise AttributionError(f"patch ({r}, {c}) is outside the {rows}x{cols} grid")
        out.append((r, c))
    if not out:
        raise AttributionError("no patches selected (empty selection)")
    return sorted(set(out))


def _kind(head, out: torch.Tensor) -> str:
    kind = getattr(head, "kind", None)
    if kind in ("segmentation", "classification"):
        return kind
    if out.dim() == 2:
        return "classification"
    if out.dim() == 4:
        return "segmentation"
    raise AttributionError(
        f"cannot tell the head's task from an output of shape {tuple(out.shape)}"
    )


def class_probs(out: torch.Tensor) -> torch.Tensor:
    """Segmentation output ``[B, C, H, W]`` as class probabilities (one channel -> 1 - p, p)."""
    return torch.cat([1 - out, out], 1) if out.shape[1] == 1 else out


def _region(layout: TokenLayout, patches, size: tuple[int, int]) -> torch.Tensor:
    """Boolean ``[H, W]`` pixel mask of the selected patches (``None`` selection: everything)."""
    rows, cols = layout.grid
    m = torch.zeros(rows, cols)
    if patches is None:
        m[:] = 1
    elif isinstance(patches, np.ndarray):
        m = torch.as_tensor(patches, dtype=torch.float32)
    else:
        for r, c in patches:
            m[r, c] = 1
    return F.interpolate(m[None, None], size=size, mode="nearest")[0, 0] > 0


def make_objective(
    kind: str, before: torch.Tensor, target, layout: TokenLayout, patches
) -> tuple[Objective, str]:
    """The scalar objective of the head output and its description (see the module docstring)."""
    if callable(target):
        return target, getattr(target, "__name__", "custom objective")
    before = before.detach()
    if kind == "classification":
        n = before.shape[1]
        c = int(before[0].argmax()) if target in (None, "auto", "predicted") else target
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n:
            raise AttributionError(f"target class must be in 0..{n - 1} (or 'auto'), got {c!r}")

        def logprob(out: torch.Tensor) -> torch.Tensor:
            return out[0, c].clamp_min(1e-30).log()

        return logprob, f"log-probability of class {c}"
    probs = class_probs(before)
    n = probs.shape[1]
    size = tuple(probs.shape[-2:])
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < n:
            raise AttributionError(f"target class must be in 0..{n - 1}, got {target}")
        return (
            lambda out: class_probs(out)[0, target].sum()
        ), f"total probability of class {target}"
    if target not in (None, "auto", "current", "region"):
        raise AttributionError(
            f"unknown target {target!r}; use 'auto', 'region', a class index or a callable"
        )
    onehot = F.one_hot(probs[0].argmax(0), n).permute(2, 0, 1).to(probs.dtype)
    where = "the image"
    if target == "region":
        onehot = onehot * _region(layout, patches, size).to(probs.dtype)
        where = "the selected patches"

    def confidence(out: torch.Tensor) -> torch.Tensor:
        return (class_probs(out)[0] * onehot).sum()

    return confidence, f"sum over {where} of each pixel's current-class probability"


def head_change(kind: str, before: torch.Tensor, after: torch.Tensor) -> dict:
    """The head's change as the apps report it (see the module docstring)."""
    before, after = before.detach().float(), after.detach().float()
    if kind == "classification":
        b, a = before[0], after[0]
        c = int(b.argmax())
        return {
            "predicted_before": c,
            "predicted_after": int(a.argmax()),
            "flipped": bool(int(a.argmax()) != c),
            "prob_before": float(b[c]),
            "prob_change": float(a[c] - b[c]),
            "total_variation": 0.5 * float((a - b).abs().sum()),
        }
    pb, pa = class_probs(before)[0], class_probs(after)[0]
    changed = pb.argmax(0) != pa.argmax(0)
    tv = 0.5 * (pa - pb).abs().sum(0)  # per pixel; |dp| for one channel
    moved = (after - before).abs().amax(1)[0] > MOVE_THRESHOLD
    return {
        "changed_fraction": float(changed.float().mean()),
        "moved_fraction": float(moved.float().mean()),
        "mean_abs_change": float(tv.mean()),
        "max_abs_change": float(tv.max()),
    }


# ------------------------------------------------------------------------------ the two steps
def _gradient_pass(backbone, sae: SAE, head, cache: LayerCache, positions, objective_of):
    """One forward from layer L with the codes as a leaf, one backward: ``(z0, grad, out, O)``.

    Gradients are taken with ``torch.autograd.grad`` with respect to ``z`` only, so nothing is
    accumulated into any parameter's ``.grad``; ``inference_mode(False)`` lets this run from
    inside a caller's inference mode (the apps' engine)."""
    with torch.inference_mode(False), torch.enable_grad():
        tokens = cache.tokens.clone()  # an inference tensor cannot enter an autograd graph
        x = tokens[:, positions]
        z0 = sae.encode(x.detach()).detach().clone()
        z = z0.clone().requires_grad_(True)
        delta = sae.decode(z) - sae.decode(z0)
        edited = splice(tokens, positions, x + delta.to(x.dtype))
        final = backbone.run_from(cache.layer, edited)
        out = head(final, cache.layout)
        objective, what = objective_of(out)
        value = objective(out)
        if value.dim() != 0:
            raise AttributionError("the objective must be a scalar")
        (grad,) = torch.autograd.grad(value, z, allow_unused=True)
    grad = torch.zeros_like(z0) if grad is None else grad.detach()
    return z0, grad, out.detach(), final.detach(), objective, what, float(value.detach())


def measure_ablation(
    backbone,
    sae: SAE,
    head,
    cache: LayerCache,
    feature: int,
    patches=None,
    *,
    kinds: Sequence[TokenKind] | str = "patch",
    head_before: torch.Tensor | None = None,
    objective: Objective | None = None,
    scale: float = 0.0,
) -> tuple[dict, float]:
    """Really edit ``feature`` (``scale`` on the selected tokens, :func:`core.steering.steer`) and
    return ``(metrics, objective change)``; the objective change is NaN without an objective."""
    with torch.inference_mode():
        res = steer(backbone, sae, cache, [Edit(int(feature), scale=scale)], patches, kinds)
        before = head(res.final_before, cache.layout) if head_before is None else head_before
        after = head(res.final_after, cache.layout)
    kind = _kind(head, before)
    change = float("nan")
    if objective is not None:
        change = float(objective(after) - objective(before))
    return head_change(kind, before, after), change


def attribute(
    backbone,
    sae: SAE,
    head,
    source: LayerCache | torch.Tensor | Image.Image,
    patches: Iterable[tuple[int, int]] | np.ndarray | None,
    *,
    target: str | int | Objective | None = "auto",
    top: int = 10,
    confirm: int = 3,
    kinds: Sequence[TokenKind] | str = "patch",
    order: str = "abs",
) -> AttributionResult:
    """Rank SAE features on ``patches`` (``None``: all) by their effect on ``head``.

    ``source`` is a :class:`~core.steering.LayerCache` (the apps keep one per image), a pixel
    batch or a PIL image (run up to the SAE's layer here). Cost: one forward from layer L and one
    backward, plus ``confirm`` ablation forwards. See the module docstring for the objective.
    ``order="abs"`` ranks by ``|attribution|`` (any move of the head); ``"support"`` by signed
    attribution, largest first: the features that hold up the head's current answer, whose
    removal lowers the objective (what flips a prediction).
    """
    if order not in ("abs", "support"):
        raise AttributionError(f"order must be 'abs' or 'support', got {order!r}")
    if top < 1 or confirm < 0:
        raise AttributionError(f"top must be >= 1 and confirm >= 0, got {top}, {confirm}")
    t0 = time.perf_counter()
    cache = _layer_cache(backbone, sae, source)
    patches = check_patches(cache.layout, patches)
    positions = edit_positions(cache.layout, patches, kinds)
    t1 = time.perf_counter()

    def objective_of(out):
        return make_objective(_kind(head, out), out, target, cache.layout, patches)

    z0, grad, before, final, objective, what, value = _gradient_pass(
        backbone, sae, head, cache, positions, objective_of
    )
    if cache.base_final is None:  # the ablations below reuse it
        cache.base_final = final
    kind = _kind(head, before)
    t2 = time.perf_counter()
    z, g = z0[0], grad[0]
    attribution = (z * g).sum(0)
    mean = z.mean(0)
    active = (z > 0).sum(0)

    def score(f: int) -> FeatureScore:
        a = float(attribution[f])
        return FeatureScore(f, float(mean[f]), int(active[f]), a, -a)

    fires = active > 0
    n_fire = int(fires.sum())
    key = attribution.abs() if order == "abs" else attribution
    by_attr = torch.where(fires, key, torch.full_like(attribution, -float("inf")))
    ranking = [score(int(f)) for f in by_attr.topk(min(top, n_fire)).indices] if n_fire else []
    by_act = mean.topk(min(top, n_fire)).indices if n_fire else []
    activation_ranking = [score(int(f)) for f in by_act]
    t3 = time.perf_counter()
    confirmed = []
    for s in ranking[:confirm]:
        ta = time.perf_counter()
        metrics, change = measure_ablation(
            backbone,
            sae,
            head,
            cache,
            s.feature,
            patches,
            kinds=kinds,
            head_before=before,
            objective=objective,
        )
        confirmed.append(Ablation(s.feature, s.estimate, change, metrics, time.perf_counter() - ta))
    t4 = time.perf_counter()
    return AttributionResult(
        kind=kind,
        objective=what,
        objective_value=value,
        positions=positions,
        ranking=ranking,
        activation_ranking=activation_ranking,
        confirmed=confirmed,
        head_before=before,
        seconds={
            "layer_forward_s": t1 - t0,
            "gradient_s": t2 - t1,
            "ranking_s": t3 - t2,
            "ablations_s": t4 - t3,
            "total_s": t4 - t0,
        },
    )


__all__ = [
    "Ablation",
    "AttributionError",
    "AttributionResult",
    "FeatureScore",
    "MOVE_THRESHOLD",
    "attribute",
    "check_patches",
    "class_probs",
    "head_change",
    "make_objective",
    "measure_ablation",
]
