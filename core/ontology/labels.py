"""Mapping dataset labels to WordNet noun synsets, and the built-in map of the packaged sets.

Why explicit: a label that maps to no synset (or to the wrong sense) silently skews every depth
and coverage figure, so each label's mapping records how it was made, and unmapped labels are
listed and warned about.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.core.wordnet import Synset, WordNet, WordNetError
from saescope.core.wordnet import load as load_wordnet

# The packaged datasets' labels, each checked against its gloss in tests/test_ontology.py.
# None = deliberately unmapped (no WordNet noun denotes the class).
BUILTIN_SYNSETS: dict[str, dict[str, str | None]] = {
    "builtin:photos": {
        "astronaut": "astronaut.n.01",  # Eileen Collins in a space suit
        "chelsea": "domestic_cat.n.01",  # a tabby cat
        "coffee": "coffee.n.01",  # a cup of coffee
        "rocket": "rocket.n.01",  # a launch vehicle on its pad
        "motorcycle_left": "motorcycle.n.01",
        "motorcycle_right": "motorcycle.n.01",
        "hubble_deep_field": "galaxy.n.03",  # a field of distant galaxies
        "retina": "retina.n.01",  # a fundus photograph
        "immunohistochemistry": "tissue.n.01",  # stained tissue section
        "colorwheel": "color_circle.n.01",
        "logo": "logo.n.01",  # the scikit-image logo
        "china": "pagoda.n.01",  # the Tower of Buddhist Incense, Summer Palace
        "flower": "flower.n.02",  # a dahlia bloom (the reproductive organ, not the plant)
        "camera": "photographer.n.01",  # "cameraman": a man with a camera on a tripod
        "coins": "coin.n.01",
        "moon": "moon.n.01",  # the Earth's moon (an instance of satellite.n.03)
        "brick": "brick.n.01",  # a brick wall
        "grass": "grass.n.01",
        "gravel": "gravel.n.01",
        "text": "handwriting.n.01",  # hand-written formulas
        "page": "page.n.01",  # a printed book page
        "clock": "clock.n.01",
        "cell": "cell.n.02",  # a biological cell
        "horse": "horse.n.01",  # a horse silhouette
        "checkerboard": "checkerboard.n.01",
    },
    "builtin:digits": {
        "0": "zero.n.02",
        "1": "one.n.01",
        "2": "two.n.01",
        "3": "three.n.01",
        "4": "four.n.01",
        "5": "five.n.01",
        "6": "six.n.01",
        "7": "seven.n.01",
        "8": "eight.n.01",
        "9": "nine.n.01",
    },
    "builtin:fashion-mnist": {
        "T-shirt/top": "jersey.n.03",  # "tee shirt": a close-fitting pullover shirt
        "Trouser": "trouser.n.01",
        "Pullover": "pullover.n.01",
        "Dress": "dress.n.01",
        "Coat": "coat.n.01",
        "Sandal": "sandal.n.01",
        "Shirt": "shirt.n.01",
        "Sneaker": "gym_shoe.n.01",
        "Bag": "bag.n.04",  # handbag
        "Ankle boot": "boot.n.01",
    },
    "builtin:lfw": {
        "face": "face.n.01",
        "non-face": None,  # a negative class: no synset
    },
}
# label-name prefixes of concatenated sources (``ImageSource.kind`` + ":")
_KINDS = tuple(sorted(BUILTIN_SYNSETS, key=len, reverse=True)) + ("folder", "datasets", "memory")
_ID = re.compile(r"^n\d{8}$")
_NAME = re.compile(r"^.+\.n\.\d+$")


class OntologyError(ValueError):
    """Labels, activations or settings the ontology analysis cannot use."""


@dataclass
class LabelMapping:
    """Which label maps to which synset, how, and which labels were excluded and why."""

    label_names: list[str]
    synsets: dict[int, Synset]  # label index -> synset
    how: dict[int, str]  # label index -> "user" | "id" | "name" | "builtin" | "first-sense"
    unmapped: dict[int, str]  # label index -> reason

    @property
    def mapped(self) -> list[int]:
        return sorted(self.synsets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mapped": [
                {
                    "label": i,
                    "name": self.label_names[i],
                    "synset": s.name,
                    "id": s.id,
                    "how": self.how[i],
                }
                for i, s in sorted(self.synsets.items())
            ],
            "unmapped": [
                {"label": i, "name": self.label_names[i], "reason": r}
                for i, r in sorted(self.unmapped.items())
            ],
        }


def split_label(label: str, dataset_kind: str | None = None) -> tuple[str | None, str]:
    """``builtin:photos:astronaut`` -> (``builtin:photos``, ``astronaut``); a bare label keeps
    ``dataset_kind`` (the store's source kind)."""
    for kind in _KINDS:
        if label.startswith(kind + ":"):
            return kind, label[len(kind) + 1 :]
    return dataset_kind, label


def _resolve(wn: WordNet, key: str, what: str) -> Synset:
    try:
        return wn.synset(key)
    except WordNetError as err:
        raise OntologyError(f"{what}: {err}") from err


def load_label_map(path: str | os.PathLike) -> dict[str, str | None]:
    """A user map: JSON object ``{label: "cat.n.01" | "n02121808" | null}`` (null excludes)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise OntologyError(f"label map {path} is unreadable or not JSON ({err})") from err
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()
    ):
        raise OntologyError(
            f"label map {path} must be a JSON object of label -> synset name, id or null"
        )
    return data


def map_labels(
    label_names: Sequence[str],
    wn: WordNet | None = None,
    dataset_kind: str | None = None,
    user_map: Mapping[str, str | None] | None = None,
    first_sense: bool = False,
    warn: bool = True,
) -> LabelMapping:
    """Map label names to noun synsets (see the module docstring for the order of rules).

    ``first_sense`` maps any other label that is a WordNet lemma to its most frequent sense (a
    guess, recorded as such). A user-map value that is not a synset is an error; unmapped labels
    are listed in the result and in a warning.
    """
    wn = wn or load_wordnet()
    user_map = dict(user_map or {})
    synsets: dict[int, Synset] = {}
    how: dict[int, str] = {}
    unmapped: dict[int, str] = {}
    for i, full in enumerate(label_names):
        full = str(full)
        kind, bare = split_label(full, dataset_kind)
        for key in (full, bare):
            if key in user_map:
                if user_map[key] is None:
                    unmapped[i] = "excluded by the label map"
                else:
                    synsets[i] = _resolve(wn, str(user_map[key]), f"label map entry {key!r}")
                    how[i] = "user"
                break
        if i in synsets or i in unmapped:
            continue
        if _ID.match(bare) or _NAME.match(bare):
            try:
                synsets[i], how[i] = wn.synset(bare), "id" if _ID.match(bare) else "name"
            except WordNetError as err:
                unmapped[i] = str(err)
            continue
        table = BUILTIN_SYNSETS.get(kind or "", {})
        if bare in table:
            if table[bare] is None:
                unmapped[i] = f"{kind} label {bare!r} has no WordNet noun"
            else:
                synsets[i], how[i] = wn.synset(str(table[bare])), "builtin"
            continue
        senses = wn.synsets(bare) if first_sense else []
        if senses:
            synsets[i], how[i] = senses[0], "first-sense"
            continue
        unmapped[i] = (
            "not a WordNet lemma"
            if first_sense
            else "no mapping (give a label map, or use first-sense guessing)"
        )
    out = LabelMapping(list(map(str, label_names)), synsets, how, unmapped)
    if warn and unmapped:
        names = ", ".join(f"{label_names[i]!r}" for i in sorted(unmapped))
        warnings.warn(
            f"{len(unmapped)} of {len(label_names)} labels do not map to WordNet "
            f"synsets; their images are excluded: {names}",
            stacklevel=2,
        )
    return out


__all__ = [
    "BUILTIN_SYNSETS",
    "OntologyError",
    "LabelMapping",
    "split_label",
    "load_label_map",
    "map_labels",
]
