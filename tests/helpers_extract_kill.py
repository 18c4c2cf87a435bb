"""Test helpers for extraction: tiny models, image folders, and a subprocess entry point.

Run as a script, it extracts an image folder with a tiny model through :func:`train.extract.extract`,
optionally slowed down per image so that a test can SIGKILL it between shards::

    python tests/helpers_extract_kill.py MODEL_DIR IMAGE_DIR OUT [--delay S] [--shard-images N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from saescope.train.sources import SubsetSource


def make_tiny_model(path: Path, registers: int = 0, crop: int = 56, seed: int = 0) -> Path:
    """A random 3-block DINOv2 (optionally with registers) that sees ``crop`` px images."""
    import torch
    from transformers import (Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
                              Dinov2WithRegistersModel)

    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                  image_size=28, patch_size=14)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers,
                                                                   **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": crop + 8}, "do_center_crop": True,
        "crop_size": {"height": crop, "width": crop}, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "do_rescale": True, "rescale_factor": 1 / 255, "resample": 3}))
    return path


def make_image_folder(path: Path, n: int, corrupt: tuple[int, ...] = (), seed: int = 0) -> Path:
    """``n`` small random PNG/JPEGs in two sub-folders; indices in ``corrupt`` hold garbage."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = path / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".png" if i % 3 else ".jpg"
        f = sub / f"img_{i:04d}{ext}"
        if i in corrupt:
            f.write_bytes(b"not an image at all" * 3)
            continue
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(f)
    return path


class SlowSource(SubsetSource):
    """Wraps a source, sleeping before each image (to give a test time to kill the process)."""

    def __init__(self, base, delay: float):
        super().__init__(base, 0, len(base))
        self.delay = delay

    def load(self, index: int) -> Image.Image:
        time.sleep(self.delay)
        return super().load(index)


def run_extract(model: str, images: str, out: str, delay: float = 0.0, shard_images: int = 4,
                batch_size: int = 3, layers: list[int] | None = None) -> None:
    """The extraction every process of the kill test runs (same settings, one torch thread)."""
    import torch

    from saescope.core.backbones import load_backbone
    from saescope.train.extract import extract
    from saescope.train.sources import open_source

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same kernels in every process, whatever the load
    try:
        source = open_source(images)
        if delay:
            source = SlowSource(source, delay)
        extract(load_backbone(model), source, out, layers=layers or [-2], kinds="all",
                batch_size=batch_size, shard_images=shard_images, progress=False, workers=2)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("images")
    p.add_argument("out")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--shard-images", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--layer", type=int, action="append", default=None)
    args = p.parse_args(argv)
    run_extract(args.model, args.images, args.out, args.delay, args.shard_images, args.batch_size,
                args.layer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
