"""``saescope push``: upload a trained SAE folder to the Hugging Face Hub."""

from __future__ import annotations

import argparse

from saescope.core.sae_io import from_pretrained, push_to_hub


def add_parser(sub) -> None:
    p = sub.add_parser(
        "push", help="upload an SAE folder to the Hugging Face Hub",
        description="Upload an SAE (config.json + sae.safetensors + a model card) with "
        "huggingface_hub. Authenticate with HF_TOKEN or `huggingface-cli login`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sae", help="SAE folder")
    p.add_argument("--repo", required=True, help="Hub repo id, e.g. user/dinov2-s-sae")
    p.add_argument("--private", action="store_true")
    p.add_argument("--path-in-repo", default=None, help="sub-folder in the repo (several SAEs per repo)")
    p.add_argument("--token", default=None)
    p.set_defaults(func=run, step="push")


def run(args: argparse.Namespace) -> int:
    sae = from_pretrained(args.sae)
    url = push_to_hub(sae, args.repo, private=args.private, token=args.token,
                      path_in_repo=args.path_in_repo)
    print(f"uploaded {sae.cfg.name} to {url}")
    return 0
