"""The helper threads of ``saescope extract``: the loader ahead of the model, the writer behind.

Kept apart from :mod:`saescope.train.extract` (which runs the forward pass, aligns resumed stores
and is the CLI step) because this is the concurrency: the loader decodes and preprocesses images in
source order with a small thread pool and cuts them into batches that never straddle a shard; the
writer commits finished shards to every layer's store while the model computes the next one.
Errors in either thread are handed to the main thread, which re-raises them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from saescope.core.images import ImageError
from saescope.core.sources import ImageSource
from saescope.core.store import StoreWriter

MAX_ASPECT = 8.0


@dataclass
class Batch:
    """Preprocessed images of one forward pass, with the skipped images they account for."""

    pixels: torch.Tensor | None
    ids: list[str]
    indices: list[int]
    labels: list[int | None]
    skipped: list[dict]
    source_stop: int  # source index after the last image this batch accounts for
    end_of_shard: bool
    end_of_source: bool = False


@dataclass
class ShardJob:
    """One shard for every layer's store (``arrays`` per layer); ``final`` closes the stores."""

    arrays: list[np.ndarray] | None
    ids: list[str]
    indices: list[int]
    labels: list[int | None]
    skipped: list[dict]
    source_stop: int
    final: bool = False


def guard_aspect(image: Image.Image) -> Image.Image:
    """Centre-crop extreme panoramas to 8:1, so resizing their short side cannot explode memory."""
    w, h = image.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return image
    if w > h:
        nw = int(h * MAX_ASPECT)
        return image.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
    nh = int(w * MAX_ASPECT)
    return image.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))


class Loader(threading.Thread):
    """Decodes and preprocesses images ahead of the model, in source order, into batches."""

    def __init__(
        self,
        source: ImageSource,
        preprocess: Callable[[list[Image.Image]], torch.Tensor],
        start: int,
        batch_size: int,
        shard_images: int,
        workers: int,
        depth: int,
    ):
        super().__init__(daemon=True, name="extract-loader")
        self.source, self.preprocess = source, preprocess
        self.start_index, self.batch_size, self.shard_images = start, batch_size, shard_images
        self.workers = max(1, workers)
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop_event = threading.Event()

    def _one(self, index: int) -> tuple[str, torch.Tensor | ImageError, int | None]:
        image_id, image = self.source.get(index)
        if isinstance(image, ImageError):
            return image_id, image, None
        try:
            pixels = self.preprocess([guard_aspect(image)])
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:
            return image_id, ImageError(f"{image_id}: preprocessing failed ({err})"), None
        return image_id, pixels, self.source.label(index)

    def _put(self, item: Any) -> bool:
        while not self.stop_event.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # handed to the main thread, which re-raises it
            self._put(err)

    def _run(self) -> None:
        n = len(self.source)
        pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="extract-decode")
            if self.workers > 1
            else None
        )
        pix: list[torch.Tensor] = []
        ids: list[str] = []
        idxs: list[int] = []
        labels: list[int | None] = []
        skipped: list[dict] = []
        in_shard = 0
        window = max(self.batch_size, 4 * self.workers)
        try:
            i = self.start_index
            while i < n:
                chunk = range(i, min(n, i + window))
                results = pool.map(self._one, chunk) if pool else map(self._one, chunk)
                for index, (image_id, result, label) in zip(chunk, results):
                    if self.stop_event.is_set():
                        return
                    if isinstance(result, ImageError):
                        skipped.append({"index": index, "id": image_id, "reason": str(result)})
                        continue
                    pix.append(result)
                    ids.append(image_id)
                    idxs.append(index)
                    labels.append(label)
                    in_shard += 1
                    end_shard = in_shard == self.shard_images
                    if len(ids) == self.batch_size or end_shard:
                        batch = Batch(
                            torch.cat(pix), ids, idxs, labels, skipped, index + 1, end_shard
                        )
                        if not self._put(batch):
                            return
                        pix, ids, idxs, labels, skipped = [], [], [], [], []
                        if end_shard:
                            in_shard = 0
                i = chunk.stop
            self._put(
                Batch(
                    torch.cat(pix) if pix else None,
                    ids,
                    idxs,
                    labels,
                    skipped,
                    n,
                    end_of_shard=False,
                    end_of_source=True,
                )
            )
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)


class Writer(threading.Thread):
    """Writes finished shards to every layer's store while the model computes the next one."""

    def __init__(self, writers: list[StoreWriter]):
        super().__init__(daemon=True, name="extract-writer")
        self.writers = writers
        self.q: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain; the main thread reports the error
            try:
                if job.arrays is not None and job.ids:
                    for w, arr in zip(self.writers, job.arrays):
                        w.commit_shard(
                            arr, job.ids, job.indices, job.labels, job.skipped, job.source_stop
                        )
                    job.skipped = []
                if job.final:
                    for w in self.writers:
                        w.finish(job.skipped, job.source_stop)
            except BaseException as err:
                self.error = err

    def submit(self, job: ShardJob | None) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(job)
