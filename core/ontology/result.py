"""What the analysis finds: each feature's placement, the induced hierarchy, summaries.

Why apart from the analysis: reports, plots and the pipeline step read results (and write them as
JSON) without needing the code that computes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saescope.core import formats
from saescope.core.ontology.labels import LabelMapping
from saescope.core.wordnet import Synset

FORMAT = formats.ONTOLOGY.name
FORMAT_VERSION = formats.ONTOLOGY.version


@dataclass
class FeatureOntology:
    """One feature's place in the hierarchy."""

    feature: int
    n_images: int  # images where it fires (mapped classes only)
    mass: float  # summed per-image activation over the images the distribution is taken on
    distribution: list[tuple[int, float]]  # (label index, share), largest first, shares > 0
    top_classes: list[int]
    top_share: float  # mass share held by the top classes
    lch: list[Synset]  # lowest common hypernym(s) of the top classes' synsets (ties: rare)
    depth: int  # max_depth of lch[0]
    min_depth: int

    def to_dict(self, label_names: Sequence[str], max_classes: int = 10) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "n_images": self.n_images,
            "mass": self.mass,
            "distribution": [
                {"label": label_names[c], "share": round(s, 6)}
                for c, s in self.distribution[:max_classes]
            ],
            "top_classes": [label_names[c] for c in self.top_classes],
            "top_share": round(self.top_share, 6),
            "lch": [s.name for s in self.lch],
            "lch_id": self.lch[0].id,
            "lch_gloss": self.lch[0].gloss,
            "depth": self.depth,
            "min_depth": self.min_depth,
        }


@dataclass
class Hierarchy:
    """The part of WordNet above the label synsets: nodes, hypernym edges, depths."""

    nodes: dict[int, Synset]  # offset -> synset
    edges: list[tuple[int, int]]  # (parent offset, child offset)
    classes: dict[int, list[int]]  # synset offset -> label indices mapped to it

    @classmethod
    def induced(cls, mapping: LabelMapping) -> Hierarchy:
        nodes: dict[int, Synset] = {}
        classes: dict[int, list[int]] = {}
        for label, s in sorted(mapping.synsets.items()):
            classes.setdefault(s.offset, []).append(label)
            for a in s.ancestors():
                nodes[a.offset] = a
        edges = sorted({(p.offset, o) for o, s in nodes.items() for p in s.parents()})
        return cls(nodes, edges, classes)

    def depth(self, offset: int) -> int:
        return self.nodes[offset].max_depth


@dataclass
class OntologyResult:
    """Per-feature placements plus hierarchy coverage and the random-class-set baseline."""

    features: list[FeatureOntology]
    mapping: LabelMapping
    hierarchy: Hierarchy
    n_features: int
    n_silent: int  # features that never fired on a mapped image
    n_rare: int  # fired on fewer than min_images images: not analysed
    class_images: list[int]
    settings: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)

    # -- summaries ------------------------------------------------------------------------
    @property
    def lch_counts(self) -> Counter:
        """Node offset -> number of features whose (first) LCH it is."""
        return Counter(f.lch[0].offset for f in self.features)

    def summary(self) -> dict[str, Any]:
        feats = self.features
        n = len(feats)
        root = self.hierarchy_root
        depths = [f.depth for f in feats]
        counts = self.lch_counts
        nodes = self.hierarchy.nodes
        by_depth: dict[int, dict[str, int]] = {}
        for o, s in nodes.items():
            d = by_depth.setdefault(s.max_depth, {"nodes": 0, "covered": 0, "features": 0})
            d["nodes"] += 1
            d["covered"] += int(o in counts)
            d["features"] += counts.get(o, 0)
        mapped = self.mapping.mapped
        top1 = {f.distribution[0][0] for f in feats if f.distribution}
        in_top = {c for f in feats for c in f.top_classes}
        multi = [
            f for f in feats if len({self.mapping.synsets[c].offset for c in f.top_classes}) > 1
        ]
        return {
            "n_features": self.n_features,
            "n_analysed": n,
            "n_silent": self.n_silent,
            "n_rare": self.n_rare,
            "n_classes": len(self.mapping.label_names),
            "n_classes_mapped": len(mapped),
            "n_images": int(sum(self.class_images)),
            "fraction_below_root": (sum(f.lch[0].offset != root for f in feats) / n) if n else None,
            "fraction_single_synset": (1 - len(multi) / n) if n else None,
            "mean_depth": float(np.mean(depths)) if n else None,
            "median_depth": float(np.median(depths)) if n else None,
            "mean_depth_multi": float(np.mean([f.depth for f in multi])) if multi else None,
            "depth_histogram": {str(d): c for d, c in sorted(Counter(depths).items())},
            "hierarchy_nodes": len(nodes),
            "nodes_covered": len(counts),
            "node_coverage": len(counts) / len(nodes) if nodes else None,
            "coverage_by_depth": {str(d): v for d, v in sorted(by_depth.items())},
            "class_top1_coverage": len(top1) / len(mapped) if mapped else None,
            "class_top_set_coverage": len(in_top) / len(mapped) if mapped else None,
            "baseline": self.baseline,
        }

    @property
    def hierarchy_root(self) -> int:
        return (
            min(self.hierarchy.nodes, key=lambda o: self.hierarchy.depth(o))
            if self.hierarchy.nodes
            else -1
        )

    def to_dict(self) -> dict[str, Any]:
        names = self.mapping.label_names
        counts = self.lch_counts
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "settings": self.settings,
            "summary": self.summary(),
            "labels": self.mapping.to_dict(),
            "class_images": {names[c]: n for c, n in enumerate(self.class_images)},
            "nodes": [
                {
                    "synset": s.name,
                    "id": s.id,
                    "depth": s.max_depth,
                    "min_depth": s.min_depth,
                    "features": counts.get(o, 0),
                    "labels": [names[c] for c in self.hierarchy.classes.get(o, [])],
                }
                for o, s in sorted(
                    self.hierarchy.nodes.items(), key=lambda kv: (kv[1].max_depth, kv[1].name)
                )
            ],
            "features": [f.to_dict(names) for f in self.features],
        }


__all__ = ["FORMAT", "FORMAT_VERSION", "FeatureOntology", "Hierarchy", "OntologyResult"]
