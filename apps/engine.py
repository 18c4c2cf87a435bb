"""The computation behind the apps, free of any UI code (unit-tested on its own).

One :class:`Engine` per bundle holds the SAE, the backbone and its frozen heads (the backbone's
own head and the bundle's probes, :attr:`core.bundle.Bundle.head_names`). ``analyse(image)`` runs
the backbone up to the SAE's layer once, encodes the patch tokens and runs the unedited rest of
the model and the default head; the result is cached by image content, so a slider move only
reruns blocks L+1.. and the head (:func:`core.steering.steer`). Other heads are read from the same
cached final tokens on demand, so switching heads costs one head forward, not a backbone pass.
All model work is serialised by one lock: on a 2-core CPU two forwards at once are only slower.

Head outputs are numpy arrays of *probabilities* (every :class:`~core.heads.Head` returns them):
``[C]`` for classification, ``[C, H, W]`` for multi-class segmentation, and ``[H, W]`` for a
one-channel segmentation head (saliency), as the browser has always shown it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from saescope.apps import adapter, memory
from saescope.core.attribution import AttributionResult, attribute
from saescope.core.bundle import Bundle
from saescope.core.heatmap import model_view
from saescope.core.search import top_features_of_codes
from saescope.core.steering import Edit, LayerCache, cache_layer, steer
from saescope.core.tokens import TokenKind

MAX_CACHED_IMAGES = 24
# Requests served at once: the model itself runs one at a time (Engine.lock), so a second slot
# only lets one request's rendering and transfer overlap another's forward.
MODEL_CONCURRENCY = 2
CACHE_BUDGET_BYTES = 400_000_000  # dense codes of cached images (wide SAEs keep fewer images)


class SessionExpired(LookupError):
    """An analysis that is no longer cached (server restarted, or many uploads since)."""


@dataclass(frozen=True)
class CompactCodes:
    """An image's SAE codes kept as each patch's non-zero entries (exactly; any SAE).

    Why: the engine caches every analysed image for its slider moves. Dense codes cost
    ``patches x d_sae x 4`` bytes (1.5 MB for 256 patches x 1,536 features, 25 MB at 24,576) but
    a sparse autoencoder fires a few dozen features per patch, so each patch's non-zero entries,
    padded to the busiest patch's count, take a few percent of that; a burst of visitors then
    leaves the server's memory close to where it was. ``dense()`` rebuilds the exact tensor.
    """

    index: torch.Tensor  # [n_patches, k] int32 feature ids (padding: distinct zero entries)
    value: torch.Tensor  # [n_patches, k] float32 codes at those ids (0 where padded)
    d_sae: int

    @classmethod
    def of(cls, codes: torch.Tensor) -> CompactCodes | torch.Tensor:
        """Compact form of dense ``[n, d_sae]`` codes, or the dense tensor itself where the
        codes are too dense for the compact form to be smaller."""
        codes = codes.float()
        n, d = codes.shape
        k = int((codes != 0).sum(1).max()) if n else 0
        if 2 * k >= d:  # index + value cost 8 bytes an entry, a dense code 4
            return codes.contiguous()
        index = codes.abs().topk(k, dim=1, sorted=False).indices if k else codes.new_zeros(n, 0)
        index = index.long()
        return cls(index.to(torch.int32), codes.gather(1, index).contiguous(), d)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.index.shape[0], self.d_sae)

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=self.value.dtype)
        return out.scatter_(1, self.index.long(), self.value)

    def column(self, feature: int) -> torch.Tensor:
        """One feature's code on every patch, without building the dense tensor."""
        return (self.value * (self.index == int(feature))).sum(1)


@dataclass
class Analysis:
    """Everything the UI shows about one uploaded image, before any edit."""

    key: str
    size: tuple[int, int]  # the upload's (width, height); the upload itself is not kept: a
    # cached full-resolution photo (up to 40 Mpx, 120 MB) per visitor would dwarf the rest
    view: Image.Image  # what the model sees, cut from the original at display size
    grid: tuple[int, int]
    cache: LayerCache
    stored_codes: CompactCodes | torch.Tensor  # the patch tokens' codes (see ``codes``)
    patch_error: np.ndarray  # [rows, cols] relative reconstruction error per patch
    fvu: float  # fraction of variance unexplained on this image's patches
    l0: float
    head_before: np.ndarray | None  # the default head's output (see module docstring)
    timings: dict = field(default_factory=dict)
    heads_before: dict = field(default_factory=dict)  # head name -> unedited output
    ood: object = None  # the bundle OOD suite's main ScoreReport (Engine.ood), computed once

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def codes(self) -> torch.Tensor:
        """``[n_patches, d_sae]`` dense codes of the patch tokens (rebuilt on each access)."""
        c = self.stored_codes
        return c.dense() if isinstance(c, CompactCodes) else c

    def feature_codes(self, feature: int) -> torch.Tensor:
        """``[n_patches]`` codes of one feature."""
        c = self.stored_codes
        return c.column(feature) if isinstance(c, CompactCodes) else c[:, int(feature)]

    def feature_map(self, feature: int) -> np.ndarray:
        return self.feature_codes(feature).reshape(self.grid).numpy()

    def mask(self, selection: Iterable[tuple[int, int]] | None) -> np.ndarray | None:
        """Boolean [n_patches] for a selection of (row, col); None for 'no selection'."""
        if not selection:
            return None
        rows, cols = self.grid
        m = np.zeros(self.n_patches, bool)
        for r, c in selection:
            if 0 <= r < rows and 0 <= c < cols:
                m[r * cols + c] = True
        return m if m.any() else None


@dataclass
class SteerOutcome:
    """What a set of edits did on one image."""

    edits: list[Edit]
    patches: list[tuple[int, int]] | None  # None = all patches
    codes_after: torch.Tensor  # [n_patches, d_sae] (unedited patches keep their codes)
    head_before: np.ndarray | None
    head_after: np.ndarray | None
    token_change: float  # mean relative change of the edited tokens at layer L
    final_change: float  # mean relative change of the final patch tokens
    seconds: float
    head: str = ""  # name of the head read out

    def feature_map_after(self, feature: int, grid: tuple[int, int]) -> np.ndarray:
        return self.codes_after[:, int(feature)].reshape(grid).numpy()


def image_key(image: Image.Image) -> str:
    h = hashlib.sha1(f"{image.size}{image.mode}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:20]


class Engine:
    """SAE + backbone + head of one bundle, with a small cache of analysed images."""

    def __init__(
        self,
        bundle: Bundle | str | None,
        max_cached: int = MAX_CACHED_IMAGES,
        view_scale: int = 2,
        head: str | None = None,
    ):
        memory.limit_arenas()  # before the server's threads exist: see apps/memory.py
        self.bundle = adapter.load_bundle(bundle)
        self.sae = self.bundle.sae.eval()
        self.backbone = self.bundle.backbone
        self.head_names: list[str] = list(self.bundle.head_names)
        # the default head: the named one, else the bundle's own default (as the browser uses)
        self.head = self.bundle.head if head is None else self.load_head(head)
        # its name: the one asked for, else the bundle's default (``Bundle.head`` is the first);
        # a head shared from another bundle (``adapter.share_backbone``) keeps its own name
        self.default_head = (
            None
            if self.head is None
            else (
                head
                or (self.head_names[0] if self.head_names else getattr(self.head, "name", "head"))
            )
        )
        self.layer = self.backbone.resolve_layer(
            self.sae.cfg.layer
            if self.sae.cfg.layer is not None
            else adapter.bundle_layer(self.bundle)
        )
        if self.sae.cfg.layer is None:
            self.sae.cfg.layer = self.layer
        self.title = adapter.bundle_title(self.bundle)
        self.view_scale = view_scale
        self.lock = threading.RLock()
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        ch, cw = self.backbone.preprocess.crop_size
        per_image = (
            (ch // self.backbone.patch_size) * (cw // self.backbone.patch_size) * self.d_sae * 4
        )
        self.max_cached = int(max(2, min(max_cached, CACHE_BUDGET_BYTES // max(per_image, 1))))
        self.stats = adapter.stats(self.bundle)

    # -- info --------------------------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    @property
    def head_kind(self) -> str | None:
        return None if self.head is None else getattr(self.head, "kind", "segmentation")

    @property
    def head_name(self) -> str:
        return getattr(self.head, "name", "head") if self.head is not None else ""

    # -- heads -------------------------------------------------------------------------------
    def load_head(self, name: str):
        """A head of this bundle by name; ``AppSetupError`` naming the choices if there is none."""
        if name not in self.head_names:
            raise adapter.AppSetupError(
                f"bundle {self.bundle.name} has no head {name!r} (it has: "
                f"{', '.join(self.head_names) or 'none'}); fit a probe with "
                "saescope probe --bundle ..."
            )
        return self.bundle.load_head(name)

    def get_head(self, name: str | None = None):
        """``None`` -> the default head; else the named head (loaded once, cached by the bundle)."""
        if name is None or name == self.default_head:
            return self.head
        return self.load_head(name)

    def heads_of_kind(self, kind: str) -> list[str]:
        """Names of the bundle's heads of one kind (``segmentation`` / ``classification``)."""
        return [
            n for n in self.head_names if getattr(self.get_head(n), "kind", "segmentation") == kind
        ]

    def head_info(self, name: str | None = None) -> dict:
        """What the UI says about a head: kind, class names, channels, held-out metrics."""
        head = self.get_head(name)
        if head is None:
            return {}
        kind = getattr(head, "kind", "segmentation")
        classes = list(getattr(head, "class_names", []) or [])
        if not classes:  # the backbone's own one-channel head (saliency)
            classes = ["not salient", "salient"] if kind == "segmentation" else []
        metrics = dict(getattr(head, "metrics", {}) or {})
        return {
            "name": name or self.default_head,
            "kind": kind,
            "classes": classes,
            "metrics": metrics,
            "binary": not getattr(head, "class_names", None),
        }

    def check_feature(self, feature) -> int:
        return self.sae.check_feature(feature)

    def warm_up(self) -> None:
        """One dummy forward so the first visitor does not pay for lazy initialisation."""
        ch, cw = self.backbone.preprocess.crop_size
        img = Image.new("RGB", (cw, ch), (127, 127, 127))
        an = self.analyse(img)
        self.steer(an, [Edit(0, scale=0.0)], None)
        with self.lock:
            self._cache.pop(an.key, None)

    # -- analysis ----------------------------------------------------------------------------
    def get(self, key: str | None) -> Analysis:
        if not key:
            raise SessionExpired("upload an image first (or pick one of the examples)")
        with self.lock:
            an = self._cache.get(key)
            if an is None:
                raise SessionExpired(
                    "this image is no longer in the server's cache; upload it again"
                )
            self._cache.move_to_end(key)
            return an

    @torch.inference_mode()
    def analyse(self, image: Image.Image) -> Analysis:
        memory.touch()  # a burst of uploads: its memory goes back once the server is idle
        key = image_key(image)
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            t0 = time.perf_counter()
            pixels = self.backbone.preprocess([image])
            cache = cache_layer(self.backbone, self.sae, pixels)
            t1 = time.perf_counter()
            layout = cache.layout
            pos = layout.indices([TokenKind.PATCH])
            x = cache.tokens[0, pos].float()
            codes = self.sae.encode(x)
            recon = self.sae.decode(codes)
            err = (x - recon).pow(2).sum(-1)
            ref = (x - self.sae.norm_mean).pow(2).sum(-1).clamp_min(1e-12)
            fvu = float(err.sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12))
            l0 = float((codes > 0).sum(-1).float().mean())
            t2 = time.perf_counter()
            cache.base_final = self.backbone.run_from(cache.layer, cache.tokens)
            head_before = None
            if self.head is not None:
                # kept as numpy only: the engine's steering reads heads itself (head=None)
                head_before = self._head_np(self.head(cache.base_final, layout), self.head)
            t3 = time.perf_counter()
            view = model_view(image, self.backbone.preprocess, self.view_scale)
            an = Analysis(
                key=key,
                size=image.size,
                view=view,
                grid=tuple(layout.grid),
                cache=cache,
                stored_codes=CompactCodes.of(codes),
                patch_error=(err / ref).reshape(layout.grid).numpy(),
                fvu=fvu,
                l0=l0,
                head_before=head_before,
                heads_before={} if head_before is None else {self.default_head: head_before},
                timings={
                    "forward_s": t1 - t0,
                    "sae_s": t2 - t1,
                    "head_s": t3 - t2,
                    "total_s": time.perf_counter() - t0,
                },
            )
            self._cache[key] = an
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            return an

    def _head_np(self, out: torch.Tensor, head=None) -> np.ndarray:
        """First image of a head's output as numpy probabilities (no second softmax: every
        head returns probabilities); one-channel segmentation is squeezed to [H, W]."""
        out = out.detach().float()
        kind = getattr(head if head is not None else self.head, "kind", "segmentation")
        if kind == "classification":
            return out[0].numpy()
        if out.dim() == 4:
            return out[0, 0].numpy() if out.shape[1] == 1 else out[0].numpy()
        return out[0].numpy()

    @torch.inference_mode()
    def head_before(self, an: Analysis, head: str | None = None) -> np.ndarray | None:
        """The unedited output of ``head`` on an analysed image (computed once per head)."""
        name = head or self.default_head
        if name in an.heads_before:
            return an.heads_before[name]
        module = self.get_head(head)
        if module is None:
            return None
        with self.lock:
            out = self._head_np(module(an.cache.base_final, an.cache.layout), module)
            an.heads_before[name] = out
            return out

    # -- out of distribution -------------------------------------------------------------------
    def ood_suite(self):
        """The bundle's calibrated OOD suite (``ood`` component), loaded once; ``None`` without
        one or when it cannot be read (the apps then show no verdict rather than fail)."""
        if not hasattr(self, "_ood_suite"):
            suite = None
            if self.bundle.has("ood"):
                from saescope.core.ood import OODSuite

                try:
                    suite = OODSuite.load(self.bundle.component_path("ood"))
                except (OSError, ValueError, KeyError):
                    suite = None
            self._ood_suite = suite
        return self._ood_suite

    @torch.inference_mode()
    def ood(self, an: Analysis):
        """The image's main OOD score read against the bundle's own calibration (the combined
        SAE score when there is one): a :class:`core.ood.ScoreReport` with its percentile among
        held-out in-distribution images and the suite's threshold; ``None`` without a suite."""
        if an.ood is not None:
            return an.ood
        suite = self.ood_suite()
        if suite is None:
            return None
        from saescope.core.ood import SAE_COMBINED, score_tokens

        pos = an.cache.layout.indices([TokenKind.PATCH])
        with self.lock:
            reports, _ = score_tokens(suite, self.sae, an.cache.tokens[0, pos].float())
        if not reports:
            return None
        an.ood = next((r for r in reports if r.name == SAE_COMBINED), reports[0])
        return an.ood

    def head_reference(self, name: str | None = None):
        """The OOD reference of a head (:mod:`apps.head_ood`), built once from the first images
        of the data set it was fitted on; ``None`` when its source is unknown or unreadable."""
        name = name or self.default_head
        refs = self.__dict__.setdefault("_head_refs", {})
        if name not in refs:
            info = self.head_info(name)
            source = (info.get("metrics") or {}).get("source")
            ref = None
            if source:
                from saescope.apps.head_ood import fit_reference

                m = info["metrics"]
                used = int(m.get("n_train_images", 0)) + int(m.get("n_test_images", 0))
                with self.lock:
                    ref = fit_reference(
                        self.backbone, self.sae, name, source, info["kind"], n_used=used
                    )
            refs[name] = ref
        return refs[name]

    def head_ood(self, an: Analysis, head: str | None = None):
        """The image against ``head``'s own data (:class:`apps.head_ood.HeadOOD`) or ``None``."""
        ref = self.head_reference(head)
        if ref is None:
            return None
        c = an.stored_codes
        mean = c.dense().mean(0) if isinstance(c, CompactCodes) else c.mean(0)
        return ref.check(mean.numpy())

    # -- features ----------------------------------------------------------------------------
    def top_features(
        self, an: Analysis, selection: Iterable[tuple[int, int]] | None, n: int = 12
    ) -> list[tuple[int, float, int]]:
        return top_features_of_codes(an.codes, an.mask(selection), n)

    def attribute(
        self,
        an: Analysis,
        selection: Iterable[tuple[int, int]] | None,
        head: str | None = None,
        top: int = 10,
        confirm: int = 3,
        kinds: str = "patch",
    ) -> AttributionResult | None:
        """Features on the selection (all patches when empty) ranked by their effect on
        ``head`` (:func:`core.attribution.attribute`: one backward pass, the top ``confirm``
        really ablated); ``None`` without a head. Not under inference mode: it needs a graph."""
        module = self.get_head(head)
        if module is None:
            return None
        patches = sorted({(int(r), int(c)) for r, c in selection}) if selection else None
        memory.touch()
        with self.lock:
            return attribute(
                self.backbone,
                self.sae,
                module,
                an.cache,
                patches,
                top=top,
                confirm=confirm,
                kinds=kinds,
            )

    # -- steering ----------------------------------------------------------------------------
    @torch.inference_mode()
    def steer(
        self,
        an: Analysis,
        edits: Sequence[Edit],
        selection: Iterable[tuple[int, int]] | None,
        head: str | None = None,
        kinds: str = "patch",
    ) -> SteerOutcome:
        """Apply ``edits`` (any number, at most one per feature) on the selected patches (all
        patches when ``selection`` is empty) and read ``head`` (default: the engine's head).

        ``kinds="cls,patch"`` also edits the CLS token (what a classification probe reads).
        No edits -> the head's unedited output, exactly.
        """
        memory.touch()
        edits = list(edits)
        seen: set[int] = set()
        for e in edits:
            f = self.check_feature(e.feature)
            if f in seen:  # two edits of one feature would compound in apply_edits
                raise ValueError(f"feature {f} is edited twice; merge the edits into one")
            seen.add(f)
        patches = sorted({(int(r), int(c)) for r, c in selection}) if selection else None
        name = head or self.default_head
        module = self.get_head(head)
        with self.lock:
            t0 = time.perf_counter()
            hb = self.head_before(an, head) if module is not None else None
            res = steer(
                self.backbone, self.sae, an.cache, edits, patches=patches, kinds=kinds, head=None
            )
            layout = an.cache.layout
            pos_all = layout.indices([TokenKind.PATCH])
            codes_after = an.codes.clone()
            if edits:
                first = pos_all[0]
                is_patch = torch.tensor([p >= first for p in res.positions])
                rows = torch.tensor([p - first for p in res.positions if p >= first])
                if len(rows):
                    codes_after[rows] = res.codes_after[0][is_patch].float()
                before = res.tokens_before[0, res.positions].float()
                after = res.tokens_after[0, res.positions].float()
                token_change = float(
                    ((after - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-12)).mean()
                )
                fb = res.final_before[0, pos_all].float()
                fa = res.final_after[0, pos_all].float()
                final_change = float(
                    ((fa - fb).norm(dim=-1) / fb.norm(dim=-1).clamp_min(1e-12)).mean()
                )
            else:
                token_change = final_change = 0.0
            head_after = hb
            if module is not None and edits:
                head_after = self._head_np(module(res.final_after, layout), module)
            return SteerOutcome(
                list(edits),
                patches,
                codes_after,
                hb,
                head_after,
                token_change,
                final_change,
                time.perf_counter() - t0,
                name or "",
            )


def slider_edits(
    values: Mapping[int, float],
    mode: str = "scale",
    reference: Mapping[int, float] | None = None,
    neutral: float = 1.0,
) -> list[Edit]:
    """Feature sliders -> edits, one per feature; a slider at ``neutral`` is no edit at all.

    ``mode="scale"``: multiply the feature by the slider (0 = suppress, 1 = unchanged, >1 =
    amplify). ``mode="set"``: set it on every edited token to slider x ``reference[feature]``
    (its mean activation over the chosen patches, or its typical activation where it is silent
    there), which also *adds* the feature where it did not fire.
    """
    if mode not in ("scale", "set"):
        raise ValueError(f"unknown edit mode {mode!r}; use 'scale' or 'set'")
    out = []
    for f, v in values.items():
        if v is None or float(v) == neutral:
            continue
        if mode == "scale":
            out.append(Edit(int(f), scale=float(v)))
        else:
            ref = float((reference or {}).get(int(f), 1.0))
            out.append(Edit(int(f), value=float(v) * ref))
    return out


__all__ = [
    "Analysis",
    "CompactCodes",
    "Engine",
    "SessionExpired",
    "SteerOutcome",
    "image_key",
    "slider_edits",
]
