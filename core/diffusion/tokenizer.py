"""A small byte-level BPE CLIP tokenizer written from scratch (the tiny pipeline's tokenizer).

Why: the real CLIP vocabulary cannot be downloaded offline; this one tokenizes any text and keeps
the corpus words whole, so the tiny pipeline runs every code path of a real one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from saescope.core.diffusion.vocabulary import NEUTRAL_TEMPLATE, OBJECTS, TEMPLATES, vocabulary


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table of byte-level BPE."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
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
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def write_tiny_tokenizer_files(
    folder: str | os.PathLike, words: Iterable[str] | None = None
) -> Path:
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
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    return folder


def tiny_tokenizer(folder: str | os.PathLike, max_length: int = 16):
    """A ``CLIPTokenizer`` read from the files of :func:`write_tiny_tokenizer_files`."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not (folder / "vocab.json").is_file():
        write_tiny_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)


__all__ = ["tokenizer_words", "write_tiny_tokenizer_files", "tiny_tokenizer"]
