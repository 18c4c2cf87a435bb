"""``saescope steer-eval``: does editing a feature change what it should, and only that?

For every image: the frozen segmentation head (the offline model's saliency decoder) gives a
foreground mask; the target patches are the foreground ones. The feature is chosen
automatically: the one with the largest activation summed over the target patches. It is
suppressed (scaled to 0) on the target patches, through :func:`core.steering.steer`. Two controls
get exactly the same token budget:

- **random direction**: each edited token is moved by a random vector with the same norm as the
  feature edit's change on that token;
- **random feature**: a feature drawn at random among those active on the target patches, also
  suppressed there.

Reported per method: the mean absolute change of the head's probability inside the target region
and outside it, and the fraction of target / other pixels whose mask (p > 0.5) flips; ratios of
the chosen feature's target change to the controls'. Mean and standard deviation over images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saescope.core.steering import Edit, cache_layer, edit_positions, splice, steer
from saescope.train.cli import SeedOption, add_step


@dataclass
class ImageResult:
    image_id: str
    feature: int
    random_feature: int
    n_target: int
    # method -> {"target": float, "other": float, "target_flip": float, "other_flip": float}
    rows: dict


def _as_distribution(prob: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] class probabilities; a 1-channel head gives p(foreground) -> (1 - p, p)."""
    return torch.cat([1 - prob, prob], 1) if prob.shape[1] == 1 else prob


def foreground(prob: torch.Tensor, background: int = 0) -> torch.Tensor:
    """[B, 1, H, W] probability of "not background" (the saliency itself for a 1-channel head)."""
    return prob if prob.shape[1] == 1 else 1 - prob[:, background : background + 1]


def _region_change(before: torch.Tensor, after: torch.Tensor, region: torch.Tensor) -> dict:
    """Per-pixel total-variation change of the class distribution (= |delta p| for a 1-channel
    head) and class flips (argmax changes), inside ``region`` (bool [H, W]) and outside it."""
    b, a = _as_distribution(before), _as_distribution(after)
    d = 0.5 * (a - b).abs().sum(1)[0]
    flips = (a.argmax(1) != b.argmax(1))[0]
    inside, outside = region, ~region
    return {
        "target": float(d[inside].mean()) if inside.any() else 0.0,
        "other": float(d[outside].mean()) if outside.any() else 0.0,
        "target_flip": float(flips[inside].float().mean()) if inside.any() else 0.0,
        "other_flip": float(flips[outside].float().mean()) if outside.any() else 0.0,
    }


@torch.inference_mode()
def _random_direction_after(
    backbone, sae, cache, positions: list[int], delta: torch.Tensor, head, gen: torch.Generator
) -> torch.Tensor:
    """Head output when each edited token moves by a random vector of the edit's own norm."""
    r = torch.randn(delta.shape, generator=gen, dtype=delta.dtype)
    r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12) * delta.norm(dim=-1, keepdim=True)
    tokens = splice(cache.tokens, positions, cache.tokens[:, positions] + r)
    return head(backbone.run_from(cache.layer, tokens), cache.layout)


def evaluate_image(
    backbone,
    sae,
    head,
    image,
    image_id: str,
    gen: torch.Generator,
    threshold: float = 0.5,
    background: int = 0,
) -> ImageResult | None:
    """One image; ``None`` when the head finds no foreground (or only foreground) patches.

    The target is the patches the head calls foreground (saliency > ``threshold``, or for a
    multi-class head, probability of not being class ``background`` > ``threshold``)."""
    pixels = backbone.preprocess([image])
    cache = cache_layer(backbone, sae, pixels)
    base = steer(backbone, sae, cache, [], head=head)
    prob = base.head_before
    rows_, cols_ = cache.layout.grid
    fg = foreground(prob, background)
    patch_fg = torch.nn.functional.adaptive_avg_pool2d(fg, (rows_, cols_))[0, 0] > threshold
    n_target = int(patch_fg.sum())
    if n_target == 0 or n_target == rows_ * cols_:
        return None
    patches = patch_fg.numpy()
    region = torch.nn.functional.interpolate(
        patch_fg[None, None].float(), size=prob.shape[-2:], mode="nearest"
    )[0, 0].bool()
    positions = edit_positions(cache.layout, patches)
    codes = sae.encode(cache.tokens[:, positions])[0]  # [n_target, d_sae]
    summed = codes.sum(0)
    feature = int(summed.argmax())
    active = torch.nonzero(summed > 0).flatten().tolist()
    others = [f for f in active if f != feature] or [feature]
    random_feature = int(others[int(torch.randint(len(others), (1,), generator=gen))])
    chosen = steer(backbone, sae, cache, [Edit(feature, scale=0.0)], patches=patches, head=head)
    delta = chosen.tokens_after[:, positions] - cache.tokens[:, positions]
    rand_dir = _random_direction_after(backbone, sae, cache, positions, delta, head, gen)
    rand_feat = steer(
        backbone, sae, cache, [Edit(random_feature, scale=0.0)], patches=patches, head=head
    )
    rows = {
        "chosen feature": _region_change(prob, chosen.head_after, region),
        "random direction (same norm)": _region_change(prob, rand_dir, region),
        "random active feature": _region_change(prob, rand_feat.head_after, region),
    }
    return ImageResult(image_id, feature, random_feature, n_target, rows)


def summarize(results: list[ImageResult]) -> dict:
    methods = list(results[0].rows)
    table = {}
    for m in methods:
        table[m] = {
            k: (
                float(np.mean([r.rows[m][k] for r in results])),
                float(np.std([r.rows[m][k] for r in results])),
            )
            for k in ("target", "other", "target_flip", "other_flip")
        }
    chosen = np.array([r.rows["chosen feature"]["target"] for r in results])
    ratios = {}
    for m in methods[1:]:
        ctrl = np.array([r.rows[m]["target"] for r in results])
        ratios[m] = {
            "ratio_of_means": float(chosen.mean() / max(ctrl.mean(), 1e-12)),
            "median_per_image_ratio": float(np.median(chosen / np.maximum(ctrl, 1e-12))),
        }
    return {"n_images": len(results), "table": table, "ratios": ratios}


def markdown(summary: dict, title: str) -> str:
    lines = [
        "## Steering evaluation (`saescope steer-eval`)\n",
        title + "\n",
        "| intervention on the target (foreground) patches | change in target region | "
        "change elsewhere | target mask flips | other mask flips |",
        "|---|---|---|---|---|",
    ]
    for m, v in summary["table"].items():
        lines.append(
            f"| {m} | {v['target'][0]:.4f} ± {v['target'][1]:.4f} | "
            f"{v['other'][0]:.4f} ± {v['other'][1]:.4f} | {v['target_flip'][0]:.2%} | "
            f"{v['other_flip'][0]:.2%} |"
        )
    lines.append("")
    for m, r in summary["ratios"].items():
        lines.append(
            f"- chosen feature vs {m}: **{r['ratio_of_means']:.2f}x** the target change "
            f"(median per-image ratio {r['median_per_image_ratio']:.2f}x)"
        )
    lines.append(
        f"\nMean ± standard deviation over {summary['n_images']} images; changes are mean "
        "absolute differences of the head's foreground probability (for a multi-class head, "
        "the total-variation change of the per-pixel class distribution; flips are "
        "changes of the predicted class)."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class SteerEvalConfig(SeedOption):
    """The options of ``saescope steer-eval``."""

    bundle: str | None = None
    """bundle (default: the offline default bundle)"""
    head: str | None = None
    """segmentation head of the bundle (default: its first, e.g. saliency; or a segmentation
    probe such as digit-scenes)"""
    background: str = "background"
    """multi-class heads: the class whose complement is the target region"""
    source: str | None = None
    """images (default: builtin:photos?views=2, or held-out digit scenes for the digit-scenes
    probe)"""
    max_images: int = 50
    """images to evaluate (those without both foreground and background patches are skipped)"""
    out: str | None = None
    """write the summary JSON (with per-image results) to this file"""
    results_md: bool = False
    """write the table to bench/RESULTS.md"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "steer-eval",
        SteerEvalConfig,
        run,
        help="quantitative steering test against random controls",
        description=__doc__.split("\n\n")[0] + "\n\nSuppresses the automatically chosen "
        "feature on the foreground patches and compares with\na same-norm random direction "
        "and a random active feature.",
    )


def _open_images(spec: str, max_images: int):
    """An image source; segmentation specs (digit scenes, masks folders) work too."""
    from saescope.core.sources import SEG_BUILTINS, open_segmentation_source, open_source

    if spec.startswith("builtin:") and spec[8:].split("?")[0] in SEG_BUILTINS:
        return open_segmentation_source(spec, max_images=max_images)
    return open_source(spec, max_images=max_images)


def run(cfg: SteerEvalConfig) -> int:
    from tqdm.auto import tqdm

    from saescope.core.bundle import Bundle
    from saescope.train.default_bundle import ensure_default_bundle

    bundle = Bundle.load(cfg.bundle or ensure_default_bundle())
    seg_heads = (
        [n for n in bundle.head_names if bundle.load_head(n).kind == "segmentation"]
        if bundle.head_names
        else []
    )
    if not seg_heads:
        raise ValueError(f"bundle {bundle.name} has no segmentation head to evaluate steering with")
    name = cfg.head or seg_heads[0]
    if name not in bundle.head_names:
        raise ValueError(
            f"bundle {bundle.name} has no head {name!r} (it has: {', '.join(bundle.head_names)})"
        )
    head = bundle.load_head(name)
    if head.kind != "segmentation":
        raise ValueError(
            f"head {name!r} is a {head.kind} head; steer-eval needs a segmentation "
            f"head ({', '.join(seg_heads)})"
        )
    background = 0
    classes = getattr(head, "class_names", None)
    if classes and len(classes) > 1:
        if cfg.background not in classes:
            raise ValueError(
                f"head {name!r} has no class {cfg.background!r} (classes: "
                f"{', '.join(classes)}); pass --background"
            )
        background = classes.index(cfg.background)
    spec = cfg.source or (
        "builtin:digit-scenes?seed=1" if name == "digit-scenes" else "builtin:photos?views=2"
    )
    backbone, sae = bundle.backbone, bundle.sae
    gen = torch.Generator().manual_seed(cfg.seed)
    source = _open_images(spec, cfg.max_images)
    results = []
    for image_id, image in tqdm(source, total=len(source), desc="steer-eval", unit="img"):
        if isinstance(image, Exception):
            continue
        r = evaluate_image(backbone, sae, head, image, image_id, gen, background=background)
        if r is not None:
            results.append(r)
    if not results:
        raise ValueError("no image had both foreground and background patches")
    summary = summarize(results)
    title = (
        f"Bundle **{bundle.title}** (SAE {sae.cfg.name}), head: {head.name}; images "
        f"`{spec}` ({len(results)} with both foreground and background)."
    )
    print(markdown(summary, title))
    if cfg.out:
        Path(cfg.out).write_text(
            json.dumps({**summary, "per_image": [r.__dict__ for r in results]}, indent=2)
        )
    if cfg.results_md:
        from saescope.train.results_md import write_section

        section = "steer_eval" if name == "saliency" else f"steer_eval_{name}"
        write_section(section, markdown(summary, title), summary)
    return 0
