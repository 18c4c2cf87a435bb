"""Where the features of a TopK SAE on the real offline DINOv2-S sit in WordNet.

    python -m bench.ontology [--views 10] [--digits 200] [--fashion 200] [--out runs/bench_ontology]

A labelled packaged mix (the photos with augmented views, sklearn digits, Fashion-MNIST test
images) is extracted at layer 10 of ``offline:dinov2-s-saliency``, a TopK SAE is fitted on it
(``train.fit``), and ``saescope ontology``'s analysis places every feature on the lowest
common hypernym of its top classes. Reported: features analysed, fraction whose LCH is below the
root (against random class sets of the same sizes), the LCH depth distribution, hierarchy and
class coverage, and how many features stay within one of the three datasets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.report import BENCH_DIR, write_section
from saescope.core.backbones import load_backbone
from saescope.core.ontology import analyze, map_labels, markdown, split_label
from saescope.core.sae_io import from_pretrained
from saescope.core.sources import open_source
from saescope.core.store import ActivationStore
from saescope.core.wordnet import load as load_wordnet
from saescope.train.extract import extract
from saescope.train.fit import FitConfig, SAESpec, fit
from saescope.train.ontology import class_activations, save_outputs, text_table


def dataset_of(label: str) -> str:
    """``builtin:digits:7`` -> ``builtin:digits``."""
    return split_label(label)[0] or "?"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/bench_ontology")
    p.add_argument("--views", type=int, default=10, help="views per packaged photo")
    p.add_argument("--digits", type=int, default=200, help="sklearn digits")
    p.add_argument("--fashion", type=int, default=200, help="Fashion-MNIST test images")
    p.add_argument("--layer", type=int, default=10)
    p.add_argument("--expansion", type=float, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--min-images", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def _extract(args: argparse.Namespace, spec: str, out: Path):
    """The labelled mix's activation store at ``args.layer`` of the offline model."""
    backbone = load_backbone("offline:dinov2-s-saliency")
    return ActivationStore(
        extract(backbone, open_source(spec), out / "acts", layers=[args.layer], kinds="patch")[0]
    )


def _fit(args: argparse.Namespace, store, out: Path) -> Path:
    """One TopK SAE on the store's tokens; returns its folder."""
    return fit(
        FitConfig(
            store=str(store.path),
            out=str(out / "saes"),
            saes=[SAESpec("topk", args.expansion, k=args.k)],
            tokens=int(store.n_tokens * args.epochs),
            batch_size=args.batch_size,
            lr=4e-4,
            plots=False,
        )
    )[0]


def _analyse(args: argparse.Namespace, sae, store, wn) -> tuple:
    """(class activations, class names, analysis over each feature's top images)."""
    mapping = map_labels(
        store.label_names, wn, dataset_kind=(store.manifest.get("source") or {}).get("kind")
    )
    acc, names = class_activations(sae, store, batch_images=16, exclude=sorted(mapping.unmapped))
    result = analyze(acc, mapping, wn, min_images=args.min_images)
    return acc, names, mapping, result


def _markdown(args: argparse.Namespace, data: dict, store, sae, acc, result, s_all) -> list[str]:
    """The RESULTS.md section, as lines."""
    s = data["summary"]
    per_dataset = data["features_by_dataset_of_top_class"]
    t_extract, t_fit, t_analyse = data["t_extract"], data["t_fit"], data["t_analyse"]
    load0, load1 = data["load_average_1min"]
    base = s["baseline"]
    hist = ", ".join(f"{d}: {c}" for d, c in s["depth_histogram"].items())
    return [
        "## Ontology of SAE features (`python -m bench.ontology`)\n",
        f"Offline DINOv2-S (saliency fine-tune), layer {store.layer}, all patch tokens of "
        f"{store.n_images} labelled images: the {len(open_source('builtin:photos').label_names)} "
        f"packaged photos x {args.views} views, {args.digits} sklearn digits and {args.fashion} "
        f"Fashion-MNIST test images ({s['n_classes_mapped']} classes, all mapped to WordNet 3.0 "
        f"synsets by the built-in map). SAE {sae.cfg.name} ({sae.cfg.d_sae} features) fitted on "
        f"these {store.n_tokens:,} tokens for {args.epochs:g} epochs (FVU on them "
        f"{sae.cfg.metrics.get('fvu', float('nan')):.3f}). A feature's class distribution is its "
        f"per-image max activation summed per class over its **{acc.top_k} strongest images** "
        f"(the median class size); its top classes hold {result.settings['coverage']:.0%} of that "
        f"mass (at most {result.settings['max_top']}); depth = `max_depth` of their lowest common "
        f"hypernym (LCH), `entity.n.01` = 0. The baseline draws random sets of distinct label "
        f"synsets of the same sizes.\n",
        f"- **{s['n_analysed']} of {s['n_features']} features analysed** (fire on >= "
        f"{args.min_images} images); {s['n_rare']} rarer, {s['n_silent']} silent",
        f"- LCH below the root: **{s['fraction_below_root']:.1%}** of features (random class "
        f"sets of the same sizes: {base['fraction_below_root']:.1%})",
        f"- mean LCH depth **{s['mean_depth']:.2f}** "
        f"(random class sets: {base['mean_depth']:.2f}); "
        f"depth histogram {hist}",
        f"- top classes from a single dataset: {data['within_one_dataset']:.1%} of features; "
        f"largest class by dataset: "
        + ", ".join(f"{k.split(':')[-1]} {v}" for k, v in sorted(per_dataset.items())),
        f"- hierarchy coverage: **{s['nodes_covered']} of {s['hierarchy_nodes']} nodes "
        f"({s['node_coverage']:.1%})** are some feature's LCH; {s['class_top1_coverage']:.1%} of "
        f"classes are some feature's largest class, {s['class_top_set_coverage']:.1%} are in "
        f"some feature's top set",
        f"- over *all* images where a feature fires instead of its top {acc.top_k}: LCH below "
        f"the root {s_all['fraction_below_root']:.1%} "
        f"(random {s_all['baseline']['fraction_below_root']:.1%}), "
        f"mean depth {s_all['mean_depth']:.2f}, {s_all['nodes_covered']} nodes covered: max-pooled "
        f"over {store.tokens_per_image} patches, a feature fires a little on most images "
        f"(median {int(np.median([f.n_images for f in result.features]))} of {store.n_images}), "
        f"so that distribution mostly mirrors class sizes",
        f"- time: extraction {t_extract:.0f} s, fit {t_fit:.0f} s, analysis pass "
        f"{t_analyse:.1f} s (machine load average, 1 min: {load0:.1f} at the start, "
        f"{load1:.1f} at the end; other jobs share the 2 cores)\n",
        "![features placed on the WordNet hierarchy](results/ontology.png)\n",
        "<details><summary>Coverage by depth, busiest LCH nodes and features</summary>\n",
        markdown(result, max_rows=15, summary=False),
        "</details>",
    ]


def main(argv: list[str] | None = None) -> dict:

    args = _parse(argv)
    out = Path(args.out)
    wn = load_wordnet()
    spec = (
        f"builtin:photos?views={args.views}+builtin:digits?max_images={args.digits}"
        f"+builtin:fashion-mnist?split=test&max_images={args.fashion}"
    )
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    store = _extract(args, spec, out)
    t_extract = time.perf_counter() - t0
    print(
        f"store: {store.n_images} images, {store.n_tokens:,} tokens, layer {store.layer}; "
        f"extraction {t_extract:.0f} s"
    )
    t1 = time.perf_counter()
    folder = _fit(args, store, out)
    t_fit = time.perf_counter() - t1
    sae = from_pretrained(folder)
    t2 = time.perf_counter()
    acc, names, mapping, result = _analyse(args, sae, store, wn)
    t_analyse = time.perf_counter() - t2
    load1 = os.getloadavg()[0]
    s_all = analyze(acc, mapping, wn, images="all", min_images=args.min_images).summary()
    title = f"{sae.cfg.name} on DINOv2-S (saliency fine-tune), layer {store.layer}"
    paths = save_outputs(result, out / "ontology", title=title)
    print(text_table(result, max_rows=20))
    s = result.summary()
    within = Counter(
        "one dataset" if len({dataset_of(names[c]) for c in f.top_classes}) == 1 else "mixed"
        for f in result.features
    )
    per_dataset = Counter(dataset_of(names[f.top_classes[0]]) for f in result.features)
    n = max(1, s["n_analysed"])
    data = {
        "summary": s,
        "top_k": acc.top_k,
        "summary_all_images": s_all,
        "within_one_dataset": within["one dataset"] / n,
        "features_by_dataset_of_top_class": dict(per_dataset),
        "spec": spec,
        "store_images": store.n_images,
        "store_tokens": store.n_tokens,
        "sae": sae.cfg.name,
        "sae_metrics": sae.cfg.metrics,
        "t_extract": t_extract,
        "t_fit": t_fit,
        "t_analyse": t_analyse,
        "load_average_1min": [load0, load1],
        "args": vars(args),
    }
    md = _markdown(args, data, store, sae, acc, result, s_all)
    if not args.no_write:
        shutil.copyfile(paths["plot"], BENCH_DIR / "results" / "ontology.png")
        write_section("ontology", "\n".join(md), data)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return data


if __name__ == "__main__":
    main()
