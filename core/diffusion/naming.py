"""Automatic feature naming and its held-out evaluation, with random-direction controls.

Why relative scores: a generic image change moves the CLIP scores of every word together; a
feature is named after the word whose score rises against the rest of the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from saescope.core.diffusion.encoding import encode_prompts
from saescope.core.diffusion.scorer import ClipScorer
from saescope.core.diffusion.steering import feature_vector, generate
from saescope.core.sae import SAE


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


def _score_push(
    pipe,
    scorer: ClipScorer,
    words: Sequence[str],
    prep: _Prepared,
    vector: torch.Tensor,
    sign: float = 1.0,
) -> torch.Tensor:
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
    return [
        Probe(f"feature {f}", feature_vector(sae, f, strength * stats["max"][f]), f)
        for f in (sae.check_feature(f) for f in features)
    ]


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


def name_probes(
    pipe,
    scorer: ClipScorer,
    probes: Sequence[Probe],
    words: Sequence[str],
    setting: Setting,
    progress: bool = True,
    desc: str = "name",
) -> list[dict]:
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
        out.append(
            {
                "label": p.label,
                "feature": p.feature,
                "name": words[best],
                "delta": float(delta[best]),
                "delta_raw": float(raw[best]),
                "margin": float(delta[best] - delta[order[1]]),
                "top": [[words[int(i)], round(float(delta[i]), 4)] for i in order[:5]],
            }
        )
    return out


def evaluate_probes(
    pipe,
    scorer: ClipScorer,
    probes: Sequence[Probe],
    names: Sequence[str],
    words: Sequence[str],
    setting: Setting,
    progress: bool = True,
    desc: str = "eval",
) -> dict:
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
    for p, name in tqdm(
        list(zip(probes, names)), desc=desc, disable=not progress, dynamic_ncols=True
    ):
        j = words.index(name)
        up_raw = _score_push(pipe, scorer, words, prep, p.vector, +1.0)
        down_raw = _score_push(pipe, scorer, words, prep, p.vector, -1.0)
        up, down = relative(up_raw), relative(down_raw)
        rows.append(
            {
                "label": p.label,
                "feature": p.feature,
                "name": name,
                "delta_amplify": float(up[j]),
                "delta_suppress": float(down[j]),
                "delta_amplify_raw": float(up_raw[j]),
                "delta_suppress_raw": float(down_raw[j]),
                "rank_amplify": int((up > up[j]).sum()) + 1,
            }
        )
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


__all__ = [
    "Setting",
    "Probe",
    "feature_probes",
    "random_probes",
    "relative",
    "name_probes",
    "evaluate_probes",
    "summarize",
]
