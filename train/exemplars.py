"""Feature exemplars and feature statistics in one streaming pass: ``saescope exemplars``.

For every SAE feature: the top-k images ranked by the feature's *maximum patch activation* in the
image, each with its per-patch activation map, plus firing frequency, mean activation (over all
tokens and over firing tokens), max activation and a log-spaced activation histogram.

Why it is built this way:

- **Memory grows with features x k, never with the data.** A running top-k per feature lives in
  *slots* ``[F, k]``; a batch's per-image maxima are merged in with one ``topk`` over int64 rank
  keys ``[F, k + B]`` (value, then earlier image on ties; only for features where some image
  beats the current minimum), and a patch map is written only when an image enters a slot,
  straight from the batch's codes. Image ids are resolved at the end for the referenced images
  only, one shard's id file at a time. The maps dominate: ``F x k x n_patches`` float16, e.g.
  6144 x 64 x 256 = 200 MB for a 16x SAE on DINOv2-S.
- **Speed: ~1.0-1.3x a plain ``sae.encode`` pass** (``bench/exemplar_speed.py``). Everything
  after the encoder works on the *non-zero* codes as (token, feature, value) triplets: for
  k-sparse SAEs that skips even the dense ``[N, d_sae]`` matrix that ``encode`` builds, and for
  dense ones it costs one compare + ``flatnonzero``. The bookkeeping runs on one thread.
- **One code path** after the forward pass: tokens from an activation store
  (:func:`build_exemplars`) or from images through a backbone (:func:`build_exemplars_from_images`)
  both feed :class:`ExemplarAccumulator`.

The folder format and its reader are :mod:`saescope.core.exemplars`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saescope import __version__
from saescope.core.exemplars import MAP_DTYPES, ExemplarError, Exemplars, histogram_edges
from saescope.core.sae import SAE, Codes
from saescope.core.sae_io import check_compatible
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds
from saescope.train.cli import (
    OutOption,
    ProgressOption,
    TorchDeviceOption,
    add_step,
    announce_config,
    option,
)

DEFAULT_K = 64
FP16_MAX = 65504.0


# ----------------------------------------------------------------------------- accumulation
def codes_to_coo(codes: Codes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positive codes of a batch as (token row, feature, value) triplets.

    Why: statistics, per-image maxima and patch maps only ever need the firing codes, and for
    k-sparse SAEs this avoids materialising the dense ``[N, d_sae]`` matrix at all.
    """
    if codes.indices is not None:
        assert codes.values is not None
        values, indices = codes.values.cpu(), codes.indices.cpu()
        rows, slot = (values > 0).nonzero(as_tuple=True)
        return rows, indices[rows, slot], values[rows, slot]
    assert codes.dense is not None
    # numpy's compare + flatnonzero is ~3x faster than torch's (dense > 0).nonzero() on CPU
    dense = codes.dense.detach().cpu().contiguous().numpy().reshape(-1)
    flat = np.flatnonzero(dense > 0)
    rows, feats = np.divmod(flat, codes.dense.shape[-1])
    return torch.from_numpy(rows), torch.from_numpy(feats), torch.from_numpy(dense[flat])


def rank_key(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering (value desc, image index asc) in one comparison.

    Why: one ``topk`` over these keys replaces two stable sorts, and ties between equal
    activations always keep the earlier image, so results do not depend on the batch size.
    Values must be >= 0 (their float32 bit patterns then order like the values); index -1 (an
    empty slot) ranks before any image of equal value, so a zero never displaces an empty slot.
    """
    bits = values.float().contiguous().view(torch.int32).long()
    return (bits << 32) | (0xFFFFFFFF - (indices + 1))


class ExemplarAccumulator:
    """Running top-k images per feature, their patch maps, and per-feature statistics.

    Feed it the codes of whole images (``update``); state is ``O(d_sae x k x n_patches)``.
    """

    def __init__(
        self,
        d_sae: int,
        k: int,
        layout: TokenLayout,
        kinds: Iterable[str | TokenKind],
        bin_edges: torch.Tensor | None = None,
    ):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.d_sae, self.k, self.layout = int(d_sae), int(k), layout
        self.kinds = parse_kinds(list(kinds))
        if TokenKind.PATCH not in self.kinds:
            raise ExemplarError(
                f"exemplar maps need patch tokens; the SAE was trained on "
                f"{[k.value for k in self.kinds]}"
            )
        stored = layout.kinds_of(self.kinds)
        self.tokens_per_image = len(stored)
        patch_rows = [i for i, kind in enumerate(stored) if kind is TokenKind.PATCH]
        self.n_patches = len(patch_rows)
        self.all_patches = self.n_patches == self.tokens_per_image
        # token position within an image -> patch slot (-1 for CLS/register tokens)
        self._patch_of = torch.full((self.tokens_per_image,), -1, dtype=torch.long)
        self._patch_of[patch_rows] = torch.arange(self.n_patches)
        self.bin_edges = (histogram_edges() if bin_edges is None else bin_edges).float()
        self._inner_edges = self.bin_edges[1:-1].contiguous()
        self.n_bins = len(self.bin_edges) - 1
        F = self.d_sae
        self.slot_values = torch.zeros(F, k)
        self.slot_indices = torch.full((F, k), -1, dtype=torch.long)
        # rows are zeroed when an image enters a slot; never-used slots are zeroed at the end
        self.slot_maps = torch.empty(F, k, self.n_patches, dtype=torch.float16)
        self.count = torch.zeros(F, dtype=torch.long)
        self.sums = torch.zeros(F, dtype=torch.float64)
        self.max = torch.zeros(F)
        self.histogram = torch.zeros(F * self.n_bins, dtype=torch.long)
        self.n_tokens = 0
        self.n_images = 0

    @torch.no_grad()
    def update(
        self,
        first_index: int,
        n_images: int,
        codes: Codes,
        image_indices: torch.Tensor | None = None,
    ) -> None:
        """Add the codes of ``n_images`` consecutive images (``n_images x tokens_per_image`` rows).

        ``image_indices`` [n_images] (ascending) overrides ``first_index + arange(n_images)``,
        e.g. for sources with skipped images.

        Runs on one intra-op thread: these are many small ops (bincounts, scatters, a top-k over
        [F, k + B]), and torch's thread pool costs more than it saves on them -- measured 2x the
        whole pass on a busy 2-core machine -- while the encoder's matmul keeps every thread.
        """
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
        try:
            self._update(first_index, n_images, codes, image_indices)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)

    def _update(
        self, first_index: int, n_images: int, codes: Codes, image_indices: torch.Tensor | None
    ) -> None:
        F, T, B = self.d_sae, self.tokens_per_image, n_images
        rows, feats, vals = codes_to_coo(codes)
        self.n_tokens += B * T
        self.n_images += B
        # statistics over every token of the SAE's kinds
        self.count += torch.bincount(feats, minlength=F)
        self.sums += torch.bincount(feats, weights=vals.double(), minlength=F)
        self.max.scatter_reduce_(0, feats, vals.float(), "amax")
        bins = torch.bucketize(vals.float(), self._inner_edges, right=True)
        self.histogram += torch.bincount(feats * self.n_bins + bins, minlength=F * self.n_bins)
        # per-image maxima over patch tokens
        image, patch = rows // T, self._patch_of[rows % T]
        if not self.all_patches:
            sel = patch >= 0
            image, patch, feats, vals = image[sel], patch[sel], feats[sel], vals[sel]
        key = image * F + feats
        image_max = torch.zeros(B * F).scatter_reduce_(0, key, vals.float(), "amax")
        image_max = image_max.view(B, F).t()  # [F, B]
        if image_indices is None:
            image_indices = torch.arange(first_index, first_index + B)
        self._merge(image_max, image_indices, key, patch, vals)

    def _merge(
        self,
        image_max: torch.Tensor,
        image_indices: torch.Tensor,
        key: torch.Tensor,
        patch: torch.Tensor,
        vals: torch.Tensor,
    ) -> None:
        """Merge a batch's per-image maxima into the slots; write maps of entering images."""
        F, k = self.d_sae, self.k
        B = image_max.shape[1]
        # only features where some image beats the current weakest slot (ties: earlier wins)
        rows = (image_max > self.slot_values.min(1).values[:, None]).any(1).nonzero()[:, 0]
        if not len(rows):
            return
        cand = torch.cat(
            [
                rank_key(self.slot_values[rows], self.slot_indices[rows]),
                rank_key(image_max[rows], image_indices.expand(len(rows), B)),
            ],
            1,
        )
        top = cand.topk(k, dim=1, sorted=False).indices
        kept = torch.zeros_like(cand, dtype=torch.bool).scatter_(1, top, True)
        # each row evicts as many slots as batch images enter; row-major nonzero pairs them up
        r_out, slot = (~kept[:, :k]).nonzero(as_tuple=True)
        r_in, b = kept[:, k:].nonzero(as_tuple=True)
        if not len(r_in):
            return
        assert torch.equal(r_out, r_in)
        f = rows[r_in]
        self.slot_values[f, slot] = image_max[f, b]
        self.slot_indices[f, slot] = image_indices[b]
        # patch maps of the entering (image, feature) pairs, written straight from the batch's
        # firing codes into the freed slots (no dense [entrants, n_patches] intermediate)
        lut = torch.full((B * F,), -1, dtype=torch.long)
        lut[b * F + f] = torch.arange(len(f))
        entry = lut[key]
        hit = entry >= 0
        entry = entry[hit]
        row = f * k + slot  # rows of slot_maps viewed as [F * k, n_patches]
        flat = self.slot_maps.view(-1, self.n_patches)
        flat.index_fill_(0, row, 0)
        flat.index_put_((row[entry], patch[hit]), vals[hit].float().clamp_(max=FP16_MAX).half())

    def ordered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices, values, maps) with each feature's exemplars best first, empty slots last.

        Reorders the maps in place, a block of features at a time (no second ``[F, k, P]``
        buffer), so call it once, at the end.
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # memory-bound row copies: see update()
        try:
            return self._ordered()
        finally:
            torch.set_num_threads(threads)

    def _ordered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        order = rank_key(self.slot_values, self.slot_indices).argsort(dim=1, descending=True)
        indices = self.slot_indices.gather(1, order)
        values = self.slot_values.gather(1, order)
        maps = self.slot_maps
        step = max(1, (1 << 22) // max(1, self.k * self.n_patches))
        for a in range(0, self.d_sae, step):
            o = order[a : a + step]
            rows = (o + torch.arange(len(o))[:, None] * self.k).view(-1)
            block = maps[a : a + step].reshape(-1, self.n_patches)
            maps[a : a + step] = block.index_select(0, rows).view(len(o), self.k, self.n_patches)
        empty = (indices < 0).view(-1).nonzero()[:, 0]
        maps.view(-1, self.n_patches).index_fill_(0, empty, 0)  # never-written slots
        self.slot_indices, self.slot_values = indices, values
        return indices, values, maps

    def stats(self) -> dict[str, torch.Tensor]:
        n = max(1, self.n_tokens)
        return {
            "frequency": (self.count.double() / n).float(),
            "mean": (self.sums / n).float(),
            "mean_active": (self.sums / self.count.clamp_min(1)).float(),
            "max": self.max.clone(),
            "histogram": self.histogram.view(self.d_sae, self.n_bins).clone(),
            "bin_edges": self.bin_edges.clone(),
        }


# ----------------------------------------------------------------------------- building
def check_sae_store(sae: SAE, store) -> None:
    """Clear errors when ``sae`` was not trained on what ``store`` holds (model, layer, width)."""
    try:
        check_compatible(sae, store.model_id, store.layer, store.d_model)
    except ValueError as err:
        raise ExemplarError(
            f"SAE {sae.cfg.name} does not fit the store {store.path}: {err}"
        ) from err
    kinds = parse_kinds(sae.cfg.token_kinds)
    missing = [k.value for k in kinds if k not in store.kinds]
    if missing:
        raise ExemplarError(
            f"SAE {sae.cfg.name} was trained on {[k.value for k in kinds]} tokens; "
            f"the store {store.path} lacks {missing}"
        )


def _meta(
    sae: SAE,
    model_id: str | None,
    layer: int | None,
    acc: ExemplarAccumulator,
    source: dict | None,
    store: dict | None,
) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "layer": layer,
        "token_kinds": [k.value for k in acc.kinds],
        "n_images": acc.n_images,
        "n_tokens": acc.n_tokens,
        "source": source or {},
        "store": store,
        "sae": {"name": sae.cfg.name, "config": sae.cfg.to_dict()},
        "histogram": {
            "first_bin": "also counts activations below bin_edges[0]",
            "last_bin": "also counts activations at or above bin_edges[-1]",
        },
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "saescope_version": __version__,
    }


def _result(
    acc: ExemplarAccumulator, images: dict[int, tuple[str, int | None]], meta: dict
) -> Exemplars:
    indices, values, maps = acc.ordered()
    return Exemplars(indices, values, maps, acc.stats(), acc.layout.grid, images, meta)


def _store_images(store, wanted: set[int]) -> dict[int, tuple[str, int | None]]:
    """(id, source index) of the ``wanted`` store images, one shard's id file at a time."""
    out: dict[int, tuple[str, int | None]] = {}
    first = 0
    for shard in store.manifest["shards"]:
        n = int(shard["n_images"])
        hits = [i for i in range(first, first + n) if i in wanted] if wanted else []
        if hits:
            rec = json.loads((store.path / shard["ids_file"]).read_text())
            src = rec.get("source_indices") or [None] * n
            for i in hits:
                out[i] = (
                    str(rec["ids"][i - first]),
                    None if src[i - first] is None else int(src[i - first]),
                )
        first += n
    return out


def _check_batch(batch_images: int) -> None:
    if int(batch_images) < 1:
        raise ValueError(f"batch_images must be >= 1, got {batch_images}")


def _progress(total: int, enabled: bool, desc: str = "exemplars"):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="img", desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr
    )


@torch.inference_mode()
def build_exemplars(
    sae: SAE,
    store,
    k: int = DEFAULT_K,
    batch_images: int = 32,
    progress: bool = True,
    max_images: int | None = None,
    bin_edges: torch.Tensor | None = None,
) -> Exemplars:
    """Exemplars + feature statistics of ``sae`` over an activation store, in one pass.

    ``store`` is an :class:`~saescope.core.store.ActivationStore` or its path; ``max_images``
    limits the
    pass to the first images (quick looks).
    """
    from saescope.core.store import ActivationStore

    _check_batch(batch_images)
    if not isinstance(store, ActivationStore):
        store = ActivationStore(store)
    check_sae_store(sae, store)
    sae.eval()
    acc = ExemplarAccumulator(sae.cfg.d_sae, k, store.layout, sae.cfg.token_kinds, bin_edges)
    stop = store.n_images if max_images is None else min(int(max_images), store.n_images)
    kinds = [kind.value for kind in acc.kinds]
    device = sae.W_enc.device
    with _progress(stop, progress) as bar:
        for first, x in store.iter_images(batch_images, kinds=kinds, stop=stop):
            n = x.shape[0]
            acc.update(first, n, sae.encode_codes(x.to(device).reshape(-1, x.shape[-1])))
            bar.update(n)
    images = _store_images(store, set(acc.slot_indices[acc.slot_indices >= 0].tolist()))
    meta = _meta(
        sae,
        store.model_id,
        store.layer,
        acc,
        store.manifest.get("source"),
        {
            "path": str(store.path),
            "layer_requested": store.layer_requested,
            "n_images": store.n_images,
        },
    )
    return _result(acc, images, meta)


def _image_batches(
    source, preprocess, batch_images: int, stop: int
) -> Iterator[tuple[list[int], list[str], torch.Tensor]]:
    """(source indices, ids, pixels) batches; unreadable images are skipped."""
    from saescope.core.images import ImageError

    idx: list[int] = []
    ids: list[str] = []
    pix: list[torch.Tensor] = []
    for i in range(stop):
        image_id, image = source.get(i)
        if isinstance(image, ImageError):
            continue
        try:
            pixels = preprocess([image])
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception:  # like extraction: a bad image is skipped, never fatal
            continue
        idx.append(i)
        ids.append(image_id)
        pix.append(pixels)
        if len(idx) == batch_images:
            yield idx, ids, torch.cat(pix)
            idx, ids, pix = [], [], []
    if idx:
        yield idx, ids, torch.cat(pix)


@torch.inference_mode()
def build_exemplars_from_images(
    sae: SAE,
    backbone,
    source,
    k: int = DEFAULT_K,
    batch_images: int = 16,
    progress: bool = True,
    max_images: int | None = None,
    bin_edges: torch.Tensor | None = None,
) -> Exemplars:
    """Exemplars straight from images: backbone forward at the SAE's layer, then the same pass.

    Image indices are source indices (unreadable images are skipped, never fatal).
    """
    from saescope.core.sources import ImageSource, open_source

    _check_batch(batch_images)
    if not isinstance(source, ImageSource):
        source = open_source(source)
    if sae.cfg.layer is None:
        raise ExemplarError(f"SAE {sae.cfg.name} does not record its layer")
    layer = backbone.resolve_layer(sae.cfg.layer)
    try:
        check_compatible(sae, backbone.model_id, layer, backbone.d_model)
    except ValueError as err:
        raise ExemplarError(f"SAE {sae.cfg.name} does not fit {backbone.model_id}: {err}") from err
    sae.eval()
    stop = len(source) if max_images is None else min(int(max_images), len(source))
    acc: ExemplarAccumulator | None = None
    seen: dict[int, tuple[str, int | None]] = {}
    with _progress(stop, progress) as bar:
        for idx, ids, pixels in _image_batches(source, backbone.preprocess, batch_images, stop):
            out = backbone.forward_layers(pixels, [layer])
            if acc is None:
                acc = ExemplarAccumulator(
                    sae.cfg.d_sae, k, out.layout, sae.cfg.token_kinds, bin_edges
                )
            elif out.layout != acc.layout:
                raise ExemplarError(
                    f"layout changed from {acc.layout} to {out.layout}: the "
                    "preprocessing must give a fixed image size"
                )
            x = out.layout.select(out.tokens[layer], acc.kinds).float()
            x = x.to(sae.W_enc.device).reshape(-1, x.shape[-1])
            acc.update(idx[0], len(idx), sae.encode_codes(x), image_indices=torch.tensor(idx))
            seen.update((i, (n, i)) for i, n in zip(idx, ids))
            if len(seen) > 4 * acc.slot_indices.numel() + 1024:  # keep ids of referenced only
                live = set(acc.slot_indices[acc.slot_indices >= 0].tolist())
                seen = {i: v for i, v in seen.items() if i in live}
            bar.update(idx[-1] + 1 - bar.n)
    if acc is None:
        raise ExemplarError(f"no readable images in {source.spec!r}")
    live = set(acc.slot_indices[acc.slot_indices >= 0].tolist())
    meta = _meta(sae, backbone.model_id, layer, acc, source.describe(), None)
    return _result(acc, {i: v for i, v in seen.items() if i in live}, meta)


# ----------------------------------------------------------------------------- CLI
@dataclass(kw_only=True)
class ExemplarsConfig(ProgressOption, TorchDeviceOption, OutOption):
    """``saescope exemplars``: an SAE and either a store or images (then the device runs the
    backbone)."""

    sae: str
    """SAE folder or Hub id"""
    store: str | None = option(None, one_of="input")
    """activation store folder (from 'extract')"""
    source: str | None = option(None, one_of="input")
    """images instead of a store: builtin:..., hf:..., a folder"""
    model: str | None = None
    """backbone for --source (default: the SAE's model)"""
    k: int = DEFAULT_K
    """exemplars per feature"""
    batch_images: int = 32
    """images per SAE batch"""
    map_dtype: str = option("float16", choices=MAP_DTYPES)
    """patch-map storage (uint8: quantised with a per-map scale)"""
    max_images: int | None = None
    """use only the first N images"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_step(
        subparsers,
        "exemplars",
        ExemplarsConfig,
        run,
        help="top-k exemplar images, patch maps and statistics of every SAE feature",
        description="One streaming pass over an activation store (or over images through the "
        "backbone)\nthat records, for every SAE feature, the top-k images by maximum patch "
        "activation with\ntheir patch maps, plus frequency, means, max and a log histogram.",
    )


def run(cfg: ExemplarsConfig) -> int:
    from saescope.core.sae_io import from_pretrained

    announce_config(cfg, "exemplars", cfg.out)
    sae = from_pretrained(cfg.sae)
    if cfg.store:
        ex = build_exemplars(
            sae,
            cfg.store,
            k=cfg.k,
            batch_images=cfg.batch_images,
            progress=cfg.progress,
            max_images=cfg.max_images,
        )
    else:
        from saescope.core.backbones import load_backbone

        model = cfg.model or sae.cfg.model_id
        if not model:
            raise ExemplarError("the SAE records no model id: pass --model")
        backbone = load_backbone(model, revision=sae.cfg.model_revision, device=cfg.device)
        ex = build_exemplars_from_images(
            sae,
            backbone,
            cfg.source,
            k=cfg.k,
            batch_images=cfg.batch_images,
            progress=cfg.progress,
            max_images=cfg.max_images,
        )
    ex.meta["sae"]["path"] = str(cfg.sae)
    folder = ex.save(cfg.out, map_dtype=cfg.map_dtype)
    freq = ex.stats["frequency"]
    print(
        f"[exemplars] {ex.n_features} features x k={ex.k} over {ex.meta['n_images']} images "
        f"({ex.meta['n_tokens']} tokens); {float((freq == 0).float().mean()):.1%} never fired "
        f"-> {folder}",
        file=sys.stderr,
    )
    print(folder)
    return 0


__all__ = [
    "ExemplarAccumulator",
    "build_exemplars",
    "build_exemplars_from_images",
    "check_sae_store",
    "codes_to_coo",
    "add_parser",
    "run",
    "DEFAULT_K",
    "ExemplarsConfig",
]
