"""Editing prompt embeddings through the SAE (or along a direction) and generating images.

Why the error-term form: ``e + decode(edited) - decode(codes)`` leaves what the SAE does not
explain untouched, so an empty edit returns the embeddings bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from saescope.core.diffusion.pipeline import image_size
from saescope.core.sae import SAE, ShapeMismatch
from saescope.core.steering import Edit, apply_edits


def feature_vector(sae: SAE, feature: int, amount: float = 1.0) -> torch.Tensor:
    """What adding ``amount`` to a feature's code adds to a raw embedding: ``amount * W_dec[f] *
    norm_scale`` (the decoder is linear, so this is exact)."""
    f = sae.check_feature(feature)
    return (sae.W_dec[f] * sae.norm_scale).detach() * float(amount)


@torch.inference_mode()
def steer_embeddings(
    sae: SAE,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    edits: Sequence[Edit] = (),
    add: dict[int, float] | None = None,
) -> torch.Tensor:
    """Error-term steering of prompt embeddings [B, T, D] on ``mask`` [B, T].

    ``edits`` set/scale codes (:class:`core.steering.Edit`); ``add`` adds an amount to a
    feature's code (also where it was off: that is how a feature is amplified; a negative amount
    suppresses it). Returns ``e + decode(edited) - decode(codes)`` on the masked tokens and ``e``
    elsewhere; without edits it returns ``embeds`` itself, unchanged.
    """
    add = {sae.check_feature(f): float(v) for f, v in (add or {}).items() if float(v) != 0.0}
    if not edits and not add:
        return embeds
    if embeds.shape[-1] != sae.cfg.d_in:
        raise ShapeMismatch(
            f"SAE width {sae.cfg.d_in} does not match embeddings of width {embeds.shape[-1]}"
        )
    if mask.shape != embeds.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit embeddings {tuple(embeds.shape)}")
    x = embeds[mask].float()
    codes = sae.encode(x)
    edited = apply_edits(codes, edits, sae)
    for f, v in add.items():
        edited[..., f] += v
    out = embeds.clone()
    out[mask] = (x + (sae.decode(edited) - sae.decode(codes))).to(embeds.dtype)
    return out


def add_direction(
    embeds: torch.Tensor, direction: torch.Tensor, alpha: float, mask: torch.Tensor
) -> torch.Tensor:
    """``e + alpha * direction / |direction|`` on the masked tokens (a copy; ``e`` elsewhere)."""
    d = direction.detach().to(torch.float32)
    n = float(d.norm())
    if n == 0:
        raise ValueError("cannot steer along a zero direction")
    out = embeds.clone()
    out[mask] = (embeds[mask].float() + float(alpha) * d / n).to(embeds.dtype)
    return out


@torch.inference_mode()
def generate(
    pipe,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    seeds: Sequence[int],
    steps: int = 4,
    guidance: float = 5.0,
    size: int | None = None,
) -> list[Image.Image]:
    """One image per row of ``prompt_embeds`` with ``torch.Generator().manual_seed(seed)``.

    ``negative_embeds`` [1 or B, T, D] are the unconditional embeddings of classifier-free
    guidance (used when ``guidance > 1``); they are never steered.
    """
    b = prompt_embeds.shape[0]
    if len(seeds) != b:
        raise ValueError(f"{len(seeds)} seeds for {b} prompt embeddings")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    dev = pipe.unet.device
    neg = None
    if negative_embeds is not None:
        neg = (
            negative_embeds.expand(b, -1, -1) if negative_embeds.shape[0] == 1 else negative_embeds
        )
        neg = neg.to(dev)
    size = size or image_size(pipe)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(
        prompt_embeds=prompt_embeds.to(dev),
        negative_prompt_embeds=neg,
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        generator=gens,
        height=size,
        width=size,
        output_type="pil",
    )
    return list(out.images)


__all__ = ["feature_vector", "steer_embeddings", "add_direction", "generate"]
