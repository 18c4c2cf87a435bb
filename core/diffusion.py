"""Steering a text-to-image diffusion pipeline through an SAE on its CLIP text encoder.

The SAE reads the token outputs of the pipeline's text encoder (``text_encoder(ids)[0]``, exactly
what the UNet cross-attends to). Steering edits those prompt embeddings before the pipeline sees
them:

- error-term form: ``e + decode(edited codes) - decode(codes)`` on the chosen token positions, so
  that an empty edit returns ``e`` bit for bit (the same recipe as :mod:`core.steering`);
- additive form: ``e + alpha * direction`` on the chosen positions (a feature's decoder direction,
  or a random control direction).

Only the conditional embeddings are steered; the negative (unconditional) embeddings of
classifier-free guidance stay those of the negative prompt, so guidance pushes *towards* the edit.

Feature naming is automatic: generate with a feature amplified and not (same seeds), score both
against a vocabulary of attribute words with a CLIP model, and name the feature after the word
whose score rises most relative to the rest of the vocabulary (:func:`relative`). The evaluation
repeats this on held-out seeds and prompts and reports the fraction of features whose
amplification raises the (relative, and raw) score of their own name.

Everything runs offline on a tiny random StableDiffusion pipeline built from configs
(:func:`tiny_pipeline`, :func:`save_tiny`): its images are noise, so figures on it measure the
mechanism, not semantics. Real pipelines (``stabilityai/sd-turbo``, any StableDiffusion-style
folder) load through :func:`load_pipeline` when the network allows.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from saescope import __version__
from saescope.core.bundle import sha256
from saescope.core.sae import SAE, ShapeMismatch
from saescope.core.steering import Edit, apply_edits

FORMAT = "saescope.diffusion_steering"
FORMAT_VERSION = 1
MANIFEST = "diffusion.json"
SAE_DIR = "sae"
STATS_FILE = "feature_stats.json"
NAMES_FILE = "feature_names.json"
SCORER_DIR = "clip_scorer"  # a CLIP model saved inside a (tiny) pipeline folder
TINY = "tiny"  # pipeline spec: the cached tiny random pipeline
TINY_VERSION = 1
SITE = "text_encoder.last_hidden_state"
DEFAULT_SCORER = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ------------------------------------------------------------------------------ vocabulary
# Attribute words: what features get named after, and what the built-in corpus varies.
ATTRIBUTES: dict[str, list[str]] = {
    "colour": ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
               "white", "grey", "golden"],
    "material": ["wooden", "metallic", "glass", "stone", "furry", "plastic", "paper", "woollen"],
    "pattern": ["striped", "spotted", "checkered", "plain"],
    "style": ["painting", "sketch", "cartoon", "photograph", "watercolor", "pixelated", "neon"],
    "light": ["sunny", "night", "foggy", "snowy", "rainy", "dark", "bright"],
    "size": ["tiny", "huge", "round", "square"],
}
OBJECTS = ["car", "house", "dog", "cat", "tree", "chair", "flower", "bird", "boat", "cup", "hat",
           "mountain", "apple", "clock", "lamp", "horse", "bicycle", "shoe", "castle", "fish"]
TEMPLATES = ["a {attr} {obj}", "a photo of a {attr} {obj}", "a {obj} that is {attr}",
             "a picture of a {attr} {obj} in the street"]
NEUTRAL_TEMPLATE = "a photo of a {obj}"


def vocabulary() -> list[str]:
    """The attribute words features are named after (all groups, in a fixed order)."""
    return [w for group in ATTRIBUTES.values() for w in group]


def builtin_corpus() -> list[str]:
    """Templated attribute/object prompts (every template x attribute x object)."""
    return [t.format(attr=a, obj=o) for t in TEMPLATES for a in vocabulary() for o in OBJECTS]


def neutral_prompts(objects: Sequence[str]) -> list[str]:
    """Attribute-free prompts, for naming and evaluation (the edit supplies the attribute)."""
    return [NEUTRAL_TEMPLATE.format(obj=o) for o in objects]


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines and ``#`` comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {p} does not exist")
    prompts = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    prompts = [ln for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {p} holds no prompts (one per line)")
    return prompts


# ------------------------------------------------------------------------------ tiny models
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table of byte-level BPE."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tokenizer_words() -> list[str]:
    """Words the tiny tokenizer keeps whole: the corpus, the vocabulary and the UI's examples."""
    words = set(vocabulary()) | set(OBJECTS)
    for text in TEMPLATES + [NEUTRAL_TEMPLATE]:
        words |= {w for w in text.replace("{attr}", " ").replace("{obj}", " ").split()}
    words |= {"an", "with", "and", "on", "sky", "sea", "forest", "city", "portrait", "landscape"}
    return sorted(words)


def _apply_bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merging as the tokenizer does it: repeatedly join the lowest-ranked pair."""
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        _, i = min(pairs)
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def write_tiny_tokenizer_files(folder: str | os.PathLike, words: Iterable[str] | None = None) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` of a small byte-level BPE CLIP tokenizer.

    Why: the real CLIP vocabulary cannot be downloaded here. The table holds every byte (so any
    text tokenizes), the byte + ``</w>`` forms, merges that make each of ``words`` one token, and
    the two special tokens: a genuine CLIP tokenizer, just with a 600-entry vocabulary.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars + [c + "</w>" for c in chars]:
        vocab[c] = len(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words if words is not None else tokenizer_words())):
        # what the merges so far make of the word, then merges that join those pieces left to
        # right; appended merges rank after all earlier ones, so earlier words stay whole
        parts = _apply_bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(parts) > 1:
            ranks.setdefault((parts[0], parts[1]), len(ranks))
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def tiny_tokenizer(folder: str | os.PathLike, max_length: int = 16):
    """A ``CLIPTokenizer`` read from the files of :func:`write_tiny_tokenizer_files`."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not (folder / "vocab.json").is_file():
        write_tiny_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)


def tiny_pipeline(seed: int = 0, size: int = 32, width: int = 32, max_length: int = 16,
                  tokenizer_folder: str | os.PathLike | None = None):
    """A tiny random ``StableDiffusionPipeline`` built from configs (no download).

    Text encoder: 2 CLIP blocks of width ``width``; UNet: two resolutions (8, 16 channels) with
    cross-attention; VAE: two blocks (scale factor 2), so images are ``size`` px. Random weights:
    the images are noise, but every code path of a real StableDiffusion pipeline runs.
    """
    import tempfile

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if size % 8:
        raise ValueError(f"tiny pipeline size must be a multiple of 8, got {size}")
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_tokenizer(tokenizer_folder or tmp, max_length)
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=max_length, projection_dim=width,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=size // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=width,
        norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        norm_num_groups=4, sample_size=size)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_clip(tokenizer, seed: int = 1, image_size: int = 32):
    """A tiny random ``CLIPModel`` whose text tower uses ``tokenizer`` (the offline scorer)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_hidden_layers=2,
                         max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_hidden_layers=2, image_size=image_size, patch_size=8),
        projection_dim=16)
    return CLIPModel(cfg).eval()


def save_tiny(folder: str | os.PathLike, seed: int = 0, size: int = 32) -> Path:
    """Save the tiny pipeline (``save_pretrained`` layout) plus a tiny CLIP scorer in
    ``folder/clip_scorer`` (model, tokenizer, preprocessor config), atomically."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        tok_dir = write_tiny_tokenizer_files(tmp / "_tokenizer_files")
        pipe = tiny_pipeline(seed=seed, size=size, tokenizer_folder=tok_dir)
        pipe.save_pretrained(tmp)
        scorer = tmp / SCORER_DIR
        tiny_clip(pipe.tokenizer, seed=seed + 1, image_size=size).save_pretrained(scorer)
        pipe.tokenizer.save_pretrained(scorer)
        (scorer / "preprocessor_config.json").write_text(json.dumps({
            "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
            "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_resize": True,
            "do_center_crop": True, "do_normalize": True, "rescale_factor": 1 / 255}, indent=2))
        shutil.rmtree(tok_dir)
        (tmp / "saescope_tiny.json").write_text(json.dumps(
            {"tiny": True, "seed": seed, "size": size, "version": TINY_VERSION,
             "note": "random weights: images are noise"}, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


# ------------------------------------------------------------------------------ pipelines
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
    except (OSError, ValueError, EnvironmentError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"could not load pipeline {spec!r} (not a local pipeline folder, and the Hub is "
            f"unreachable or has no such repo): {first}") from err
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
        raise ShapeMismatch(f"SAE width {sae.cfg.d_in} does not match the text encoder width {d} "
                            f"of this pipeline (the SAE was trained on {sae.cfg.model_id!r})")


# ------------------------------------------------------------------------------ prompts
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
                raise ValueError(f"positions must be 'all', 'prompt' or a list of ints, got {positions!r}")
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
    batch = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
                truncation=True, return_tensors="pt")
    ids = batch.input_ids
    te = pipe.text_encoder
    mask = None
    if getattr(te.config, "use_attention_mask", False):
        mask = batch.attention_mask.to(te.device)
    embeds = te(ids.to(te.device), attention_mask=mask)[0].to(te.dtype)
    eos_id = tok.eos_token_id
    is_eos = ids == eos_id
    eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((len(ids),), ids.shape[1] - 1))
    return Encoded(embeds, ids, eos)


# ------------------------------------------------------------------------------ steering
def feature_vector(sae: SAE, feature: int, amount: float = 1.0) -> torch.Tensor:
    """What adding ``amount`` to a feature's code adds to a raw embedding: ``amount * W_dec[f] *
    norm_scale`` (the decoder is linear, so this is exact)."""
    f = sae.check_feature(feature)
    return (sae.W_dec[f] * sae.norm_scale).detach() * float(amount)


@torch.inference_mode()
def steer_embeddings(sae: SAE, embeds: torch.Tensor, mask: torch.Tensor,
                     edits: Sequence[Edit] = (), add: dict[int, float] | None = None) -> torch.Tensor:
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
        raise ShapeMismatch(f"SAE width {sae.cfg.d_in} does not match embeddings of width {embeds.shape[-1]}")
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


def add_direction(embeds: torch.Tensor, direction: torch.Tensor, alpha: float,
                  mask: torch.Tensor) -> torch.Tensor:
    """``e + alpha * direction / |direction|`` on the masked tokens (a copy; ``e`` elsewhere)."""
    d = direction.detach().to(torch.float32)
    n = float(d.norm())
    if n == 0:
        raise ValueError("cannot steer along a zero direction")
    out = embeds.clone()
    out[mask] = (embeds[mask].float() + float(alpha) * d / n).to(embeds.dtype)
    return out


@torch.inference_mode()
def generate(pipe, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None,
             seeds: Sequence[int], steps: int = 4, guidance: float = 5.0,
             size: int | None = None) -> list[Image.Image]:
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
        neg = negative_embeds.expand(b, -1, -1) if negative_embeds.shape[0] == 1 else negative_embeds
        neg = neg.to(dev)
    size = size or image_size(pipe)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(prompt_embeds=prompt_embeds.to(dev), negative_prompt_embeds=neg,
               num_inference_steps=int(steps), guidance_scale=float(guidance), generator=gens,
               height=size, width=size, output_type="pil")
    return list(out.images)


# ------------------------------------------------------------------------------ CLIP scorer
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
            self.short = int(short.get("shortest_edge", self.crop) if isinstance(short, dict) else short)
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

            return json.loads(Path(hf_hub_download(self.spec, "preprocessor_config.json")).read_text())
        except Exception:
            return None

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised pixels [N, 3, crop, crop]."""
        arrs = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            s = self.short / min(w, h)
            im = im.resize((max(self.crop, round(w * s)), max(self.crop, round(h * s))), Image.BICUBIC)
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
            batch = self.tokenizer([self.template.format(word=w) for w in missing], padding=True,
                                   truncation=True, return_tensors="pt").to(self.device)
            feats = self.model.get_text_features(**batch)
            feats = getattr(feats, "pooler_output", feats)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[w] for w in words])

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image], batch: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            px = self.preprocess(images[i:i + batch]).to(self.device)
            f = self.model.get_image_features(pixel_values=px)
            f = getattr(f, "pooler_output", f)
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(out)

    def scores(self, images: Sequence[Image.Image], words: Sequence[str]) -> torch.Tensor:
        """[N images, W words] of ``100 * cos(image, text)``."""
        if not words:
            raise ValueError("no words to score against")
        return 100.0 * self.image_features(images) @ self.text_features(words).T


def default_scorer(pipeline_spec: str) -> str:
    """The CLIP scorer that goes with a pipeline: its own ``clip_scorer`` folder (tiny
    pipelines carry one), else OpenAI CLIP ViT-B/32 from the Hub."""
    local = Path(resolve_pipeline_spec(pipeline_spec)) / SCORER_DIR
    return str(local) if local.is_dir() else DEFAULT_SCORER


# ------------------------------------------------------------------------------ statistics
@torch.inference_mode()
def feature_stats(sae: SAE, acts: torch.Tensor, batch: int = 8192) -> dict[str, list[float]]:
    """Firing frequency, mean activation when firing and max activation of every feature over
    raw activations [N, d_in] (the unit steering strengths are measured in)."""
    w = sae.cfg.d_sae
    count = torch.zeros(w, dtype=torch.float64)
    total = torch.zeros(w, dtype=torch.float64)
    mx = torch.zeros(w)
    for i in range(0, len(acts), batch):
        z = sae.encode(acts[i:i + batch].float())
        on = z > 0
        count += on.sum(0).double()
        total += z.sum(0).double()
        mx = torch.maximum(mx, z.max(0).values)
    n = max(1, len(acts))
    mean = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    return {"frequency": (count / n).tolist(), "mean_active": mean.tolist(), "max": mx.tolist(),
            "n_tokens": int(len(acts))}


def alive_features(stats: dict) -> list[int]:
    return [i for i, m in enumerate(stats["max"]) if m > 0]


def sample_features(stats: dict, n: int | None, seed: int = 0) -> list[int]:
    """``n`` live features drawn uniformly at random (all live ones if ``n`` is None/larger)."""
    alive = alive_features(stats)
    if not alive:
        raise ValueError("no feature of this SAE ever fired on the corpus: nothing to name")
    if n is None or n >= len(alive):
        return alive
    return sorted(random.Random(seed).sample(alive, int(n)))


# ------------------------------------------------------------------------------ naming / eval
@dataclass
class Setting:
    """How images are made for naming and evaluation."""

    prompts: list[str]
    seeds: list[int]
    steps: int = 4
    guidance: float = 5.0
    negative_prompt: str = ""
    positions: str | list[int] = "all"
    size: int | None = None


@dataclass
class _Prepared:
    setting: Setting
    embeds: torch.Tensor  # [P*S, T, D] (prompt-major)
    mask: torch.Tensor
    negative: torch.Tensor  # [1, T, D]
    seeds: list[int]
    base_images: list[Image.Image]
    base_scores: torch.Tensor  # [P*S, W]


def _prepare(pipe, scorer: ClipScorer, words: Sequence[str], setting: Setting) -> _Prepared:
    if not setting.prompts or not setting.seeds:
        raise ValueError("naming/evaluation needs at least one prompt and one seed")
    enc = encode_prompts(pipe, setting.prompts)
    s = len(setting.seeds)
    embeds = enc.embeds.repeat_interleave(s, 0)
    mask = enc.mask(setting.positions).repeat_interleave(s, 0)
    negative = encode_prompts(pipe, [setting.negative_prompt], allow_empty=True).embeds
    seeds = list(setting.seeds) * len(setting.prompts)
    base = generate(pipe, embeds, negative, seeds, setting.steps, setting.guidance, setting.size)
    return _Prepared(setting, embeds, mask, negative, seeds, base, scorer.scores(base, words))


def _score_push(pipe, scorer: ClipScorer, words: Sequence[str], prep: _Prepared,
                vector: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Mean CLIP-score change per word [W] when ``sign * vector`` is added on the mask."""
    st = prep.setting
    steered = prep.embeds.clone()
    steered[prep.mask] = (steered[prep.mask].float() + sign * vector.float()).to(steered.dtype)
    imgs = generate(pipe, steered, prep.negative, prep.seeds, st.steps, st.guidance, st.size)
    return (scorer.scores(imgs, words) - prep.base_scores).mean(0)


@dataclass
class Probe:
    """A direction to name and evaluate: a feature's push, or a random control of equal norm."""

    label: str
    vector: torch.Tensor  # raw-space vector added to each steered token
    feature: int | None = None


def feature_probes(sae: SAE, stats: dict, features: Sequence[int], strength: float) -> list[Probe]:
    """Amplifying feature f by ``strength`` x its max activation on the corpus."""
    return [Probe(f"feature {f}", feature_vector(sae, f, strength * stats["max"][f]), f)
            for f in (sae.check_feature(f) for f in features)]


def random_probes(probes: Sequence[Probe], seed: int = 0) -> list[Probe]:
    """Random directions with the norms of ``probes`` (the control: what chance naming gives)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, p in enumerate(probes):
        r = torch.randn(p.vector.shape, generator=g)
        out.append(Probe(f"random {i}", r / r.norm() * p.vector.float().norm()))
    return out


def relative(delta: torch.Tensor) -> torch.Tensor:
    """Score changes relative to the vocabulary mean (last axis).

    Why: a random or generic image change (contrast, noise) moves the CLIP scores of *all* words
    together; what says that an image became more "striped" is striped rising against the other
    attribute words, as in CLIP zero-shot classification (a softmax over the vocabulary).
    """
    return delta - delta.mean(-1, keepdim=True)


def name_probes(pipe, scorer: ClipScorer, probes: Sequence[Probe], words: Sequence[str],
                setting: Setting, progress: bool = True, desc: str = "name") -> list[dict]:
    """Name each probe after the word whose CLIP score its push raises most relative to the
    vocabulary (same prompts and seeds with and without the push)."""
    from tqdm.auto import tqdm

    words = list(words)
    if len(words) < 2:
        raise ValueError("naming needs a vocabulary of at least 2 words")
    prep = _prepare(pipe, scorer, words, setting)
    out = []
    for p in tqdm(probes, desc=desc, disable=not progress, dynamic_ncols=True):
        raw = _score_push(pipe, scorer, words, prep, p.vector)
        delta = relative(raw)
        order = torch.argsort(delta, descending=True)
        best = int(order[0])
        out.append({"label": p.label, "feature": p.feature, "name": words[best],
                    "delta": float(delta[best]), "delta_raw": float(raw[best]),
                    "margin": float(delta[best] - delta[order[1]]),
                    "top": [[words[int(i)], round(float(delta[i]), 4)] for i in order[:5]]})
    return out


def evaluate_probes(pipe, scorer: ClipScorer, probes: Sequence[Probe], names: Sequence[str],
                    words: Sequence[str], setting: Setting, progress: bool = True,
                    desc: str = "eval") -> dict:
    """On held-out prompts/seeds: does amplifying each probe raise the score of its name, and
    does suppressing it (the negative push) lower it? Relative to the vocabulary (the headline)
    and raw. Returns per-probe rows and fractions."""
    from tqdm.auto import tqdm

    words = list(words)
    for n in names:
        if n not in words:
            raise ValueError(f"name {n!r} is not in the scoring vocabulary")
    prep = _prepare(pipe, scorer, words, setting)
    rows = []
    for p, name in tqdm(list(zip(probes, names)), desc=desc, disable=not progress, dynamic_ncols=True):
        j = words.index(name)
        up_raw = _score_push(pipe, scorer, words, prep, p.vector, +1.0)
        down_raw = _score_push(pipe, scorer, words, prep, p.vector, -1.0)
        up, down = relative(up_raw), relative(down_raw)
        rows.append({"label": p.label, "feature": p.feature, "name": name,
                     "delta_amplify": float(up[j]), "delta_suppress": float(down[j]),
                     "delta_amplify_raw": float(up_raw[j]), "delta_suppress_raw": float(down_raw[j]),
                     "rank_amplify": int((up > up[j]).sum()) + 1})
    return {"rows": rows, **summarize(rows, len(words))}


def summarize(rows: Sequence[dict], n_words: int) -> dict:
    """Fractions over probes. Headline: amplification raises the named word's score relative to
    the vocabulary; the raw-score fractions are reported beside it."""
    n = len(rows)
    if not n:
        return {"n": 0}
    frac = lambda pred: sum(1 for r in rows if pred(r)) / n  # noqa: E731
    return {
        "n": n,
        "fraction_amplify_raises": frac(lambda r: r["delta_amplify"] > 0),
        "fraction_suppress_lowers": frac(lambda r: r["delta_suppress"] < 0),
        "fraction_amplify_raises_raw": frac(lambda r: r["delta_amplify_raw"] > 0),
        "fraction_suppress_lowers_raw": frac(lambda r: r["delta_suppress_raw"] < 0),
        "fraction_top1": frac(lambda r: r["rank_amplify"] == 1),
        "chance_top1": 1.0 / max(1, n_words),
        "mean_delta_amplify": float(np.mean([r["delta_amplify"] for r in rows])),
        "mean_delta_suppress": float(np.mean([r["delta_suppress"] for r in rows])),
    }


# ------------------------------------------------------------------------------ artefact
def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


@dataclass
class Artefact:
    """A trained diffusion-steering folder: SAE + feature statistics + names + manifest."""

    path: Path
    manifest: dict
    sae: SAE
    stats: dict
    names: dict[int, dict] = field(default_factory=dict)

    @property
    def pipeline(self) -> str:
        return self.manifest["pipeline"]

    @property
    def scorer(self) -> str:
        return self.manifest.get("scorer") or default_scorer(self.pipeline)

    @property
    def tiny(self) -> bool:
        return bool(self.manifest.get("tiny"))

    def amount(self, feature: int, strength: float) -> float:
        """Code change for a strength (1 = the feature's max activation on the corpus)."""
        f = self.sae.check_feature(feature)
        return float(strength) * float(self.stats["max"][f])

    def label(self, feature: int) -> str:
        n = self.names.get(int(feature))
        return f"#{feature} · {n['name']}" if n else f"#{feature}"


def save_artefact(folder: str | os.PathLike, sae: SAE, stats: dict, manifest: dict,
                  names: dict[int, dict] | None = None) -> Path:
    """Write the artefact folder; the manifest lists every file with its size and sha256."""
    from saescope.core.sae_io import save_sae

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_sae(sae, folder / SAE_DIR)
    write_json_atomic(folder / STATS_FILE, stats)
    if names is not None:
        write_json_atomic(folder / NAMES_FILE, {str(k): v for k, v in sorted(names.items())})
    files = {}
    for rel in [f"{SAE_DIR}/config.json", f"{SAE_DIR}/sae.safetensors", STATS_FILE] + (
            [NAMES_FILE] if (folder / NAMES_FILE).is_file() else []):
        p = folder / rel
        files[rel] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION,
                "library_version": __version__, "files": files,
                "names": NAMES_FILE if NAMES_FILE in files else None}
    write_json_atomic(folder / MANIFEST, manifest)
    return folder


def _local_artefact(spec: str, revision: str | None = None, token: str | None = None) -> Path:
    p = Path(spec)
    if p.is_dir():
        return p
    if p.exists():
        raise FileNotFoundError(f"{spec} is a file, not a diffusion-steering artefact folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(spec, revision=revision, token=token))
    except HFValidationError as err:
        raise FileNotFoundError(f"{spec!r} is neither a local folder nor a valid Hub repo id") from err
    except Exception as err:
        raise FileNotFoundError(f"could not fetch artefact {spec!r} from the Hugging Face Hub "
                                f"(offline, or no such repo?): {type(err).__name__}") from err


def load_artefact(spec: str | os.PathLike, revision: str | None = None,
                  token: str | None = None, verify: bool = True) -> Artefact:
    """Load an artefact from a local folder or a Hub repo id (checks the listed files)."""
    from saescope.core.sae_io import load_sae_folder

    folder = _local_artefact(str(spec), revision, token)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{folder} is not a diffusion-steering artefact (no {MANIFEST}; "
                                "make one with 'saescope diffusion-fit')")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{mpath} is not a diffusion-steering manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{mpath} has format version {manifest['format_version']}, newer than "
                         f"this saescope ({FORMAT_VERSION}); upgrade saescope")
    for rel, info in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: {rel} is missing (partial download?)")
        if verify and (p.stat().st_size != info["bytes"] or sha256(p) != info["sha256"]):
            raise ValueError(f"{folder}: {rel} does not match its checksum in {MANIFEST}")
    sae = load_sae_folder(folder / SAE_DIR)
    stats = json.loads((folder / STATS_FILE).read_text())
    names: dict[int, dict] = {}
    if manifest.get("names") and (folder / manifest["names"]).is_file():
        names = {int(k): v for k, v in json.loads((folder / manifest["names"]).read_text()).items()}
    if len(stats.get("max", [])) != sae.cfg.d_sae:
        raise ValueError(f"{folder}: {STATS_FILE} has {len(stats.get('max', []))} features, "
                         f"the SAE has {sae.cfg.d_sae}")
    return Artefact(folder, manifest, sae, stats, names)


def push_artefact(folder: str | os.PathLike, repo_id: str, private: bool = False,
                  token: str | None = None, api: Any = None) -> str:
    """Upload an artefact folder as a Hub model repo; returns its URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    load_artefact(folder)  # refuse to publish something that does not load
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=None,
                      commit_message="Upload saescope diffusion-steering SAE", repo_type="model")
    return f"https://huggingface.co/{repo_id}"


class Steerer:
    """An artefact with its pipeline and scorer loaded: what the app and the bench use."""

    def __init__(self, artefact: Artefact, pipe=None, scorer: ClipScorer | None = None,
                 device: str = "cpu"):
        self.art = artefact
        self.pipe = pipe if pipe is not None else load_pipeline(artefact.pipeline, device)
        check_sae_fits(artefact.sae, self.pipe)
        self._scorer = scorer
        self.device = device

    @property
    def scorer(self) -> ClipScorer:
        if self._scorer is None:
            self._scorer = ClipScorer(self.art.scorer, self.device)
        return self._scorer

    def pair(self, prompt: str, feature: int, strength: float, seed: int = 0, steps: int = 4,
             guidance: float = 5.0, negative_prompt: str = "",
             positions: str | list[int] = "all") -> tuple[Image.Image, Image.Image, dict]:
        """Unsteered and steered image of one prompt and seed, with the CLIP scores of the
        feature's name (when it has one) on both."""
        f = self.art.sae.check_feature(feature)
        enc = encode_prompts(self.pipe, [prompt])
        neg = encode_prompts(self.pipe, [negative_prompt], allow_empty=True).embeds
        steered = steer_embeddings(self.art.sae, enc.embeds, enc.mask(positions),
                                   add={f: self.art.amount(f, strength)})
        both = torch.cat([enc.embeds, steered])
        before, after = generate(self.pipe, both, neg, [seed, seed], steps, guidance)
        info: dict[str, Any] = {"feature": f, "strength": float(strength),
                                "embedding_change": float((steered - enc.embeds).norm())}
        name = self.art.names.get(f, {}).get("name")
        if name:
            words = self.words if name in self.words else self.words + [name]
            s = self.scorer.scores([before, after], words)
            j = words.index(name)
            rel = relative(s)[:, j]
            info.update(name=name, score_before=float(s[0, j]), score_after=float(s[1, j]),
                         relative_before=float(rel[0]), relative_after=float(rel[1]))
        return before, after, info

    @property
    def words(self) -> list[str]:
        """The naming vocabulary (relative scores are measured against it)."""
        return list((self.art.manifest.get("naming") or {}).get("words") or vocabulary())


__all__ = [
    "ATTRIBUTES", "OBJECTS", "TEMPLATES", "vocabulary", "builtin_corpus", "neutral_prompts",
    "read_prompt_file", "write_tiny_tokenizer_files", "tiny_tokenizer", "tiny_pipeline",
    "tiny_clip", "save_tiny", "tiny_folder", "is_tiny", "load_pipeline", "check_pipeline",
    "check_sae_fits", "Encoded", "encode_prompts", "check_prompt", "feature_vector",
    "steer_embeddings", "add_direction", "generate", "ClipScorer", "default_scorer",
    "feature_stats", "sample_features", "alive_features", "Setting", "Probe", "feature_probes",
    "random_probes", "relative", "name_probes", "evaluate_probes", "summarize", "Artefact", "save_artefact",
    "load_artefact", "push_artefact", "Steerer", "image_size", "text_width",
]
