"""The extraction run of the SIGKILL-and-resume test, as a script (a real process to kill).

It extracts an image folder with a tiny model through :func:`saescope.train.extract.extract`,
optionally slowed down per image so that a test can SIGKILL it between shards::

    python tests/extract_worker.py MODEL_DIR IMAGE_DIR OUT [--delay S] [--shard-images N]

The test runs the clean reference in-process through the ``extract_worker`` fixture (this file
loaded by path), so both runs are the very same code.
"""

from __future__ import annotations

import argparse
import sys
import time

from PIL import Image

from saescope.core.sources import SubsetSource


class SlowSource(SubsetSource):
    """Wraps a source, sleeping before each image (to give a test time to kill the process)."""

    def __init__(self, base, delay: float):
        super().__init__(base, 0, len(base))
        self.delay = delay

    def load(self, index: int) -> Image.Image:
        time.sleep(self.delay)
        return super().load(index)


def run_extract(
    model: str,
    images: str,
    out: str,
    delay: float = 0.0,
    shard_images: int = 4,
    batch_size: int = 3,
    layers: list[int] | None = None,
) -> None:
    """The extraction every process of the kill test runs (same settings, one torch thread)."""
    import torch

    from saescope.core.backbones import load_backbone
    from saescope.core.sources import open_source
    from saescope.train.extract import extract

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same kernels in every process, whatever the load
    try:
        source = open_source(images)
        if delay:
            source = SlowSource(source, delay)
        extract(
            load_backbone(model),
            source,
            out,
            layers=layers or [-2],
            kinds="all",
            batch_size=batch_size,
            shard_images=shard_images,
            progress=False,
            workers=2,
        )
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
    run_extract(
        args.model,
        args.images,
        args.out,
        args.delay,
        args.shard_images,
        args.batch_size,
        args.layer,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
