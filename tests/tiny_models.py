"""The tiny random DINOv2 most tests run on: 3 blocks, width 32, built from a config (offline).

One definition, so that every fixture gets the same model for the same seed.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_dinov2(folder: Path, seed: int = 0, layers: int = 3, width: int = 32,
                image_size: int = 56):
    """Save a random ``Dinov2Model`` to ``folder`` and load it as a saescope backbone."""
    from transformers import Dinov2Config, Dinov2Model

    from saescope.core.backbones import load_backbone

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                             intermediate_size=2 * width, image_size=image_size,
                             patch_size=14)).save_pretrained(folder)
    return load_backbone(str(folder))


def single_torch_thread():
    """Tiny models run fastest on one thread: on a busy 2-core machine OpenMP spinning made a
    tiny-pipeline generation 10-30x slower with two. A module makes it a fixture with
    ``one_thread = pytest.fixture(scope="module", autouse=True)(single_torch_thread)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
