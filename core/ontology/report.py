"""Text reports of an ontology result: the markdown report and the console table.

Why two: the markdown goes into bundles and docs (tables, glosses), the console table is what a
user reads right after the pipeline step.
"""

from __future__ import annotations

from saescope.core.ontology.labels import split_label
from saescope.core.ontology.result import OntologyResult


def shorten(name: str, n: int = 28) -> str:
    """``name`` cut to ``n`` characters with an ellipsis (table cells and plot labels)."""
    return name if len(name) <= n else name[: n - 1] + "…"


def display_label(label: str) -> str:
    """``builtin:fashion-mnist:Ankle boot`` -> ``fashion-mnist:Ankle boot`` (for tables)."""
    kind, bare = split_label(label)
    return f"{kind.removeprefix('builtin:')}:{bare}" if kind and label.startswith(kind) else label


def markdown(
    result: OntologyResult, max_rows: int = 40, title: str | None = None, summary: bool = True
) -> str:
    """A report: summary (unless ``summary=False``), depth histogram with coverage, most-used
    nodes, and the features."""
    s = result.summary()
    lines = [f"## {title}\n" if title else ""]
    if not s["n_analysed"]:
        return "\n".join(lines + ["No feature fired on enough mapped images to be analysed."])
    if summary:
        lines += _summary_lines(result, s)
    lines += _tables(result, s, max_rows)
    return "\n".join(lines) + "\n"


def _summary_lines(result: OntologyResult, s: dict) -> list[str]:
    base = s["baseline"] or {}
    st = result.settings
    over = "images where it fires" if st["images"] == "all" else st["images"] + " images"
    return [
        f"{s['n_features']} features: **{s['n_analysed']} analysed** (fired on >= "
        f"{st['min_images']} images of the {s['n_classes_mapped']} mapped classes), "
        f"{s['n_rare']} too rare, {s['n_silent']} silent. Class distributions over each "
        f"feature's {over}, activation-weighted; top classes cover {st['coverage']:.0%} of that "
        f"mass (at most {st['max_top']}).\n",
        f"- LCH below the root (`entity.n.01`): **{s['fraction_below_root']:.1%}** of features"
        + (
            f" (random class sets of the same sizes: {base['fraction_below_root']:.1%})"
            if base
            else ""
        ),
        f"- mean LCH depth **{s['mean_depth']:.2f}** (median {s['median_depth']:g})"
        + (f"; random class sets: {base['mean_depth']:.2f}" if base else ""),
        f"- features whose top classes share one synset: {s['fraction_single_synset']:.1%}"
        + (
            f"; mean LCH depth of the others {s['mean_depth_multi']:.2f}"
            if s["mean_depth_multi"] is not None
            else ""
        ),
        f"- hierarchy nodes that are some feature's LCH: **{s['nodes_covered']} of "
        f"{s['hierarchy_nodes']} ({s['node_coverage']:.1%})**",
        f"- classes that are some feature's top class: {s['class_top1_coverage']:.1%}; in some "
        f"feature's top set: {s['class_top_set_coverage']:.1%}\n",
    ]


def _tables(result: OntologyResult, s: dict, max_rows: int) -> list[str]:
    names = result.mapping.label_names
    lines: list[str] = []
    if result.mapping.unmapped:
        lines.append(
            "Excluded labels (no synset): "
            + ", ".join(f"`{names[i]}`" for i in sorted(result.mapping.unmapped))
            + "\n"
        )
    lines += ["| depth | nodes | covered | features with their LCH here |", "|---:|---:|---:|---:|"]
    for d, v in s["coverage_by_depth"].items():
        lines.append(f"| {d} | {v['nodes']} | {v['covered']} | {v['features']} |")
    lines += ["", "| LCH node | depth | features | gloss |", "|---|---:|---:|---|"]
    for o, c in result.lch_counts.most_common(12):
        syn = result.hierarchy.nodes[o]
        lines.append(f"| `{syn.name}` | {syn.max_depth} | {c} | {shorten(syn.gloss, 70)} |")
    rows = sorted(result.features, key=lambda f: -f.mass)[:max_rows]
    lines += [
        "",
        f"Features by activation mass (first {len(rows)} of {s['n_analysed']}):",
        "",
        "| feature | images | top classes (share) | LCH | depth |",
        "|---:|---:|---|---|---:|",
    ]
    for f in rows:
        shares = dict(f.distribution)
        tops = ", ".join(
            f"{shorten(display_label(names[c]), 32)} {shares[c]:.0%}" for c in f.top_classes
        )
        lines.append(f"| {f.feature} | {f.n_images} | {tops} | `{f.lch[0].name}` | {f.depth} |")
    return lines


def text_table(result: OntologyResult, max_rows: int = 25) -> str:
    """The console summary: the busiest features, then the totals."""
    s = result.summary()
    if not s["n_analysed"]:
        return "no feature fired on enough mapped images to be analysed"
    names = result.mapping.label_names
    out = [f"{'feature':>7}  {'imgs':>5}  {'depth':>5}  {'LCH':<28}  top classes"]
    for f in sorted(result.features, key=lambda f: -f.mass)[:max_rows]:
        shares = dict(f.distribution)
        tops = ", ".join(f"{display_label(names[c])} {shares[c]:.0%}" for c in f.top_classes)
        out.append(
            f"{f.feature:>7}  {f.n_images:>5}  {f.depth:>5}  {shorten(f.lch[0].name):<28}  {tops}"
        )
    base = s["baseline"] or {}
    out.append("")
    out.append(
        f"analysed {s['n_analysed']} of {s['n_features']} features ({s['n_rare']} too rare, "
        f"{s['n_silent']} silent); LCH below root {s['fraction_below_root']:.1%}"
        + (f" (random sets {base['fraction_below_root']:.1%})" if base else "")
        + f"; mean depth {s['mean_depth']:.2f}"
        + (f" (random sets {base['mean_depth']:.2f})" if base else "")
    )
    out.append(
        f"hierarchy coverage: {s['nodes_covered']}/{s['hierarchy_nodes']} nodes "
        f"({s['node_coverage']:.1%}); classes as top class {s['class_top1_coverage']:.1%}"
    )
    out.append("depth histogram: " + "  ".join(f"{d}:{c}" for d, c in s["depth_histogram"].items()))
    return "\n".join(out)


__all__ = ["shorten", "display_label", "markdown", "text_table"]
