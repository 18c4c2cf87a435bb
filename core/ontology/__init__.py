"""Where SAE features sit in the WordNet noun hierarchy.

For an SAE over a labelled image set whose labels map to WordNet synsets:

- each feature's **class distribution**: its per-image activation (max over patches) summed per
  class, as shares of the total, over its ``top_k`` strongest images (default) or over every
  image where it fires (``images="all"``; with max-pooling over hundreds of patches most
  features fire a little on most images, so that distribution mostly mirrors class sizes);
- its **top classes**: the smallest set of classes, largest share first, that holds ``coverage``
  of that mass (capped at ``max_top`` classes);
- the **lowest common hypernym (LCH)** of those classes' synsets and its depth (``max_depth``,
  edges to ``entity.n.01``; a single top class is its own LCH): how general the concept is that
  the feature's classes share;
- **hierarchy coverage**: of the nodes of the hierarchy induced by the label synsets (all their
  ancestors), which are the LCH of some feature, overall and by depth; and the fraction of
  classes that are some feature's top class;
- a **baseline**: the LCH depth of random class sets of the same sizes, so that "features sit at
  depth 6" can be read against what chance gives on this label set.

Labels map to synsets through :func:`map_labels`: a user map first, then ImageNet ids
(``n02121808``) and synset names (``cat.n.01``) as they are, then the built-in map of the packaged
sets (:data:`BUILTIN_SYNSETS`). Labels that do not map are listed and their images excluded, with
a warning -- never silently.

Why accumulate per class instead of keeping per-image activations: memory stays
``features x classes`` whatever the number of images (:class:`ClassActivations`).

Modules: :mod:`.labels` (label -> synset), :mod:`.accumulate` (per-class sums, top-k),
:mod:`.analysis` (:func:`analyze`), :mod:`.result` (what it finds), :mod:`.report` (markdown and
console tables) and :mod:`.plot` (the hierarchy figure).
"""

from saescope.core.ontology.accumulate import ClassActivations, median_class_size
from saescope.core.ontology.analysis import analyze, lch_depth_baseline, top_classes
from saescope.core.ontology.labels import (
    BUILTIN_SYNSETS,
    LabelMapping,
    OntologyError,
    load_label_map,
    map_labels,
    split_label,
)
from saescope.core.ontology.plot import plot_hierarchy
from saescope.core.ontology.report import display_label, markdown, text_table
from saescope.core.ontology.result import (
    FORMAT,
    FORMAT_VERSION,
    FeatureOntology,
    Hierarchy,
    OntologyResult,
)

__all__ = [
    "BUILTIN_SYNSETS",
    "LabelMapping",
    "map_labels",
    "split_label",
    "load_label_map",
    "ClassActivations",
    "FeatureOntology",
    "Hierarchy",
    "OntologyResult",
    "OntologyError",
    "analyze",
    "top_classes",
    "median_class_size",
    "display_label",
    "lch_depth_baseline",
    "markdown",
    "text_table",
    "plot_hierarchy",
    "FORMAT",
    "FORMAT_VERSION",
]
