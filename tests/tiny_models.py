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

    from core.backbones import load_backbone

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                             intermediate_size=2 * width, image_size=image_size,
                             patch_size=14)).save_pretrained(folder)
    return load_backbone(str(folder))
