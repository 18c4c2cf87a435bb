"""``saescope push``: upload a trained SAE folder to the Hugging Face Hub."""

from __future__ import annotations

from dataclasses import dataclass

from saescope.core.sae_io import from_pretrained, push_to_hub
from saescope.train.cli import add_step, option


@dataclass(kw_only=True)
class PushConfig:
    """``saescope push``: nothing is saved (the config would hold the token)."""

    sae: str = option(positional=True)
    """SAE folder"""
    repo: str
    """Hub repo id, e.g. user/dinov2-s-sae"""
    private: bool = False
    """create the repo as private"""
    path_in_repo: str | None = None
    """sub-folder in the repo (several SAEs per repo)"""
    token: str | None = None
    """Hub token (default: HF_TOKEN or the stored login)"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "push",
        PushConfig,
        run,
        help="upload an SAE folder to the Hugging Face Hub",
        description="Upload an SAE (config.json + sae.safetensors + a model card) with "
        "huggingface_hub.\nAuthenticate with HF_TOKEN or `huggingface-cli login`.",
    )


def run(cfg: PushConfig) -> int:
    sae = from_pretrained(cfg.sae)
    url = push_to_hub(
        sae, cfg.repo, private=cfg.private, token=cfg.token, path_in_repo=cfg.path_in_repo
    )
    print(f"uploaded {sae.cfg.name} to {url}")
    return 0
