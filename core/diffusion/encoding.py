"""Prompt embeddings as the pipeline computes them, and which token positions to steer.

Why re-implemented: steering edits the embeddings between the text encoder and the UNet, so they
must be exactly those ``StableDiffusionPipeline.encode_prompt`` would pass on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

SITE = "text_encoder.last_hidden_state"


@dataclass
class Encoded:
    """Prompt embeddings as the pipeline uses them, with where each prompt's tokens are."""

    embeds: torch.Tensor  # [B, T, D] text encoder outputs (last_hidden_state)
    input_ids: torch.Tensor  # [B, T]
    eos: torch.Tensor  # [B] position of the first end-of-text token (the prompt's last token)

    def mask(self, positions: str | Sequence[int] = "all") -> torch.Tensor:
        """Bool [B, T] of the positions to steer.

        ``all``: every position except the start token (its output is the same for every prompt;
        padding positions are kept: the UNet attends to them too). ``prompt``: the prompt's
        tokens and its end token. A list of ints: those positions (negative counts from the end).
        """
        b, t = self.input_ids.shape
        out = torch.zeros(b, t, dtype=torch.bool)
        if isinstance(positions, str):
            if positions == "all":
                out[:, 1:] = True
            elif positions == "prompt":
                ar = torch.arange(t)
                out = (ar[None] >= 1) & (ar[None] <= self.eos[:, None])
            else:
                raise ValueError(
                    f"positions must be 'all', 'prompt' or a list of ints, got {positions!r}"
                )
        else:
            pos = [int(p) for p in positions]
            bad = [p for p in pos if not -t <= p < t]
            if bad:
                raise ValueError(f"token positions {bad} are outside 0..{t - 1}")
            if not pos:
                raise ValueError("no token positions to steer")
            out[:, pos] = True
        return out


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty prompt: type what the image should show")
    return prompt.strip()


@torch.inference_mode()
def encode_prompts(pipe, prompts: Sequence[str], allow_empty: bool = False) -> Encoded:
    """Tokenize and encode like ``StableDiffusionPipeline.encode_prompt`` (no clip_skip, no LoRA):
    padded to the tokenizer's max length, ``text_encoder(ids)[0]``, cast to the encoder dtype."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not allow_empty:
        prompts = [check_prompt(p) for p in prompts]
    tok = pipe.tokenizer
    batch = tok(
        list(prompts),
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = batch.input_ids
    te = pipe.text_encoder
    mask = None
    if getattr(te.config, "use_attention_mask", False):
        mask = batch.attention_mask.to(te.device)
    embeds = te(ids.to(te.device), attention_mask=mask)[0].to(te.dtype)
    eos_id = tok.eos_token_id
    is_eos = ids == eos_id
    eos = torch.where(
        is_eos.any(1), is_eos.float().argmax(1), torch.full((len(ids),), ids.shape[1] - 1)
    )
    return Encoded(embeds, ids, eos)


__all__ = ["SITE", "Encoded", "check_prompt", "encode_prompts"]
