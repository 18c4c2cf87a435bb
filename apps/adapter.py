"""How the apps read a bundle: loading, exemplars, statistics, related and matched features.

Several bundle components are optional (exemplars, FAISS indices, cross-model matches), so each
accessor here returns ``None``/``[]`` or an exact fallback (a decoder scan instead of the index,
activation correlation instead of precomputed matches) rather than failing: an app never crashes
because a bundle lacks an optional component. What the apps derive from a bundle is memoised in
the bundle's public ``memo`` dict, for as long as the bundle lives. Heat-maps and patch
search come from :mod:`saescope.core.heatmap` and :mod:`saescope.core.search`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from saescope.core.bundle import Bundle, BundleError
from saescope.core.fileio import atomic_path

log = logging.getLogger(__name__)

# Environment variables read by the apps and the Spaces (also documented in spaces/*/README.md).
ENV_BUNDLE = "SAESCOPE_BUNDLE"
ENV_LEFT = "SAESCOPE_LEFT_BUNDLE"
ENV_RIGHT = "SAESCOPE_RIGHT_BUNDLE"

# Online comparison defaults (CLIP ViT-B/16 vs DINOv2 ViT-B/14), used when the network is there.
ONLINE_LEFT = os.environ.get("SAESCOPE_ONLINE_LEFT", "saescope/clip-vit-b16-sae")
ONLINE_RIGHT = os.environ.get("SAESCOPE_ONLINE_RIGHT", "saescope/dinov2-vit-b14-sae")


class AppSetupError(RuntimeError):
    """The app cannot start (no bundle, broken bundle); the message says what to do."""


# ------------------------------------------------------------------------------ bundles
def load_bundle(spec: str | os.PathLike | Bundle | None, verify: bool = True) -> Bundle:
    """A bundle from a folder or Hub id; ``None`` means the offline default bundle."""
    if isinstance(spec, Bundle):
        return spec
    if spec is None or str(spec) == "":
        spec = default_bundle_path()
    try:
        return Bundle.load(spec, verify=verify)
    except BundleError as err:
        raise AppSetupError(str(err)) from err


def default_bundle_path() -> Path:
    """The offline default bundle (built once and cached by ``train.default_bundle``)."""
    from saescope.train.default_bundle import ensure_default_bundle

    return Path(ensure_default_bundle())


def default_pair_paths() -> tuple[Path, Path]:
    """Two offline bundles (two layers of the offline model) for the comparison app."""
    from saescope.train.default_bundle import ensure_default_pair

    left, right = ensure_default_pair()
    return Path(left), Path(right)


def bundle_title(bundle: Bundle) -> str:
    """A human label: the bundle's title, else model name + layer. Never invents a model name."""
    title = bundle.manifest.get("title")
    if title:
        return str(title)
    model = bundle.model
    name = model.get("display_name") or model.get("model_id") or bundle.name
    layer = model.get("layer", bundle.manifest.get("layer"))
    return f"{name} — layer {layer}" if layer is not None else str(name)


def bundle_layer(bundle: Bundle) -> int | None:
    layer = bundle.model.get("layer", bundle.manifest.get("layer"))
    if layer is None:
        layer = bundle.sae.cfg.layer
    return None if layer is None else int(layer)


# ------------------------------------------------------------------------------ exemplars + stats
def exemplars(bundle: Bundle):
    """The bundle's exemplars (``bundle.exemplars``), or ``None`` when it ships none or they
    are unreadable (said once in the log; the app stays usable)."""
    memo = bundle.memo
    if "exemplars" in memo:
        return memo["exemplars"]
    ex = None
    if bundle.has("exemplars"):
        try:
            ex = bundle.exemplars
        except Exception as err:  # a broken component: say so once, keep the app usable
            log.warning("bundle %s: exemplars unreadable (%s)", bundle.name, err)
    memo["exemplars"] = ex
    return ex


@dataclass
class FeatureStats:
    """Per-feature statistics as numpy arrays (all ``[F]`` except the histogram ``[F, bins]``)."""

    frequency: np.ndarray
    mean: np.ndarray
    mean_active: np.ndarray
    max: np.ndarray
    histogram: np.ndarray | None = None
    bin_edges: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return int(len(self.frequency))

    def of(self, feature: int) -> dict[str, Any]:
        f = int(feature)
        out: dict[str, Any] = {
            "frequency": float(self.frequency[f]),
            "mean": float(self.mean[f]),
            "mean_active": float(self.mean_active[f]),
            "max": float(self.max[f]),
        }
        if self.histogram is not None and self.bin_edges is not None:
            out["histogram"] = self.histogram[f]
            out["bin_edges"] = self.bin_edges
        return out


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def stats(bundle: Bundle) -> FeatureStats | None:
    """Frequency, mean activation, max and histogram of every feature, or ``None``."""
    memo = bundle.memo
    if "stats" in memo:
        return memo["stats"]
    ex = exemplars(bundle)  # Exemplars.stats: every feature's statistics as tensors
    raw = getattr(ex, "stats", None) if ex is not None else None
    out = None
    if raw is not None:
        get = (lambda k: raw.get(k)) if isinstance(raw, dict) else (lambda k: getattr(raw, k, None))
        freq = get("frequency")
        if freq is not None:
            freq = _np(freq).astype(np.float64)
            mean = get("mean")
            mean = _np(mean).astype(np.float64) if mean is not None else np.zeros_like(freq)
            mean_active = get("mean_active")
            mean_active = (
                _np(mean_active).astype(np.float64)
                if mean_active is not None
                else np.where(freq > 0, mean / np.maximum(freq, 1e-12), 0.0)
            )
            mx = get("max")
            mx = _np(mx).astype(np.float64) if mx is not None else mean_active
            hist, edges = get("histogram"), get("bin_edges")
            out = FeatureStats(
                freq,
                mean,
                mean_active,
                mx,
                None if hist is None else _np(hist),
                None if edges is None else _np(edges).astype(np.float64),
            )
    memo["stats"] = out
    return out


def top_exemplars(
    bundle: Bundle, feature: int, n: int = 16
) -> list[tuple[int, str, float, np.ndarray]]:
    """``[(image_index, image_id, value, patch_map [rows, cols])]`` best first; [] if none."""
    ex = exemplars(bundle)
    if ex is None:
        return []
    return [
        (int(e[0]), str(e[1]), float(e[2]), np.asarray(e[3], np.float32))
        for e in ex.top(int(feature), n)
    ]


def thumbnail(bundle: Bundle, image_index: int) -> Image.Image | None:
    """The exemplar image behind ``image_index`` (packed thumbnail, else re-loaded), or None."""
    try:
        thumbs = bundle.thumbnails
        if image_index in thumbs:
            return thumbs.get(image_index)
    except Exception as err:  # no thumbnails in this bundle
        log.debug("no thumbnails: %s", err)
    ex = exemplars(bundle)
    if ex is not None:
        try:
            return ex.load_image(image_index)
        except Exception as err:
            log.debug("cannot reload image %s: %s", image_index, err)
    return None


# ------------------------------------------------------------------------------ related features
def related_features(bundle: Bundle, feature: int, k: int = 8) -> list[tuple[int, float]]:
    """Features whose decoder directions are closest (cosine) to ``feature``'s, itself excluded.

    Uses the bundle's decoder FAISS index when it has one, else an exact scan over the decoder.
    """
    f = bundle.sae.check_feature(feature)
    memo = bundle.memo
    if bundle.has("feature_index") and not memo.get("no_index"):
        try:
            return [(int(i), float(s)) for i, s in bundle.related(f, k) if int(i) not in (f, -1)][
                :k
            ]
        except Exception as err:  # a broken index: exact search below, and say so once
            log.warning("bundle %s: feature index unusable (%s); exact search", bundle.name, err)
            memo["no_index"] = True
    w = bundle.sae.W_dec.detach()
    if "wdec_unit" not in memo:
        memo["wdec_unit"] = torch.nn.functional.normalize(w.float(), dim=-1)
    unit = memo["wdec_unit"]
    sims = unit @ unit[f]
    sims[f] = -2.0
    vals, idx = sims.topk(min(k, len(sims) - 1))
    return [(int(i), float(v)) for i, v in zip(idx, vals)]


def cross_matches(
    left: Bundle,
    right: Bundle,
    feature: int,
    k: int = 6,
    left_codes: torch.Tensor | None = None,
    right_codes: torch.Tensor | None = None,
) -> tuple[list[tuple[int, float]], str]:
    """Best-matching features of ``right`` for ``feature`` of ``left``, and how they were found.

    Order of preference: the bundle's precomputed cross-model matches; decoder cosine when both
    SAEs live in the same space (same backbone and width); else the correlation of patch
    activations on the image both sides are looking at (``left_codes``/``right_codes``,
    ``[n_patches, d_sae]`` on a common patch grid).
    """
    f = left.sae.check_feature(feature)
    memo = left.memo
    key = ("matches", str(right.path))
    if key not in memo:
        m = None
        matcher = getattr(left, "matches", None)
        if callable(matcher):
            try:
                m = matcher(right)
            except Exception as err:  # no matches with that bundle: fall back below
                log.info("no precomputed matches %s -> %s (%s)", left.name, right.name, err)
        memo[key] = m
    m = memo[key]
    if m is not None:
        pairs = _matches_for(m, f, k)
        if pairs is not None:
            method = str(getattr(m, "method", "") or "").replace("_", " ")
            return pairs, f"precomputed over the dataset ({method or 'cross-model matching'})"
    same_space = (
        left.sae.cfg.d_in == right.sae.cfg.d_in
        and left.model.get("model_id") == right.model.get("model_id")
        and bundle_layer(left) == bundle_layer(right)
    )
    if same_space:
        a = torch.nn.functional.normalize(left.sae.W_dec[f].detach().float(), dim=-1)
        b = torch.nn.functional.normalize(right.sae.W_dec.detach().float(), dim=-1)
        vals, idx = (b @ a).topk(min(k, b.shape[0]))
        return [(int(i), float(v)) for i, v in zip(idx, vals)], "decoder-direction cosine"
    if left_codes is not None and right_codes is not None:
        x = left_codes[:, f].float()
        if float(x.std()) == 0.0:
            return [], "activation correlation on this image (the feature is silent here)"
        y = right_codes.float()
        xc = (x - x.mean()) / x.std(unbiased=False).clamp_min(1e-8)
        ystd = y.std(0, unbiased=False)
        corr = ((y - y.mean(0)) / ystd.clamp_min(1e-8) * xc[:, None]).mean(0)
        corr[ystd == 0] = -1
        vals, idx = corr.topk(min(k, corr.numel()))
        return (
            [(int(i), float(v)) for i, v in zip(idx, vals) if float(v) > 0],
            "activation correlation over this image's patches (no precomputed matches)",
        )
    return [], "no cross-model matches available"


def _matches_for(m: Any, f: int, k: int) -> list[tuple[int, float]] | None:
    """Read one feature's matches from whatever the bundle API returns."""
    if hasattr(m, "a_to_b_indices"):  # core.matches.Matches (A = the bundle asked)
        ids, scores = _np(m.a_to_b_indices[f]), _np(m.a_to_b_scores[f])
        return [(int(i), float(s)) for i, s in zip(ids[:k], scores[:k]) if int(i) >= 0]
    for attr in ("for_feature", "top", "matches_for"):
        fn = getattr(m, attr, None)
        if callable(fn):
            rows = fn(f, k)
            return [(int(r[0]), float(r[1])) for r in rows][:k]
    ids = getattr(m, "ids", None)
    scores = getattr(m, "scores", None)
    if ids is None and isinstance(m, dict):
        ids, scores = m.get("ids"), m.get("scores")
    if ids is not None and scores is not None:
        ids, scores = _np(ids), _np(scores)
        return [(int(i), float(s)) for i, s in zip(ids[f][:k], scores[f][:k]) if int(i) >= 0]
    return None


# ------------------------------------------------------------------------------ patch grids
def map_selection(
    selection, grid_from: tuple[int, int], box_from, grid_to: tuple[int, int], box_to
) -> set[tuple[int, int]]:
    """Patches of another model's grid covered by a selection: a target patch is selected when
    its centre falls inside a selected source patch (boxes in original-image pixels)."""
    if not selection:
        return set()
    fr, fc = grid_from
    tr, tc = grid_to
    l0, t0, r0, b0 = box_from
    l1, t1, r1, b1 = box_to
    sel = set(selection)
    out = set()
    for r in range(tr):
        for c in range(tc):
            x = l1 + (c + 0.5) * (r1 - l1) / tc
            y = t1 + (r + 0.5) * (b1 - t1) / tr
            cc = int(np.floor((x - l0) / (r0 - l0) * fc))
            rr = int(np.floor((y - t0) / (b0 - t0) * fr))
            if (rr, cc) in sel:
                out.add((r, c))
    return out


def resample_codes(
    codes: torch.Tensor, grid_from: tuple[int, int], grid_to: tuple[int, int]
) -> torch.Tensor:
    """``[rows*cols, d]`` codes on one patch grid -> another grid (nearest patch)."""
    if tuple(grid_from) == tuple(grid_to):
        return codes
    fr, fc = grid_from
    tr, tc = grid_to
    rows = np.minimum((np.arange(tr) + 0.5) * fr / tr, fr - 1).astype(int)
    cols = np.minimum((np.arange(tc) + 0.5) * fc / tc, fc - 1).astype(int)
    idx = torch.as_tensor((rows[:, None] * fc + cols[None, :]).reshape(-1))
    return codes[idx]


def share_backbone(a: Bundle, b: Bundle) -> None:
    """Two bundles on the same backbone load it (and its head) once."""
    if (
        a.model.get("model_id")
        and a.model.get("model_id") == b.model.get("model_id")
        and a.model.get("revision") == b.model.get("revision")
    ):
        b.backbone = a.backbone  # cached properties: assignment fills the cache
        b.head = a.head


# ------------------------------------------------------------------------------ probe examples
def probe_examples(
    source_spec: str | None, task: str, n: int = 6, start: int = 0, n_used: int = 0
) -> list[tuple[str, str]]:
    """Images of a probe's own data set that the probe was *not* fitted on, saved once as PNG
    files (gradio examples need files): ``[(path, caption)]``, caption = the true label(s).

    Indices start at ``max(start, n_used)`` (``n_used``: images the probe's fit used, held-out
    ones included), spread evenly to the end of the source. ``[]`` when the source cannot be
    opened (e.g. an ``hf:`` set while offline): the apps then show photos only.
    """
    if not source_spec:
        return []
    from saescope.core.paths import cache_dir

    try:
        if task == "segmentation":
            from saescope.core.sources import open_segmentation_source as opener
        else:
            from saescope.core.sources import open_source as opener
        src = opener(source_spec)
        first = max(int(start), int(n_used))
        if first >= len(src):
            return []
        idx = np.unique(np.linspace(first, len(src) - 1, n).round().astype(int)).tolist()
        tag = hashlib.sha1(source_spec.encode()).hexdigest()[:10]
        folder = cache_dir("app_examples", f"{task}-{tag}")
        out = []
        for i in idx:
            path = folder / f"{i:05d}.png"
            if task == "segmentation":
                m = src.mask(i)
                names = list(src.class_names)
                present = [
                    names[c]
                    for c in np.unique(m)
                    if 0 <= c < len(names) and str(names[c]).lower() != "background"
                ]
                caption = "contains " + ", ".join(present) if present else "no objects"
            else:
                caption = (
                    f"true class {src.label_names[int(src.label(i))]}"
                    if getattr(src, "has_labels", False)
                    else src.image_id(i)
                )
            if not path.is_file():
                with atomic_path(path) as tmp:
                    src.load(i).convert("RGB").save(tmp, "PNG")
            out.append((str(path), caption))
        return out
    except Exception as err:  # no data set here: the apps fall back to photos
        log.info("no held-out examples from %s (%s)", source_spec, err)
        return []


__all__ = [
    "AppSetupError",
    "FeatureStats",
    "bundle_layer",
    "bundle_title",
    "cross_matches",
    "default_bundle_path",
    "default_pair_paths",
    "exemplars",
    "load_bundle",
    "map_selection",
    "probe_examples",
    "related_features",
    "resample_codes",
    "share_backbone",
    "stats",
    "thumbnail",
    "top_exemplars",
    "ENV_BUNDLE",
    "ENV_LEFT",
    "ENV_RIGHT",
]
