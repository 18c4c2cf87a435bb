"""Concatenated sources (``A+B``): order, ids, labels, extraction-ready determinism."""

from __future__ import annotations

import numpy as np

from saescope.core.sources import ConcatSource, open_source


def test_concat_spec_orders_parts_and_keeps_ids_and_labels() -> None:
    src = open_source("builtin:photos?views=2+builtin:digits?max_images=5")
    assert isinstance(src, ConcatSource) and len(src) == 55
    assert src.image_id(0) == "photos/astronaut/0" and src.image_id(50) == "digits/0000"
    digits = open_source("builtin:digits")
    assert src.label_names[src.label(50)] == f"builtin:digits:{digits.label_names[digits.label(0)]}"
    assert np.array_equal(np.asarray(src.load(51)), np.asarray(digits.load(1)))
    assert src.describe()["kind"] == "concat" and len(src.describe()["parts"]) == 2
    assert src.subset(48, 52).image_id(2) == "digits/0000"


def test_plus_in_an_existing_folder_name_is_not_split(tmp_path) -> None:
    folder = tmp_path / "a+b"
    folder.mkdir()
    assert not isinstance(open_source(str(folder)), ConcatSource)
