"""Loading a text-to-image pipeline and checking that it can be steered by an SAE.

Why checks up front: a pipeline without ``prompt_embeds``, or an SAE of another text-encoder
width, would otherwise fail deep inside diffusers with an unrelated message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from saescope.core.diffusion.scorer import DEFAULT_SCORER, SCORER_DIR
from saescope.core.diffusion.tiny import TINY, tiny_folder
from saescope.core.sae import SAE, ShapeMismatch


def resolve_pipeline_spec(spec: str | os.PathLike) -> str:
    """``tiny`` -> the cached tiny folder; folders -> absolute paths; Hub ids unchanged."""
    spec = str(spec)
    if spec == TINY:
        return str(tiny_folder())
    if Path(spec).exists():
        return str(Path(spec).resolve())
    return spec


def load_pipeline(spec: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None):
    """A text-to-image pipeline from ``tiny``, a local folder, or a Hub id.

    The pipeline must take ``prompt_embeds`` and have a CLIP ``text_encoder`` + ``tokenizer``
    (StableDiffusion-style, e.g. ``stabilityai/sd-turbo``).
    """
    from diffusers import DiffusionPipeline

    path = resolve_pipeline_spec(spec)
    kwargs: dict[str, Any] = {"low_cpu_mem_usage": False}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if Path(path).is_dir() and not (Path(path) / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    try:
        pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"could not load pipeline {spec!r} (not a local pipeline folder, and the Hub is "
            f"unreachable or has no such repo): {first}"
        ) from err
    check_pipeline(pipe, str(spec))
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe


def check_pipeline(pipe, name: str = "pipeline") -> None:
    """Raise a clear ValueError if ``pipe`` cannot be steered through prompt embeddings."""
    import inspect

    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ValueError(f"{name}: {type(pipe).__name__} has no text_encoder/tokenizer to steer")
    params = inspect.signature(pipe.__call__).parameters
    if "prompt_embeds" not in params or "negative_prompt_embeds" not in params:
        raise ValueError(f"{name}: {type(pipe).__name__} does not take prompt_embeds")


def text_width(pipe) -> int:
    return int(pipe.text_encoder.config.hidden_size)


def image_size(pipe) -> int:
    """The pipeline's native image side in pixels (UNet sample size x VAE scale factor)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def check_sae_fits(sae: SAE, pipe) -> None:
    """The SAE must read vectors as wide as the text encoder's outputs."""
    d = text_width(pipe)
    if sae.cfg.d_in != d:
        raise ShapeMismatch(
            f"SAE width {sae.cfg.d_in} does not match the text encoder width {d} "
            f"of this pipeline (the SAE was trained on {sae.cfg.model_id!r})"
        )


def default_scorer(pipeline_spec: str) -> str:
    """The CLIP scorer that goes with a pipeline: its own ``clip_scorer`` folder (tiny
    pipelines carry one), else OpenAI CLIP ViT-B/32 from the Hub."""
    local = Path(resolve_pipeline_spec(pipeline_spec)) / SCORER_DIR
    return str(local) if local.is_dir() else DEFAULT_SCORER


__all__ = [
    "resolve_pipeline_spec",
    "load_pipeline",
    "check_pipeline",
    "text_width",
    "image_size",
    "check_sae_fits",
    "default_scorer",
]
