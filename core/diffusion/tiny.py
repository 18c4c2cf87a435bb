"""The tiny random StableDiffusion pipeline (and CLIP scorer) built from configs, offline.

Why: tests, the demo and CI need a pipeline without a download; its images are noise, so figures
on it measure the mechanism, not semantics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from saescope.core.diffusion.scorer import CLIP_MEAN, CLIP_STD, SCORER_DIR
from saescope.core.diffusion.tokenizer import tiny_tokenizer, write_tiny_tokenizer_files
from saescope.core.fileio import atomic_dir

TINY = "tiny"  # pipeline spec: the cached tiny random pipeline
TINY_VERSION = 1


def tiny_pipeline(
    seed: int = 0,
    size: int = 32,
    width: int = 32,
    max_length: int = 16,
    tokenizer_folder: str | os.PathLike | None = None,
):
    """A tiny random ``StableDiffusionPipeline`` built from configs (no download).

    Text encoder: 2 CLIP blocks of width ``width``; UNet: two resolutions (8, 16 channels) with
    cross-attention; VAE: two blocks (scale factor 2), so images are ``size`` px. Random weights:
    the images are noise, but every code path of a real StableDiffusion pipeline runs.
    """
    import tempfile

    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    if size % 8:
        raise ValueError(f"tiny pipeline size must be a multiple of 8, got {size}")
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_tokenizer(tokenizer_folder or tmp, max_length)
    torch.manual_seed(seed)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=width,
            intermediate_size=2 * width,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=max_length,
            projection_dim=width,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=size // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=size,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te.eval(),
        tokenizer=tok,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_clip(tokenizer, seed: int = 1, image_size: int = 32):
    """A tiny random ``CLIPModel`` whose text tower uses ``tokenizer`` (the offline scorer)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=16,
    )
    return CLIPModel(cfg).eval()


def save_tiny(folder: str | os.PathLike, seed: int = 0, size: int = 32) -> Path:
    """Save the tiny pipeline (``save_pretrained`` layout) plus a tiny CLIP scorer in
    ``folder/clip_scorer`` (model, tokenizer, preprocessor config), atomically."""
    import shutil

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        tok_dir = write_tiny_tokenizer_files(tmp / "_tokenizer_files")
        pipe = tiny_pipeline(seed=seed, size=size, tokenizer_folder=tok_dir)
        pipe.save_pretrained(tmp)
        scorer = tmp / SCORER_DIR
        tiny_clip(pipe.tokenizer, seed=seed + 1, image_size=size).save_pretrained(scorer)
        pipe.tokenizer.save_pretrained(scorer)
        (scorer / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "crop_size": {"height": size, "width": size},
                    "size": {"shortest_edge": size},
                    "image_mean": list(CLIP_MEAN),
                    "image_std": list(CLIP_STD),
                    "do_resize": True,
                    "do_center_crop": True,
                    "do_normalize": True,
                    "rescale_factor": 1 / 255,
                },
                indent=2,
            )
        )
        shutil.rmtree(tok_dir)
        (tmp / "saescope_tiny.json").write_text(
            json.dumps(
                {
                    "tiny": True,
                    "seed": seed,
                    "size": size,
                    "version": TINY_VERSION,
                    "note": "random weights: images are noise",
                },
                indent=2,
            )
        )
    return folder


def tiny_folder() -> Path:
    """The tiny random pipeline saved once under the saescope cache (built on first use)."""
    from saescope.core.paths import cache_dir

    folder = cache_dir("diffusion") / f"tiny-v{TINY_VERSION}"
    if not (folder / "model_index.json").is_file():
        save_tiny(folder)
    return folder


def is_tiny(spec: str | os.PathLike | None) -> bool:
    """Whether ``spec`` names a tiny random pipeline (``tiny`` or a folder made by save_tiny)."""
    if spec is None:
        return False
    if str(spec) == TINY:
        return True
    return (Path(spec) / "saescope_tiny.json").is_file()


__all__ = [
    "TINY",
    "TINY_VERSION",
    "tiny_pipeline",
    "tiny_clip",
    "save_tiny",
    "tiny_folder",
    "is_tiny",
]
