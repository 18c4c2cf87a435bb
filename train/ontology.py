"""Ontology analysis of SAE features with WordNet: ``saescope ontology``.

One streaming pass over a labelled activation store through the SAE gives, per image, each
feature's maximum over patch tokens; these are summed per class (:class:`ClassActivations`), then
:func:`core.ontology.analyze` places each feature on the lowest common hypernym of its top
classes. Outputs: ``ontology.json`` (everything), ``ontology.md`` (tables) and ``ontology.png``
(features on the hierarchy induced by the label synsets).

    saescope ontology --bundle runs/bundle --store runs/acts --out runs/ontology
    saescope ontology --sae runs/saes/topk-k32-x16 --store runs/acts --label-map map.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from saescope.core.fileio import atomic_write_text
from saescope.core.ontology import (
    ClassActivations,
    OntologyError,
    OntologyResult,
    analyze,
    load_label_map,
    map_labels,
    markdown,
    median_class_size,
    plot_hierarchy,
    text_table,
)
from saescope.core.sae import SAE
from saescope.core.tokens import TokenKind, parse_kinds
from saescope.train.cli import ProgressOption, add_step, announce_config, option
from saescope.train.exemplars import check_sae_store, codes_to_coo


def labelled(store) -> tuple[list[str], list[int | None]]:
    """The store's label names and per-image labels, or a clear error when it has none."""
    names, labels = store.label_names, store.labels
    if not names or all(y is None for y in labels):
        spec = (store.manifest.get("source") or {}).get("spec")
        raise OntologyError(
            f"the store {store.path} has no image labels (source {spec!r}): the ontology analysis "
            "needs a labelled source, e.g. builtin:photos, builtin:digits, builtin:fashion-mnist, "
            "an ImageFolder-style folder or a datasets set with a ClassLabel column; a '+' "
            "concatenation keeps labels only when every part has them"
        )
    return list(names), labels


@torch.inference_mode()
def image_activations(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """Per-image feature maxima ``[B, F]`` from tokens ``[B, T, d]``, without dense codes.

    Works on the firing (token, feature, value) triplets, as the exemplar pass does, so a
    k-sparse SAE never builds the ``[B * T, F]`` matrix.
    """
    B, T, d = x.shape
    F = sae.cfg.d_sae
    rows, feats, vals = codes_to_coo(sae.encode_codes(x.reshape(-1, d)))
    key = (rows // T) * F + feats
    out = torch.zeros(B * F).scatter_reduce_(0, key, vals.float(), "amax")
    return out.view(B, F)


def token_kinds(sae: SAE) -> list[str]:
    """Patch tokens when the SAE was trained on them (the definition), else its own kinds."""
    kinds = parse_kinds(sae.cfg.token_kinds)
    return [TokenKind.PATCH.value] if TokenKind.PATCH in kinds else [k.value for k in kinds]


def class_activations(
    sae: SAE,
    store,
    batch_images: int = 16,
    progress: bool = True,
    max_images: int | None = None,
    top_k: int | None = None,
    exclude: Sequence[int] = (),
) -> tuple[ClassActivations, list[str]]:
    """Stream ``store`` once through ``sae``: per-class activation mass, firing counts and each
    feature's top-k images (default k: the median class size); images of the ``exclude``
    labels (unmapped ones) are left out."""
    from tqdm.auto import tqdm

    from saescope.core.store import ActivationStore

    if not isinstance(store, ActivationStore):
        store = ActivationStore(store)
    names, labels = labelled(store)
    check_sae_store(sae, store)
    if batch_images < 1:
        raise OntologyError(f"batch_images must be >= 1, got {batch_images}")
    sae.eval()
    stop = store.n_images if max_images is None else min(int(max_images), store.n_images)
    if top_k is None:
        top_k = median_class_size(labels[:stop], exclude)
    acc = ClassActivations(sae.cfg.d_sae, len(names), top_k=top_k)
    drop = set(int(c) for c in exclude)
    lab = torch.tensor(
        [-1 if y is None or int(y) in drop else int(y) for y in labels], dtype=torch.long
    )
    device = sae.W_enc.device
    kinds = token_kinds(sae)
    with tqdm(
        total=stop,
        unit="img",
        desc="ontology",
        disable=not progress,
        dynamic_ncols=True,
        file=sys.stderr,
    ) as bar:
        for first, x in store.iter_images(batch_images, kinds=kinds, stop=stop):
            n = x.shape[0]
            acc.update(image_activations(sae, x.to(device)).cpu(), lab[first : first + n])
            bar.update(n)
    return acc, names


def save_outputs(
    result: OntologyResult,
    out: str | Path,
    title: str | None = None,
    meta: dict[str, Any] | None = None,
    max_rows: int = 40,
) -> dict[str, Path]:
    """Write ``ontology.json``, ``ontology.md`` and ``ontology.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {**result.to_dict(), **({"meta": meta} if meta else {})}
    paths = {
        "json": out / "ontology.json",
        "markdown": out / "ontology.md",
        "plot": out / "ontology.png",
    }
    atomic_write_text(paths["json"], json.dumps(data, indent=1), fsync=False)
    paths["markdown"].write_text(
        markdown(result, max_rows=max_rows, title=title)
        + "\n![features on the hierarchy](ontology.png)\n"
    )
    plot_hierarchy(result, paths["plot"], title=title)
    return paths


# ----------------------------------------------------------------------------- CLI
@dataclass(kw_only=True)
class OntologyConfig(ProgressOption):
    """The options of ``saescope ontology``."""

    bundle: str | None = option(None, one_of="sae")
    """bundle folder or Hub id (its SAE is analysed)"""
    sae: str | None = option(None, one_of="sae")
    """SAE folder or Hub id"""
    store: str
    """labelled activation store of the SAE's layer"""
    out: str | None = None
    """output folder (default: runs/ontology/<SAE name>)"""
    label_map: str | None = None
    """JSON {label: synset name | nXXXXXXXX id | null}, overrides the built-in map"""
    first_sense: bool = False
    """map other labels that are WordNet lemmas to their most frequent sense"""
    images: Literal["top", "all"] = "top"
    """class distribution over each feature's top-k images or all it fires on"""
    top_images: int | None = None
    """k for --images top (default: the median number of images per class)"""
    coverage: float = 0.8
    """top classes: smallest set holding this share of a feature's mass"""
    max_top: int = 5
    """at most this many top classes"""
    min_images: int = 3
    """analyse features that fire on at least this many images"""
    class_weighting: Literal["none", "balanced"] = "none"
    """balanced: per-class mean activation instead of the sum"""
    batch_images: int = 16
    """images per batch of the streaming pass"""
    max_images: int | None = None
    """use only the first N images"""
    rows: int = 25
    """features shown in the console table"""
    wordnet_dir: str | None = None
    """WordNet 3.0 dict folder (default: $WORDNET_DIR or /usr/share/wordnet)"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_step(
        subparsers,
        "ontology",
        OntologyConfig,
        run,
        help="place SAE features in the WordNet hierarchy of a labelled store",
        description="For an SAE over a labelled activation store whose labels map to WordNet 3.0 "
        "noun synsets:\neach feature's class distribution, the lowest common hypernym (LCH) of "
        "its top classes and its\ndepth, and how much of the hierarchy the features cover. "
        "Writes ontology.json, ontology.md and\nontology.png. Needs Debian's wordnet-base (or "
        "WORDNET_DIR).",
    )


def run(cfg: OntologyConfig) -> int:
    from saescope.core.sae_io import from_pretrained
    from saescope.core.store import ActivationStore
    from saescope.core.wordnet import load as load_wordnet

    wn = load_wordnet(cfg.wordnet_dir)  # fail early, before the pass, when WordNet is missing
    store = ActivationStore(cfg.store)
    labelled(store)
    if cfg.bundle:
        from saescope.core.bundle import Bundle

        bundle = Bundle.load(cfg.bundle)
        sae, title = bundle.sae, bundle.title
    else:
        sae = from_pretrained(cfg.sae)
        title = f"{sae.cfg.name} on {sae.cfg.model_id} layer {sae.cfg.layer}"
    out = Path(cfg.out or Path("runs") / "ontology" / sae.cfg.name)
    announce_config(replace(cfg, out=str(out)), "ontology", out)
    user_map = load_label_map(cfg.label_map) if cfg.label_map else None
    kind = (store.manifest.get("source") or {}).get("kind")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapping = map_labels(
            store.label_names, wn, dataset_kind=kind, user_map=user_map, first_sense=cfg.first_sense
        )
    for w in caught:
        print(f"[ontology] warning: {w.message}", file=sys.stderr)
    acc, _ = class_activations(
        sae,
        store,
        batch_images=cfg.batch_images,
        progress=cfg.progress,
        max_images=cfg.max_images,
        top_k=cfg.top_images,
        exclude=sorted(mapping.unmapped),
    )
    result = analyze(
        acc,
        mapping,
        wn,
        images=cfg.images,
        coverage=cfg.coverage,
        max_top=cfg.max_top,
        min_images=cfg.min_images,
        class_weighting=cfg.class_weighting,
    )
    meta = {
        "store": str(store.path),
        "sae": cfg.sae,
        "bundle": cfg.bundle,
        "model_id": store.model_id,
        "layer": store.layer,
        "sae_name": sae.cfg.name,
        "images_without_mapped_label": acc.n_skipped,
    }
    paths = save_outputs(result, out, title=title, meta=meta)
    print(text_table(result, max_rows=cfg.rows))
    print(
        f"[ontology] wrote {paths['json']}, {paths['markdown']}, {paths['plot']}", file=sys.stderr
    )
    return 0


__all__ = [
    "class_activations",
    "image_activations",
    "labelled",
    "save_outputs",
    "token_kinds",
    "add_parser",
    "run",
]
