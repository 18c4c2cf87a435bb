"""Activation stores and per-image summaries for OOD detection (``ood-eval`` and ``ood-fit``).

Kept apart from the experiment driver so that both the CLI run and the bundle calibration
(:mod:`saescope.train.ood_bundle`) share one way to slice a source into a store, summarise a
store's images with an SAE, and fit a throwaway SAE on a store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saescope.core.ood import ImageSummary, summarize

if TYPE_CHECKING:
    from saescope.core.backbones import Backbone
    from saescope.core.sae import SAE


def slug(spec: str) -> str:
    """A file-name-safe short name of a source spec.

    ``builtin:photos?views=8`` -> ``photos-views-8``.
    """
    s = spec.split(":", 1)[-1] if spec.startswith(("builtin:", "hf:")) else Path(spec).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:60] or "source"


@dataclass
class ImageSet:
    """A slice of a source extracted to an activation store (layer L, all token kinds)."""

    spec: str
    start: int
    n: int
    store: Path


def extract_set(
    backbone: Backbone,
    spec: str,
    start: int,
    n: int,
    work: Path,
    layer: int,
    progress: bool = True,
    batch_size: int = 16,
) -> ImageSet:
    """Images ``start .. start + n`` of ``spec`` -> a store of every token of layer ``layer``.

    All token kinds are kept so that the rest of the model (blocks L+1.., final norm) can be run
    on the stored tokens for the final CLS token: one backbone pass serves every baseline.
    """
    from saescope.core.sources import open_source
    from saescope.train.extract import extract

    source = open_source(spec, start=start, max_images=n)
    if len(source) == 0:
        raise ValueError(
            f"source {spec!r} has no images from index {start} (it has "
            f"{len(open_source(spec))}); use a smaller --n-train/--n-test"
        )
    L = backbone.resolve_layer(layer)
    path = work / "acts" / f"{slug(spec)}-s{start}-n{len(source)}-L{L}"
    extract(
        backbone, source, path, layers=[L], kinds="all", batch_size=batch_size, progress=progress
    )
    return ImageSet(spec, start, len(source), path)


@torch.inference_mode()
def store_summary(
    store_path: Path,
    sae: SAE,
    backbone: Backbone | None = None,
    *,
    with_cls: bool = True,
    batch_images: int = 16,
    max_images: int | None = None,
    progress: bool = True,
    desc: str = "",
) -> ImageSummary:
    """Summaries (:func:`core.ood.summarize`) of every image of an activation store.

    With ``with_cls`` and a store holding all token kinds, blocks L+1.. of ``backbone`` run on the
    stored tokens to give the final (normalised) CLS token for the CLS baselines and the probe.
    """
    from tqdm.auto import tqdm

    from saescope.core.store import ActivationStore
    from saescope.core.tokens import TokenKind

    store = ActivationStore(store_path)
    layout = store.layout
    stored = layout.kinds_of(store.kinds)  # the kind of every stored token, in order
    patch_pos = [i for i, kind in enumerate(stored) if kind == TokenKind.PATCH]
    if not patch_pos:
        raise ValueError(f"activation store {store_path} holds no patch tokens")
    full = len(stored) == layout.n_tokens  # every token: the rest of the model can run on them
    want_cls = with_cls and backbone is not None and full and layout.n_cls > 0
    n = store.n_images if max_images is None else min(store.n_images, max_images)
    if n == 0:
        raise ValueError(f"activation store {store_path} holds no images")
    labels, ids = store.labels[:n], store.image_ids[:n]
    parts = []
    bar = tqdm(
        total=n,
        desc=desc or f"scoring {Path(store_path).name}",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    for first, toks in store.iter_images(batch_images, kinds=None, stop=n):
        patches = toks[:, patch_pos[0] : patch_pos[-1] + 1]  # patches are contiguous, last
        cls = None
        if want_cls:
            final = backbone.run_from(store.layer, toks.to(backbone.device, backbone.dtype)).float()
            cls = layout.select(final, [TokenKind.CLS])[:, 0].cpu()
        parts.append(
            summarize(
                sae,
                patches,
                final_cls=cls,
                labels=labels[first : first + len(toks)],
                label_names=store.label_names,
                ids=ids[first : first + len(toks)],
            )
        )
        bar.update(len(toks))
    bar.close()
    return ImageSummary.concat(parts)


def fit_sae_on(
    store_path: Path, work: Path, *, expansion: float, k: int, epochs: float, progress: bool = True
) -> SAE:
    """A TopK SAE fitted on the in-distribution training store.

    Cached under ``work``: a rerun resumes at the end.
    """
    from saescope.core.sae_io import from_pretrained
    from saescope.core.store import ActivationStore
    from saescope.train.fit import FitConfig, SAESpec, fit

    store = ActivationStore(store_path)
    out = work / "saes" / f"{Path(store_path).name}-topk-x{expansion:g}-k{k}-e{epochs:g}"
    folders = fit(
        FitConfig(
            store=str(store_path),
            out=str(out),
            saes=[SAESpec("topk", expansion, k=k)],
            tokens=int(epochs * store.n_tokens),
            batch_size=2048,
            lr=4e-4,
            progress=progress,
            plots=False,
        )
    )
    return from_pretrained(folders[0]).eval()


__all__ = ["ImageSet", "extract_set", "fit_sae_on", "slug", "store_summary"]
