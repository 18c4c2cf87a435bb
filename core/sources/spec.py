"""Image source specs: one string names any source, for CLIs, manifests and the apps.

Specs understood by :func:`open_source`:

- ``builtin:photos[?views=N&seed=S&size=PX]`` - the photos that ship with scikit-image and
  scikit-learn, N augmented views each (view 0 is the unaugmented photo);
- ``builtin:digits[?size=PX&resample=nearest|bilinear]`` - scikit-learn's 1,797 labelled digits;
- ``builtin:fashion-mnist[?split=train|test&size=PX&dir=...]`` - from Debian's
  ``dataset-fashion-mnist``;
- ``builtin:lfw[?size=PX]`` - scikit-image's ``lfw_subset`` (100 faces, 100 non-faces);
- ``hf:NAME[:split]`` - a Hugging Face ``datasets`` dataset (Hub name or local path);
- a folder: a ``datasets.save_to_disk`` folder, or else a folder of image files (recursive);
- ``SPEC+SPEC[+...]`` - several sources one after the other (e.g. photos and digits); labels are
  kept only when every part is labelled, with the parts' label names prefixed by the part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from saescope.core.sources.base import ConcatSource, ImageSource
from saescope.core.sources.builtin import BUILTINS
from saescope.core.sources.files import DATASET_MARKERS, FolderSource, HFSource

_INT_PARAMS = {"views", "seed", "size"}
_LIMIT_KEYS = ("max_images", "start", "stop")


def parse_params(query: str) -> dict[str, Any]:
    """A spec's query string as keyword arguments (limits and integer parameters as ints)."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        key = key.replace("-", "_")
        if key in _INT_PARAMS or key in _LIMIT_KEYS:
            try:
                out[key] = int(value)
            except ValueError as err:
                raise ValueError(
                    f"source parameter {key} must be an integer, got {value!r}"
                ) from err
        else:
            out[key] = value
    return out


def _split_concat(text: str) -> list[str] | None:
    """``a+b`` -> ``[a, b]`` when every part looks like a spec (a '+' in a folder name is kept)."""
    if "+" not in text or Path(text).expanduser().exists():
        return None
    parts = [p.strip() for p in text.split("+")]
    if all(p.startswith(("builtin:", "hf:")) or Path(p).expanduser().exists() for p in parts):
        return parts
    return None


def open_source(
    spec: str | os.PathLike | ImageSource,
    *,
    max_images: int | None = None,
    start: int = 0,
    stop: int | None = None,
    **kw: Any,
) -> ImageSource:
    """Open a source from its spec (see the module docstring); limits apply last.

    ``max_images``/``start``/``stop`` may also be given in a builtin's query string.
    """
    if isinstance(spec, ImageSource):
        return spec.subset(start, stop, max_images)
    text = str(spec)
    parts = _split_concat(text)
    if parts is not None:
        source: ImageSource = ConcatSource([open_source(p) for p in parts], spec=text)
    elif text.startswith("builtin:"):
        name, _, query = text[len("builtin:") :].partition("?")
        if name not in BUILTINS:
            raise ValueError(
                f"unknown built-in source {name!r}; known: "
                + ", ".join(f"builtin:{k}" for k in BUILTINS)
            )
        params = {**parse_params(query), **kw}
        limits = {k: params.pop(k) for k in _LIMIT_KEYS if k in params}
        try:
            source = BUILTINS[name](**params)
        except TypeError as err:
            raise ValueError(f"bad parameters for builtin:{name}: {err}") from err
        start = limits.get("start", start)
        stop = limits.get("stop", stop)
        max_images = limits.get("max_images", max_images)
    elif text.startswith("hf:"):
        name, _, split = text[3:].partition(":")
        source = HFSource(name, split=kw.pop("split", None) or split or None, spec=text, **kw)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"image source {text!r} not found: give a folder, hf:NAME[:split] or one of "
                + ", ".join(f"builtin:{k}" for k in BUILTINS)
            )
        if path.is_file():
            raise ValueError(f"image source {text!r} is a file; give a folder of images")
        if any((path / f).exists() for f in DATASET_MARKERS):
            source = HFSource(str(path), from_disk=True, spec=text, **kw)
        else:
            source = FolderSource(path, **kw)
    return source.subset(start, stop, max_images)


__all__ = ["open_source", "parse_params"]
