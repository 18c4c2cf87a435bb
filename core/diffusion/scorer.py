"""CLIP image-text scores: how feature names are measured on generated images.

Why numpy/PIL preprocessing: the scorer must run without torchvision or a processor download,
reading the few preprocessing settings it needs from the model's own config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SCORER_DIR = "clip_scorer"  # a CLIP model saved inside a (tiny) pipeline folder
DEFAULT_SCORER = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """CLIP image-text similarity (``100 * cos``, the CLIPScore scale) of images vs. words.

    Preprocessing is numpy/PIL only (resize the short side, centre crop, CLIP mean/std), read
    from the model's ``preprocessor_config.json`` when it has one: no torchvision, no processor.
    """

    def __init__(self, spec: str | os.PathLike, device: str = "cpu", template: str = "{word}"):
        from transformers import CLIPModel, CLIPTokenizer

        self.spec = str(spec)
        self.template = template
        try:
            self.model = CLIPModel.from_pretrained(self.spec).to(device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(self.spec)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FileNotFoundError(f"could not load CLIP scorer {self.spec!r}: {first}") from err
        self.device = device
        size = int(self.model.config.vision_config.image_size)
        self.crop, self.short, self.mean, self.std = size, size, CLIP_MEAN, CLIP_STD
        pp = self._preprocessor_config()
        if pp:
            crop = pp.get("crop_size", size)
            self.crop = int(crop.get("height", size) if isinstance(crop, dict) else crop)
            short = pp.get("size", size)
            self.short = int(
                short.get("shortest_edge", self.crop) if isinstance(short, dict) else short
            )
            self.mean = tuple(pp.get("image_mean", CLIP_MEAN))
            self.std = tuple(pp.get("image_std", CLIP_STD))
        self._text_cache: dict[str, torch.Tensor] = {}

    def _preprocessor_config(self) -> dict | None:
        local = Path(self.spec) / "preprocessor_config.json"
        if local.is_file():
            return json.loads(local.read_text())
        if Path(self.spec).exists():
            return None
        try:
            from huggingface_hub import hf_hub_download

            fetched = hf_hub_download(self.spec, "preprocessor_config.json")
            return json.loads(Path(fetched).read_text())
        except Exception:
            return None

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised pixels [N, 3, crop, crop]."""
        arrs = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            s = self.short / min(w, h)
            im = im.resize(
                (max(self.crop, round(w * s)), max(self.crop, round(h * s))), Image.BICUBIC
            )
            w, h = im.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
            a = np.asarray(im, np.float32) / 255.0
            arrs.append((a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32))
        return torch.from_numpy(np.stack(arrs).transpose(0, 3, 1, 2).copy())

    @torch.inference_mode()
    def text_features(self, words: Sequence[str]) -> torch.Tensor:
        missing = [w for w in words if w not in self._text_cache]
        if missing:
            batch = self.tokenizer(
                [self.template.format(word=w) for w in missing],
                padding=True,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            feats = self.model.get_text_features(**batch)
            feats = getattr(feats, "pooler_output", feats)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[w] for w in words])

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image], batch: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            px = self.preprocess(images[i : i + batch]).to(self.device)
            f = self.model.get_image_features(pixel_values=px)
            f = getattr(f, "pooler_output", f)
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(out)

    def scores(self, images: Sequence[Image.Image], words: Sequence[str]) -> torch.Tensor:
        """[N images, W words] of ``100 * cos(image, text)``."""
        if not words:
            raise ValueError("no words to score against")
        return 100.0 * self.image_features(images) @ self.text_features(words).T


__all__ = ["SCORER_DIR", "DEFAULT_SCORER", "CLIP_MEAN", "CLIP_STD", "ClipScorer"]
