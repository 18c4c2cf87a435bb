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
from pathlib import Path
from typing import Any, Sequence

import torch

from saescope.core.ontology import (
    ClassActivations,
    OntologyError,
    OntologyResult,
    analyze,
    load_label_map,
    map_labels,
    median_class_size,
    markdown,
    plot_hierarchy,
    text_table,
)
from saescope.core.sae import SAE
from saescope.core.tokens import TokenKind, parse_kinds
from saescope.train.exemplars import check_sae_store, codes_to_coo


def labelled(store) -> tuple[list[str], list[int | None]]:
    """The store's label names and per-image labels, or a clear error when it has none."""
    names, labels = store.label_names, store.labels
    if not names or all(l is None for l in labels):
        spec = (store.manifest.get("source") or {}).get("spec")
        raise OntologyError(
            f"the store {store.path} has no image labels (source {spec!r}): the ontology analysis "
            "needs a labelled source, e.g. builtin:photos, builtin:digits, builtin:fashion-mnist, "
            "an ImageFolder-style folder or a datasets set with a ClassLabel column; a '+' "
            "concatenation keeps labels only when every part has them")
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


def class_activations(sae: SAE, store, batch_images: int = 16, progress: bool = True,
                      max_images: int | None = None, top_k: int | None = None,
                      exclude: Sequence[int] = ()) -> tuple[ClassActivations, list[str]]:
    """Stream ``store`` once through ``sae``: per-class activation mass, firing counts and each
    feature's top-k images (default k: the median class size); images of the ``exclude``
    labels (unmapped ones) are left out."""
    from tqdm.auto import tqdm

    from saescope.train.store import ActivationStore

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
    lab = torch.tensor([-1 if l is None or int(l) in drop else int(l) for l in labels],
                       dtype=torch.long)
    device = sae.W_enc.device
    kinds = token_kinds(sae)
    with tqdm(total=stop, unit="img", desc="ontology", disable=not progress, dynamic_ncols=True,
              file=sys.stderr) as bar:
        for first, x in store.iter_images(batch_images, kinds=kinds, stop=stop):
            n = x.shape[0]
            acc.update(image_activations(sae, x.to(device)).cpu(), lab[first:first + n])
            bar.update(n)
    return acc, names


def save_outputs(result: OntologyResult, out: str | Path, title: str | None = None,
                 meta: dict[str, Any] | None = None, max_rows: int = 40) -> dict[str, Path]:
    """Write ``ontology.json``, ``ontology.md`` and ``ontology.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {**result.to_dict(), **({"meta": meta} if meta else {})}
    paths = {"json": out / "ontology.json", "markdown": out / "ontology.md",
             "plot": out / "ontology.png"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(paths["json"])
    paths["markdown"].write_text(markdown(result, max_rows=max_rows, title=title)
                                 + "\n![features on the hierarchy](ontology.png)\n")
    plot_hierarchy(result, paths["plot"], title=title)
    return paths


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ontology", help="place SAE features in the WordNet hierarchy of a labelled store",
        description="For an SAE over a labelled activation store whose labels map to WordNet 3.0 "
        "noun synsets: each feature's class distribution, the lowest common hypernym (LCH) of its "
        "top classes and its depth, and how much of the hierarchy the features cover. Writes "
        "ontology.json, ontology.md and ontology.png. Needs Debian's wordnet-base (or "
        "WORDNET_DIR).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", help="bundle folder or Hub id (its SAE is analysed)")
    which.add_argument("--sae", help="SAE folder or Hub id")
    p.add_argument("--store", required=True, help="labelled activation store of the SAE's layer")
    p.add_argument("--out", default=None, help="output folder (default: runs/ontology/<SAE name>)")
    p.add_argument("--label-map", default=None,
                   help="JSON {label: synset name | nXXXXXXXX id | null}, overrides the built-in map")
    p.add_argument("--first-sense", action="store_true",
                   help="map other labels that are WordNet lemmas to their most frequent sense")
    p.add_argument("--images", choices=("top", "all"), default="top",
                   help="class distribution over each feature's top-k images or all it fires on")
    p.add_argument("--top-images", type=int, default=None,
                   help="k for --images top (default: the median number of images per class)")
    p.add_argument("--coverage", type=float, default=0.8,
                   help="top classes: smallest set holding this share of a feature's mass")
    p.add_argument("--max-top", type=int, default=5, help="at most this many top classes")
    p.add_argument("--min-images", type=int, default=3,
                   help="analyse features that fire on at least this many images")
    p.add_argument("--class-weighting", choices=("none", "balanced"), default="none",
                   help="balanced: per-class mean activation instead of the sum")
    p.add_argument("--batch-images", type=int, default=16)
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--rows", type=int, default=25, help="features shown in the console table")
    p.add_argument("--wordnet-dir", default=None, help="WordNet 3.0 dict folder (default: "
                   "$WORDNET_DIR or /usr/share/wordnet)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run, step="ontology")
    return p


def run(args: argparse.Namespace) -> int:
    from saescope.core.sae_io import from_pretrained
    from saescope.core.wordnet import load as load_wordnet
    from saescope.train.cli_util import announce_config
    from saescope.train.store import ActivationStore

    wn = load_wordnet(args.wordnet_dir)  # fail early, before the pass, when WordNet is missing
    store = ActivationStore(args.store)
    labelled(store)
    if args.bundle:
        from saescope.core.bundle import Bundle

        bundle = Bundle.load(args.bundle)
        sae, title = bundle.sae, bundle.title
    else:
        sae = from_pretrained(args.sae)
        title = f"{sae.cfg.name} on {sae.cfg.model_id} layer {sae.cfg.layer}"
    out = Path(args.out or Path("runs") / "ontology" / sae.cfg.name)
    announce_config(args, out)
    user_map = load_label_map(args.label_map) if args.label_map else None
    kind = (store.manifest.get("source") or {}).get("kind")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapping = map_labels(store.label_names, wn, dataset_kind=kind, user_map=user_map,
                             first_sense=args.first_sense)
    for w in caught:
        print(f"[ontology] warning: {w.message}", file=sys.stderr)
    acc, _ = class_activations(sae, store, batch_images=args.batch_images,
                               progress=args.progress, max_images=args.max_images,
                               top_k=args.top_images, exclude=sorted(mapping.unmapped))
    result = analyze(acc, mapping, wn, images=args.images, coverage=args.coverage,
                     max_top=args.max_top,
                     min_images=args.min_images, class_weighting=args.class_weighting)
    meta = {"store": str(store.path), "sae": args.sae, "bundle": args.bundle,
            "model_id": store.model_id, "layer": store.layer, "sae_name": sae.cfg.name,
            "images_without_mapped_label": acc.n_skipped}
    paths = save_outputs(result, out, title=title, meta=meta)
    print(text_table(result, max_rows=args.rows))
    print(f"[ontology] wrote {paths['json']}, {paths['markdown']}, {paths['plot']}",
          file=sys.stderr)
    return 0


__all__ = ["class_activations", "image_activations", "labelled", "save_outputs", "token_kinds",
           "add_parser", "run"]
