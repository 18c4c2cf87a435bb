"""The attribute words features are named after, and the prompts the built-in corpus is made of.

Why one vocabulary for both: naming scores a feature's images against the same attribute words
the training corpus varies, so every name is a word the SAE had a chance to learn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# Attribute words: what features get named after, and what the built-in corpus varies.
ATTRIBUTES: dict[str, list[str]] = {
    "colour": [
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "purple",
        "pink",
        "brown",
        "black",
        "white",
        "grey",
        "golden",
    ],
    "material": ["wooden", "metallic", "glass", "stone", "furry", "plastic", "paper", "woollen"],
    "pattern": ["striped", "spotted", "checkered", "plain"],
    "style": ["painting", "sketch", "cartoon", "photograph", "watercolor", "pixelated", "neon"],
    "light": ["sunny", "night", "foggy", "snowy", "rainy", "dark", "bright"],
    "size": ["tiny", "huge", "round", "square"],
}
OBJECTS = [
    "car",
    "house",
    "dog",
    "cat",
    "tree",
    "chair",
    "flower",
    "bird",
    "boat",
    "cup",
    "hat",
    "mountain",
    "apple",
    "clock",
    "lamp",
    "horse",
    "bicycle",
    "shoe",
    "castle",
    "fish",
]
TEMPLATES = [
    "a {attr} {obj}",
    "a photo of a {attr} {obj}",
    "a {obj} that is {attr}",
    "a picture of a {attr} {obj} in the street",
]
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


__all__ = [
    "ATTRIBUTES",
    "OBJECTS",
    "TEMPLATES",
    "NEUTRAL_TEMPLATE",
    "vocabulary",
    "builtin_corpus",
    "neutral_prompts",
    "read_prompt_file",
]
