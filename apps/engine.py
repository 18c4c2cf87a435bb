"""The computation behind the apps, free of any UI code (unit-tested on its own).

One :class:`Engine` per bundle holds the SAE, the backbone and the head. ``analyse(image)`` runs
the backbone up to the SAE's layer once, encodes the patch tokens and runs the unedited rest of
the model and the head; the result is cached by image content, so a feature toggle only reruns
blocks L+1.. and the head (:func:`core.steering.steer`). All model work is serialised by one lock:
on a 2-core CPU two forwards at once are only slower.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from apps import adapter
from core.bundle import Bundle
from core.steering import Edit, LayerCache, cache_layer, steer
from core.tokens import TokenKind

MAX_CACHED_IMAGES = 24
# Requests served at once: the model itself runs one at a time (Engine.lock), so a second slot
# only lets one request's rendering and transfer overlap another's forward.
MODEL_CONCURRENCY = 2
CACHE_BUDGET_BYTES = 400_000_000  # dense codes of cached images (wide SAEs keep fewer images)


class SessionExpired(LookupError):
    """An analysis that is no longer cached (server restarted, or many uploads since)."""


@dataclass
class Analysis:
    """Everything the UI shows about one uploaded image, before any edit."""

    key: str
    image: Image.Image  # the upload, RGB
    view: Image.Image  # what the model sees, cut from the original at display size
    grid: tuple[int, int]
    cache: LayerCache
    codes: torch.Tensor  # [n_patches, d_sae] dense codes of the patch tokens
    patch_error: np.ndarray  # [rows, cols] relative reconstruction error per patch
    fvu: float  # fraction of variance unexplained on this image's patches
    l0: float
    head_before: np.ndarray | None  # [H, W] saliency or [C] class probabilities
    timings: dict = field(default_factory=dict)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def feature_map(self, feature: int) -> np.ndarray:
        return self.codes[:, int(feature)].reshape(self.grid).numpy()

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

    def feature_map_after(self, feature: int, grid: tuple[int, int]) -> np.ndarray:
        return self.codes_after[:, int(feature)].reshape(grid).numpy()


def image_key(image: Image.Image) -> str:
    h = hashlib.sha1(f"{image.size}{image.mode}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:20]


class Engine:
    """SAE + backbone + head of one bundle, with a small cache of analysed images."""

    def __init__(self, bundle: Bundle | str | None, max_cached: int = MAX_CACHED_IMAGES,
                 view_scale: int = 2):
        self.bundle = adapter.load_bundle(bundle)
        self.sae = self.bundle.sae.eval()
        self.backbone = self.bundle.backbone
        self.head = self.bundle.head
        self.layer = self.backbone.resolve_layer(self.sae.cfg.layer if self.sae.cfg.layer is not None
                                                 else adapter.bundle_layer(self.bundle))
        if self.sae.cfg.layer is None:
            self.sae.cfg.layer = self.layer
        self.title = adapter.bundle_title(self.bundle)
        self.view_scale = view_scale
        self.lock = threading.RLock()
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        ch, cw = self.backbone.preprocess.crop_size
        per_image = (ch // self.backbone.patch_size) * (cw // self.backbone.patch_size) * self.d_sae * 4
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
                raise SessionExpired("this image is no longer in the server's cache; upload it again")
            self._cache.move_to_end(key)
            return an

    @torch.inference_mode()
    def analyse(self, image: Image.Image) -> Analysis:
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
                cache.base_head = self.head(cache.base_final, layout)
                head_before = self._head_np(cache.base_head)
            t3 = time.perf_counter()
            view = adapter.model_view(image, self.backbone.preprocess, self.view_scale)
            an = Analysis(key=key, image=image, view=view, grid=tuple(layout.grid), cache=cache,
                          codes=codes.float().contiguous(),
                          patch_error=(err / ref).reshape(layout.grid).numpy(), fvu=fvu, l0=l0,
                          head_before=head_before,
                          timings={"forward_s": t1 - t0, "sae_s": t2 - t1, "head_s": t3 - t2,
                                   "total_s": time.perf_counter() - t0})
            self._cache[key] = an
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            return an

    def _head_np(self, out: torch.Tensor) -> np.ndarray:
        out = out.detach().float()
        if self.head_kind == "classification":
            return torch.softmax(out[0], -1).numpy()
        return out[0, 0].numpy() if out.dim() == 4 else out[0].numpy()

    # -- features ----------------------------------------------------------------------------
    def top_features(self, an: Analysis, selection: Iterable[tuple[int, int]] | None, n: int = 12
                     ) -> list[tuple[int, float, int]]:
        return adapter.top_features_for_patches(an.codes, an.mask(selection), n)

    # -- steering ----------------------------------------------------------------------------
    @torch.inference_mode()
    def steer(self, an: Analysis, edits: list[Edit], selection: Iterable[tuple[int, int]] | None
              ) -> SteerOutcome:
        """Apply ``edits`` on the selected patches (all patches when ``selection`` is empty)."""
        for e in edits:
            self.check_feature(e.feature)
        patches = sorted({(int(r), int(c)) for r, c in selection}) if selection else None
        with self.lock:
            t0 = time.perf_counter()
            res = steer(self.backbone, self.sae, an.cache, edits, patches=patches, head=self.head)
            layout = an.cache.layout
            pos_all = layout.indices([TokenKind.PATCH])
            codes_after = an.codes.clone()
            if edits:
                first = pos_all[0]
                rows = torch.tensor([p - first for p in res.positions if p >= first])
                codes_after[rows] = res.codes_after[0].float()
                before = res.tokens_before[0, res.positions].float()
                after = res.tokens_after[0, res.positions].float()
                token_change = float(((after - before).norm(dim=-1)
                                      / before.norm(dim=-1).clamp_min(1e-12)).mean())
                fb = res.final_before[0, pos_all].float()
                fa = res.final_after[0, pos_all].float()
                final_change = float(((fa - fb).norm(dim=-1) / fb.norm(dim=-1).clamp_min(1e-12)).mean())
            else:
                token_change = final_change = 0.0
            head_after = None if res.head_after is None else self._head_np(res.head_after)
            return SteerOutcome(list(edits), patches, codes_after, an.head_before, head_after,
                                token_change, final_change, time.perf_counter() - t0)


__all__ = ["Analysis", "Engine", "SessionExpired", "SteerOutcome", "image_key"]
