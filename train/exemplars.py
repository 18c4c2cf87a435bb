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

Folder format (``format_version`` 1)::

    exemplars.safetensors     indices [F, k] int64 (image index, -1 = empty slot), values [F, k]
                              float32 (max patch activation), maps [F, k, n_patches] float16 --
                              or maps uint8 + map_scales [F, k] float32 (map = maps * scale)
    feature_stats.safetensors frequency, mean, mean_active, max [F] float32 (frequency, means in
                              float64 sums), histogram [F, n_bins] int64, bin_edges [n_bins + 1]
    exemplars.json            format, format_version, k, grid, n_patches, map_dtype, n_images,
                              n_tokens, token_kinds, model_id, layer, images (index, id,
                              source_index of every referenced image), source (the store's source
                              description: spec, start/stop), store, sae (name, config)

Image indices are store indices (or source indices when built from images); ``source`` + the
recorded ``source_index`` re-load the pixels (:meth:`Exemplars.load_image`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from saescope import __version__
from saescope.core.sae import SAE, Codes
from saescope.core.sae_io import check_compatible
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds

FORMAT = "saescope.exemplars"
FORMAT_VERSION = 1
EXEMPLARS_FILE = "exemplars.safetensors"
STATS_FILE = "feature_stats.safetensors"
META_FILE = "exemplars.json"
DEFAULT_K = 64
MAP_DTYPES = ("float16", "uint8")
FP16_MAX = 65504.0


class ExemplarError(ValueError):
    """Exemplars that cannot be built (SAE/store mismatch) or read (damaged/unknown folder)."""


def histogram_edges(lo: float = 1e-3, hi: float = 1e3, per_decade: int = 10) -> torch.Tensor:
    """Log-spaced bin edges shared by every feature (float32).

    The end bins are open: activations below ``lo`` count in the first bin, those at or above
    ``hi`` in the last, so each feature's histogram sums to its number of firing tokens.
    """
    if not 0 < lo < hi:
        raise ValueError(f"histogram needs 0 < lo < hi, got {lo}, {hi}")
    n = max(1, int(round(np.log10(hi / lo) * per_decade)))
    return torch.logspace(np.log10(lo), np.log10(hi), n + 1, dtype=torch.float64).float()


class Exemplar(NamedTuple):
    """One exemplar of a feature (a tuple: ``image_index, image_id, value, patch_map``)."""

    image_index: int
    image_id: str
    value: float
    patch_map: np.ndarray  # [rows, cols] float32


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

    def __init__(self, d_sae: int, k: int, layout: TokenLayout, kinds: Iterable[str | TokenKind],
                 bin_edges: torch.Tensor | None = None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.d_sae, self.k, self.layout = int(d_sae), int(k), layout
        self.kinds = parse_kinds(list(kinds))
        if TokenKind.PATCH not in self.kinds:
            raise ExemplarError(f"exemplar maps need patch tokens; the SAE was trained on "
                                f"{[k.value for k in self.kinds]}")
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
    def update(self, first_index: int, n_images: int, codes: Codes,
               image_indices: torch.Tensor | None = None) -> None:
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

    def _update(self, first_index: int, n_images: int, codes: Codes,
                image_indices: torch.Tensor | None) -> None:
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

    def _merge(self, image_max: torch.Tensor, image_indices: torch.Tensor, key: torch.Tensor,
               patch: torch.Tensor, vals: torch.Tensor) -> None:
        """Merge a batch's per-image maxima into the slots; write maps of entering images."""
        F, k = self.d_sae, self.k
        B = image_max.shape[1]
        # only features where some image beats the current weakest slot (ties: earlier wins)
        rows = (image_max > self.slot_values.min(1).values[:, None]).any(1).nonzero()[:, 0]
        if not len(rows):
            return
        cand = torch.cat([rank_key(self.slot_values[rows], self.slot_indices[rows]),
                          rank_key(image_max[rows], image_indices.expand(len(rows), B))], 1)
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
            o = order[a:a + step]
            rows = (o + torch.arange(len(o))[:, None] * self.k).view(-1)
            block = maps[a:a + step].reshape(-1, self.n_patches)
            maps[a:a + step] = block.index_select(0, rows).view(len(o), self.k, self.n_patches)
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


# ----------------------------------------------------------------------------- result
@dataclass
class Exemplars:
    """Top-k exemplars and statistics of every feature of one SAE (see the module docstring)."""

    indices: torch.Tensor  # [F, k] int64, -1 = empty
    values: torch.Tensor  # [F, k] float32
    maps: torch.Tensor  # [F, k, n_patches] float16
    stats: dict[str, torch.Tensor]
    grid: tuple[int, int]
    images: dict[int, tuple[str, int | None]]  # image index -> (image id, source index)
    meta: dict[str, Any] = field(default_factory=dict)
    _source: Any = field(default=None, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def check_feature(self, feature: int) -> int:
        """A valid feature id, or a clear error naming the range."""
        if isinstance(feature, bool):
            raise ValueError(f"feature id must be an integer, got {feature!r}")
        try:
            f = int(feature)
        except (TypeError, ValueError) as err:
            raise ValueError(f"feature id must be an integer, got {feature!r}") from err
        if f != feature or not 0 <= f < self.n_features:
            raise ValueError(f"unknown feature {feature!r}: these exemplars cover features "
                             f"0..{self.n_features - 1}")
        return f

    def top(self, feature: int, n: int | None = None) -> list[Exemplar]:
        """The feature's exemplars, best first (empty slots left out)."""
        f = self.check_feature(feature)
        out: list[Exemplar] = []
        rows, cols = self.grid
        for j in range(self.k if n is None else min(n, self.k)):
            index = int(self.indices[f, j])
            if index < 0:
                break
            image_id = self.images.get(index, (str(index), None))[0]
            patch_map = self.maps[f, j].float().numpy().reshape(rows, cols)
            out.append(Exemplar(index, image_id, float(self.values[f, j]), patch_map))
        return out

    def feature_stats(self, feature: int) -> dict[str, Any]:
        """Frequency, means, max and histogram of one feature as plain Python values."""
        f = self.check_feature(feature)
        d: dict[str, Any] = {k: float(self.stats[k][f])
                             for k in ("frequency", "mean", "mean_active", "max")}
        d["histogram"] = self.stats["histogram"][f].tolist()
        d["bin_edges"] = self.stats["bin_edges"].tolist()
        return d

    def open_source(self):
        """The image source the indices refer to (as recorded), opened once and cached."""
        if self._source is None:
            from saescope.train.sources import open_source

            src = self.meta.get("source") or {}
            if not src.get("spec"):
                raise ExemplarError("these exemplars record no image source to load pixels from")
            self._source = open_source(src["spec"], start=int(src.get("start") or 0),
                                       stop=src.get("stop"))
        return self._source

    def load_image(self, image_index: int):
        """The PIL image behind an exemplar's ``image_index`` (re-loaded from the source)."""
        if int(image_index) not in self.images:
            raise ValueError(f"image {image_index} is not one of the exemplar images")
        image_id, source_index = self.images[int(image_index)]
        source = self.open_source()
        if source_index is None or not 0 <= source_index < len(source) \
                or source.image_id(source_index) != image_id:
            raise ExemplarError(f"image {image_id!r} is not at source index {source_index} of "
                                f"{source.spec!r} any more (the source changed)")
        return source.load(source_index)

    # -- files --------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, map_dtype: str = "float16") -> Path:
        """Write the three files atomically (temp + rename); ``map_dtype`` float16 or uint8."""
        if map_dtype not in MAP_DTYPES:
            raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {map_dtype!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"indices": self.indices.contiguous(), "values": self.values.contiguous()}
        if map_dtype == "uint8":
            maps = self.maps.float()
            scales = maps.amax(-1) / 255.0
            q = (maps / scales.clamp_min(1e-30)[..., None]).round_().clamp_(0, 255)
            tensors.update(maps=q.to(torch.uint8).contiguous(), map_scales=scales.contiguous())
        else:
            tensors["maps"] = self.maps.half().contiguous()
        idx = sorted(self.images)
        meta = {**self.meta, "format": FORMAT, "format_version": FORMAT_VERSION, "k": self.k,
                "n_features": self.n_features, "grid": list(self.grid),
                "n_patches": self.grid[0] * self.grid[1], "map_dtype": map_dtype,
                "images": {"index": idx, "id": [self.images[i][0] for i in idx],
                           "source_index": [self.images[i][1] for i in idx]}}
        _atomic(folder / EXEMPLARS_FILE, lambda p: save_file(tensors, str(p), metadata={
            "format": FORMAT, "map_dtype": map_dtype}))
        stats = {k: v.contiguous() for k, v in self.stats.items()}
        _atomic(folder / STATS_FILE,
                lambda p: save_file(stats, str(p), metadata={"format": FORMAT}))
        _atomic(folder / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=1)))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Exemplars":
        folder = Path(folder)
        paths = [folder / n for n in (META_FILE, EXEMPLARS_FILE, STATS_FILE)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ExemplarError(f"{folder} is not an exemplars folder (missing {missing})")
        try:
            meta = json.loads(paths[0].read_text())
            tensors, stats = load_file(str(paths[1])), load_file(str(paths[2]))
        except Exception as err:
            raise ExemplarError(f"{folder}: unreadable exemplar files ({err})") from err
        if meta.get("format") != FORMAT:
            raise ExemplarError(f"{paths[0]} is not an exemplars manifest")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ExemplarError(f"{folder}: exemplars format_version {meta['format_version']} is "
                                f"newer than this saescope reads ({FORMAT_VERSION}); upgrade")
        maps = tensors["maps"]
        if meta.get("map_dtype") == "uint8":
            maps = (maps.float() * tensors["map_scales"][..., None]).half()
        imgs = meta.pop("images")
        images = {int(i): (str(n), None if s is None else int(s))
                  for i, n, s in zip(imgs["index"], imgs["id"], imgs["source_index"])}
        grid = (int(meta["grid"][0]), int(meta["grid"][1]))
        for key in ("format", "format_version", "k", "n_features", "grid", "n_patches",
                    "map_dtype"):
            meta.pop(key, None)
        return cls(tensors["indices"].long(), tensors["values"].float(), maps, stats, grid,
                   images, meta)


def _atomic(path: Path, write) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- building
def check_sae_store(sae: SAE, store) -> None:
    """Clear errors when ``sae`` was not trained on what ``store`` holds (model, layer, width)."""
    try:
        check_compatible(sae, store.model_id, store.layer, store.d_model)
    except ValueError as err:
        raise ExemplarError(
            f"SAE {sae.cfg.name} does not fit the store {store.path}: {err}") from err
    kinds = parse_kinds(sae.cfg.token_kinds)
    missing = [k.value for k in kinds if k not in store.kinds]
    if missing:
        raise ExemplarError(f"SAE {sae.cfg.name} was trained on {[k.value for k in kinds]} tokens; "
                            f"the store {store.path} lacks {missing}")


def _meta(sae: SAE, model_id: str | None, layer: int | None, acc: ExemplarAccumulator,
          source: dict | None, store: dict | None) -> dict[str, Any]:
    return {"model_id": model_id, "layer": layer, "token_kinds": [k.value for k in acc.kinds],
            "n_images": acc.n_images, "n_tokens": acc.n_tokens, "source": source or {},
            "store": store, "sae": {"name": sae.cfg.name, "config": sae.cfg.to_dict()},
            "histogram": {"first_bin": "also counts activations below bin_edges[0]",
                          "last_bin": "also counts activations at or above bin_edges[-1]"},
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "saescope_version": __version__}


def _result(acc: ExemplarAccumulator, images: dict[int, tuple[str, int | None]],
            meta: dict) -> Exemplars:
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
                out[i] = (str(rec["ids"][i - first]), None if src[i - first] is None
                          else int(src[i - first]))
        first += n
    return out


def _check_batch(batch_images: int) -> None:
    if int(batch_images) < 1:
        raise ValueError(f"batch_images must be >= 1, got {batch_images}")


def _progress(total: int, enabled: bool, desc: str = "exemplars"):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


@torch.inference_mode()
def build_exemplars(sae: SAE, store, k: int = DEFAULT_K, batch_images: int = 32,
                    progress: bool = True, max_images: int | None = None,
                    bin_edges: torch.Tensor | None = None) -> Exemplars:
    """Exemplars + feature statistics of ``sae`` over an activation store, in one pass.

    ``store`` is an :class:`~train.store.ActivationStore` or its path; ``max_images`` limits the
    pass to the first images (quick looks).
    """
    from saescope.train.store import ActivationStore

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
    meta = _meta(sae, store.model_id, store.layer, acc, store.manifest.get("source"),
                 {"path": str(store.path), "layer_requested": store.layer_requested,
                  "n_images": store.n_images})
    return _result(acc, images, meta)


def _image_batches(source, preprocess, batch_images: int, stop: int
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
def build_exemplars_from_images(sae: SAE, backbone, source, k: int = DEFAULT_K,
                                batch_images: int = 16, progress: bool = True,
                                max_images: int | None = None,
                                bin_edges: torch.Tensor | None = None) -> Exemplars:
    """Exemplars straight from images: backbone forward at the SAE's layer, then the same pass.

    Image indices are source indices (unreadable images are skipped, never fatal).
    """
    from saescope.train.sources import ImageSource, open_source

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
                acc = ExemplarAccumulator(sae.cfg.d_sae, k, out.layout, sae.cfg.token_kinds,
                                          bin_edges)
            elif out.layout != acc.layout:
                raise ExemplarError(f"layout changed from {acc.layout} to {out.layout}: the "
                                    "preprocessing must give a fixed image size")
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
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "exemplars", help="top-k exemplar images, patch maps and statistics of every SAE feature",
        description="One streaming pass over an activation store (or over images through the "
        "backbone) that records, for every SAE feature, the top-k images by maximum patch "
        "activation with their patch maps, plus frequency, means, max and a log histogram.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sae", required=True, help="SAE folder or Hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="activation store folder (from 'extract')")
    src.add_argument("--source", help="images instead of a store: builtin:..., hf:..., a folder")
    p.add_argument("--model", default=None, help="backbone for --source (default: the SAE's model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="exemplars per feature")
    p.add_argument("--batch-images", type=int, default=32, help="images per SAE batch")
    p.add_argument("--map-dtype", default="float16", choices=MAP_DTYPES,
                   help="patch-map storage (uint8: quantised with a per-map scale)")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--device", default="cpu", help="backbone device for --source")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run, step="exemplars")
    return p


def run(args: argparse.Namespace) -> int:
    from saescope.core.sae_io import from_pretrained
    from saescope.train.cli_util import announce_config

    announce_config(args, args.out)
    sae = from_pretrained(args.sae)
    if args.store:
        ex = build_exemplars(sae, args.store, k=args.k, batch_images=args.batch_images,
                             progress=args.progress, max_images=args.max_images)
    else:
        from saescope.core.backbones import load_backbone

        model = args.model or sae.cfg.model_id
        if not model:
            raise ExemplarError("the SAE records no model id: pass --model")
        backbone = load_backbone(model, revision=sae.cfg.model_revision, device=args.device)
        ex = build_exemplars_from_images(sae, backbone, args.source, k=args.k,
                                         batch_images=args.batch_images, progress=args.progress,
                                         max_images=args.max_images)
    ex.meta["sae"]["path"] = str(args.sae)
    folder = ex.save(args.out, map_dtype=args.map_dtype)
    freq = ex.stats["frequency"]
    print(f"[exemplars] {ex.n_features} features x k={ex.k} over {ex.meta['n_images']} images "
          f"({ex.meta['n_tokens']} tokens); {float((freq == 0).float().mean()):.1%} never fired "
          f"-> {folder}", file=sys.stderr)
    print(folder)
    return 0


__all__ = ["Exemplar", "Exemplars", "ExemplarAccumulator", "ExemplarError", "build_exemplars",
           "build_exemplars_from_images", "check_sae_store", "codes_to_coo", "histogram_edges",
           "add_parser", "run", "FORMAT", "FORMAT_VERSION", "DEFAULT_K"]
