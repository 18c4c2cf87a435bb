"""``saescope extract``: images -> backbone tokens at layer L -> activation store(s).

Three stages overlap so the model never waits: loader threads decode and preprocess the next
batches, the main thread runs the forward pass, a writer thread writes and checksums the previous
shard. Batches never straddle shards, so a run resumed at a shard boundary feeds the model exactly
the batches an uninterrupted run would, and the shards come out byte-identical.
The loader and writer threads are :mod:`saescope.train.extract_stages`.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from saescope.core.sources import ImageSource, open_source
from saescope.core.store import (
    DTYPES,
    MANIFEST,
    StoreError,
    StoreWriter,
    check_dtype,
    new_manifest,
    read_manifest,
)
from saescope.core.tokens import TokenKind, TokenLayout, parse_kinds
from saescope.train.cli import (
    OutOption,
    ProgressOption,
    TorchDeviceOption,
    add_step,
    announce_config,
    option,
)
from saescope.train.extract_stages import Batch, Loader, ShardJob, Writer

DEFAULT_MODEL = "offline:dinov2-s-saliency"
DEFAULT_SOURCE = "builtin:photos"
SHARD_TARGET_BYTES = 64 << 20  # per layer; bounds memory at ~3 shards in flight
FP16_MAX = 65504.0


def auto_shard_images(tokens_per_image: int, d_model: int, dtype: str) -> int:
    """Images per shard so that one shard of one layer is about 64 MiB."""
    per_image = tokens_per_image * d_model * check_dtype(dtype).itemsize
    return int(max(1, min(65536, SHARD_TARGET_BYTES // max(per_image, 1))))


def store_paths(out_dir: str | os.PathLike, layers: Sequence[int]) -> list[Path]:
    """One layer: ``out_dir`` itself; several: ``out_dir/layer_XX`` (resolved index)."""
    out = Path(out_dir)
    return [out] if len(layers) == 1 else [out / f"layer_{layer:02d}" for layer in layers]


def _layout(backbone) -> TokenLayout:
    pixels = backbone.preprocess([Image.new("RGB", (256, 256))])
    return backbone.layout_for(pixels)


def _check_source_matches(writer: StoreWriter, source: ImageSource) -> None:
    for index, image_id in writer.committed_ids():
        have = source.image_id(index) if 0 <= index < len(source) else None
        if have != image_id:
            raise StoreError(
                f"cannot resume into {writer.path}: it was made from another image source (image "
                f"#{index} is {image_id!r} in the store but {have!r} in {source.spec!r}). Use "
                "--overwrite to start afresh or choose another output folder."
            )


def _to_numpy(tokens: torch.Tensor, np_dtype: np.dtype, layer: int) -> np.ndarray:
    if np_dtype == np.float16:
        peak = float(tokens.abs().max()) if tokens.numel() else 0.0
        if not np.isfinite(peak) or peak > FP16_MAX:
            raise StoreError(
                f"layer {layer} activations reach {peak:.4g}, beyond float16's range "
                f"({FP16_MAX:g}): extract with --dtype float32"
            )
        return tokens.to(torch.float16).cpu().numpy()
    return tokens.to(torch.float32).cpu().numpy()


def check_request(
    backbone,
    layers: Sequence[int],
    kinds: str | Sequence[str | TokenKind],
    batch_size: int = 32,
    shard_images: int | None = None,
    dtype: str = "float16",
    workers: int | None = None,
) -> tuple[tuple[TokenKind, ...], list[int], list[int], TokenLayout]:
    """Validate an extraction request against ``backbone`` before anything is written.

    Returns (kinds, requested layers, resolved layers, token layout), the layers de-duplicated
    by their resolved index. Raises ``ValueError`` naming the bad option.
    """
    kinds_t = parse_kinds(kinds)
    requested: list[int] = []
    resolved: list[int] = []
    for layer in layers:
        r = backbone.resolve_layer(layer)
        if r not in resolved:
            requested.append(int(layer))
            resolved.append(r)
    if not resolved:
        raise ValueError("extract needs at least one layer")
    for name, value in (("batch_size", batch_size), ("shard_images", shard_images)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    check_dtype(dtype)
    layout = _layout(backbone)
    if TokenKind.REGISTER in kinds_t and layout.n_registers == 0 and len(kinds_t) == 1:
        raise ValueError(f"{backbone.model_id} has no register tokens")
    return kinds_t, requested, resolved, layout


def extract(
    backbone,
    source: ImageSource | str,
    out_dir: str | os.PathLike,
    layers: Sequence[int] = (-2,),
    kinds: str | Sequence[str | TokenKind] = "patch",
    batch_size: int = 32,
    shard_images: int | None = None,
    dtype: str = "float16",
    resume: bool = True,
    progress: bool = True,
    workers: int | None = None,
    prefetch_batches: int = 3,
    verify: str = "checksum",
    max_images: int | None = None,
) -> list[Path]:
    """Extract ``backbone`` tokens of ``layers`` for every image of ``source`` into stores.

    Returns the store paths aligned with the de-duplicated resolved ``layers``. With ``resume``
    an interrupted run continues (after verifying its shards); a store made with other settings
    or another source is refused. Corrupt images are skipped and listed, never fatal.
    """
    if not isinstance(source, ImageSource) or max_images is not None:
        source = open_source(source, max_images=max_images)
    kinds_t, requested, resolved, layout = check_request(
        backbone, layers, kinds, batch_size, shard_images, dtype, workers
    )
    np_dtype = check_dtype(dtype)
    tokens_per_image = len(layout.indices(kinds_t))
    paths = store_paths(out_dir, resolved)
    if shard_images is None:
        existing = paths[0] / MANIFEST
        shard_images = (
            read_manifest(paths[0])["shard_images"]
            if resume and existing.is_file()
            else auto_shard_images(tokens_per_image, backbone.d_model, dtype)
        )
    shard_images = int(shard_images)
    if shard_images < 1:
        raise ValueError("shard_images must be >= 1")
    model = backbone.describe()
    positions = layout.indices(kinds_t)

    writers: list[StoreWriter] = []
    try:
        for path, layer, req in zip(paths, resolved, requested):
            manifest = new_manifest(
                model=model,
                layer=layer,
                layer_requested=req,
                kinds=kinds_t,
                layout=layout,
                dtype=dtype,
                shard_images=shard_images,
                source=source.describe(),
                label_names=source.label_names,
            )
            writers.append(StoreWriter(path, manifest, resume=resume, verify=verify))
        for w in writers:
            for note in w.repaired:
                print(f"[extract] {w.path}: {note}", file=sys.stderr)
        start = _align(writers, source, shard_images)
        if start >= len(source) and all(w.complete for w in writers):
            if progress:
                print(
                    f"[extract] {paths[0] if len(paths) == 1 else out_dir}: already complete "
                    f"({writers[0].manifest['n_images']} images)",
                    file=sys.stderr,
                )
            return paths
        _run(
            backbone,
            source,
            writers,
            resolved,
            positions,
            layout,
            np_dtype,
            start,
            batch_size,
            shard_images,
            workers,
            prefetch_batches,
            progress,
        )
    finally:
        for w in writers:
            w.close()
    _summary(writers, paths, progress)
    return paths


def _align(writers: list[StoreWriter], source: ImageSource, shard_images: int) -> int:
    """Bring every layer's store to the same committed prefix; return the next source index."""
    n = min(w.n_shards for w in writers)
    last = writers[0].manifest["shards"][n - 1] if n else None
    # a short last shard is redone when the source has grown past it (as a fresh run would fill it)
    if last is not None and last["n_images"] < shard_images and len(source) > last["source_stop"]:
        n -= 1
    states = {(w.n_shards, w.next_source_index, w.complete) for w in writers}
    grown = any(w.next_source_index < len(source) for w in writers)
    if len(states) > 1 or n < writers[0].n_shards or (grown and any(w.complete for w in writers)):
        for w in writers:
            w.truncate(n)
    for w in writers:
        if w.next_source_index > len(source):
            raise StoreError(
                f"{w.path} already holds images up to source index "
                f"{w.next_source_index}, beyond the {len(source)} images of "
                f"{source.spec!r}; use --overwrite to start afresh"
            )
    _check_source_matches(writers[0], source)
    return writers[0].next_source_index


def _run(
    backbone,
    source: ImageSource,
    writers: list[StoreWriter],
    layers: list[int],
    positions: list[int],
    layout: TokenLayout,
    np_dtype: np.dtype,
    start: int,
    batch_size: int,
    shard_images: int,
    workers: int | None,
    prefetch: int,
    progress: bool,
) -> None:
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    loader = Loader(source, backbone.preprocess, start, batch_size, shard_images, workers, prefetch)
    writer = Writer(writers)
    d = backbone.d_model
    t_sel = len(positions)
    contiguous = positions == list(range(positions[0], positions[0] + t_sel)) if t_sel else True
    index = torch.tensor(positions, dtype=torch.long)
    bar = _progress(len(source), start, progress)
    done = start
    n_skipped = 0

    def new_buffers() -> list[np.ndarray]:
        return [np.empty((shard_images, t_sel, d), np_dtype) for _ in layers]

    buffers, fill = new_buffers(), 0
    ids: list[str] = []
    idxs: list[int] = []
    labels: list[int | None] = []
    skipped: list[dict] = []
    loader.start()
    writer.start()
    try:
        while True:
            item = loader.q.get()
            if isinstance(item, BaseException):
                raise item
            batch: Batch = item
            if batch.pixels is not None and batch.ids:
                out = backbone.forward_layers(batch.pixels, layers)
                if out.layout != layout:
                    raise StoreError(
                        f"the backbone produced layout {out.layout}, expected "
                        f"{layout}: preprocessing must give a fixed image size"
                    )
                b = len(batch.ids)
                for k, layer in enumerate(layers):
                    t = out.tokens[layer]
                    t = t[:, positions[0] : positions[0] + t_sel] if contiguous else t[:, index]
                    buffers[k][fill : fill + b] = _to_numpy(t, np_dtype, layer)
                fill += b
                ids += batch.ids
                idxs += batch.indices
                labels += batch.labels
            skipped += batch.skipped
            n_skipped += len(batch.skipped)
            if (batch.end_of_shard or batch.end_of_source) and fill:
                writer.submit(
                    ShardJob(
                        [a[:fill] for a in buffers], ids, idxs, labels, skipped, batch.source_stop
                    )
                )
                buffers, fill, ids, idxs, labels, skipped = new_buffers(), 0, [], [], [], []
            if bar is not None:
                bar.update(batch.source_stop - done)
                if n_skipped:
                    bar.set_postfix(skipped=n_skipped, refresh=False)
            done = batch.source_stop
            if batch.end_of_source:
                writer.submit(ShardJob(None, [], [], [], skipped, batch.source_stop, final=True))
                break
        writer.submit(None)
        writer.join()
        if writer.error is not None:
            raise writer.error
    finally:
        loader.stop_event.set()
        if writer.is_alive():
            writer.error = writer.error or RuntimeError("extraction aborted")
            try:
                writer.q.put(None, timeout=60)
            except queue.Full:
                pass
            writer.join(timeout=60)
        loader.join(timeout=10)
        if bar is not None:
            bar.close()


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="img", desc="extract", dynamic_ncols=True, smoothing=0.1
    )


def _summary(writers: list[StoreWriter], paths: list[Path], progress: bool) -> None:
    m = writers[0].manifest
    skipped = m["skipped"]
    where = ", ".join(str(p) for p in paths)
    print(
        f"[extract] {m['n_images']} images x {m['tokens_per_image']} tokens x {m['d_model']} "
        f"({m['dtype']}) -> {where}",
        file=sys.stderr,
    )
    if skipped:
        print(f"[extract] skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for s in skipped[:20]:
            print(f"  - {s['reason']}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more (listed in {MANIFEST})", file=sys.stderr)


# -- CLI ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BackboneOptions:
    """Which vision backbone to run: shared by ``extract`` and ``run``."""

    model: str = DEFAULT_MODEL
    """backbone: offline:dinov2-s-saliency, a Hub id or a local transformers folder"""
    revision: str | None = None
    """Hub revision (commit, branch or tag)"""


@dataclass(kw_only=True)
class ImageOptions:
    """Which images and which of their tokens: shared by ``extract`` and ``run``."""

    source: str = DEFAULT_SOURCE
    """images: builtin:photos[?views=N], builtin:digits, builtin:fashion-mnist, builtin:lfw,
    hf:NAME[:split], or a folder (image files, or a datasets save_to_disk folder)"""
    kinds: str = "patch"
    """token kinds to keep: patch, cls, register, a comma list, or all"""
    max_images: int | None = None
    """use only the first N images"""


@dataclass(kw_only=True)
class ExtractConfig(ProgressOption, TorchDeviceOption, ImageOptions, BackboneOptions, OutOption):
    """``saescope extract``: OUT is the store folder (with several layers: one sub-folder
    layer_XX per layer)."""

    layer: list[int] | None = option(None, append=True)
    """layer L = output of block L, negative counts from the end (default: -2); repeat for
    several layers from one forward pass"""
    batch_size: int = 32
    """images per forward pass"""
    shard_images: int | None = None
    """images per shard file (default: about 64 MiB per shard; a resumed run keeps the store's)"""
    dtype: str = option("float16", choices=lambda: sorted(DTYPES))
    """storage precision"""
    overwrite: bool = option(False, flags=("--overwrite", "--no-resume"))
    """start afresh instead of resuming an existing store"""
    verify: Literal["checksum", "size"] = "checksum"
    """how a resumed run checks the shards already written"""
    workers: int | None = None
    """image decoding threads (default: min(4, CPUs))"""

    def __post_init__(self) -> None:
        if self.layer is None:
            self.layer = [-2]


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_step(
        subparsers,
        "extract",
        ExtractConfig,
        run,
        help="run a backbone over images and store layer activations",
        description="Run a vision backbone over an image source and write the tokens of one or "
        "more layers\nto activation stores (OUT; with several layers one sub-folder layer_XX "
        "per layer).\nResumes an interrupted run; corrupt images are skipped and listed in the "
        "manifest.",
    )


def run(cfg: ExtractConfig) -> int:
    from saescope.core.backbones import load_backbone

    # everything that can be wrong with the request fails here, before the store folder exists
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {cfg.max_images}")
    parse_kinds(cfg.kinds)
    source = open_source(cfg.source, max_images=cfg.max_images)
    if len(source) == 0:
        raise ValueError(f"image source {cfg.source!r} has no images")
    backbone = load_backbone(cfg.model, revision=cfg.revision, device=cfg.device)
    check_request(
        backbone, cfg.layer, cfg.kinds, cfg.batch_size, cfg.shard_images, cfg.dtype, cfg.workers
    )
    announce_config(cfg, "extract", cfg.out)
    paths = extract(
        backbone,
        source,
        cfg.out,
        layers=cfg.layer,
        kinds=cfg.kinds,
        batch_size=cfg.batch_size,
        shard_images=cfg.shard_images,
        dtype=cfg.dtype,
        resume=not cfg.overwrite,
        progress=cfg.progress,
        workers=cfg.workers,
        verify=cfg.verify,
    )
    for p in paths:
        print(p)
    return 0


__all__ = [
    "extract",
    "check_request",
    "add_parser",
    "run",
    "store_paths",
    "auto_shard_images",
    "ExtractConfig",
    "BackboneOptions",
    "ImageOptions",
]
