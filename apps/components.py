"""Gradio components with our own pre- and post-processing, for a server many visitors share.

Why: two things Gradio does for us are wrong under concurrency or hostile API calls.

- **Image outputs.** Gradio saves a returned ``PIL.Image`` to a content-hashed file in its cache
  (``processing_utils.save_pil_to_cache``) by writing that file in place, every time. Two visitors
  who get the same picture (the same example, the same feature) rewrite the same file while
  another request is sending it, and that visitor gets a truncated response ("Too little data for
  declared Content-Length"). :class:`ServedImage` and :class:`ServedGallery` write each picture
  once, atomically (a unique temporary file renamed into place), to a content-addressed file in
  Gradio's cache folder, and hand Gradio that path: Gradio serves a file already in its cache
  as it is and never rewrites it.
- **Number inputs.** ``gr.Number``/``gr.Slider`` round an API value to their precision (1.5
  becomes 2) and fail on a non-number with Gradio's generic "the upstream app raised an
  exception". :class:`RawNumber` and :class:`RawSlider` pass the value through untouched, and
  the handler checks it with :mod:`saescope.apps.validate`, which answers in the app's words.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio import processing_utils
from gradio.data_classes import ImageData
from PIL import Image
from pydantic import PrivateAttr, model_validator

from saescope.apps import memory

SERVED_FOLDER = "saescope-served"  # under Gradio's cache folder (GRADIO_TEMP_DIR)


@contextlib.contextmanager
def quiet_component_hook() -> Iterator[None]:
    """Define a component subclass without Gradio writing a ``.pyi`` stub next to our source.

    Gradio writes one for every component subclass it sees defined; that would litter (or fail
    on) an installed package. Subclasses, not instance overrides: Gradio re-creates components
    from their class when an event updates them.
    """
    import gradio.component_meta as meta

    hook = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = hook


# ------------------------------------------------------------------------------ served files
def served_folder() -> Path:
    """Where served pictures live: inside Gradio's cache, so Gradio neither copies nor rewrites
    them (``Block.move_resource_to_block_cache`` keeps a path already in its cache)."""
    return Path(gr.utils.get_upload_folder()) / SERVED_FOLDER


def served_bytes(data: bytes, suffix: str) -> str:
    """Path of a file holding ``data``, named by its sha256, written once and atomically.

    A reader (Gradio's file route) sees the complete file or no file, never a partial one: the
    bytes go to a unique temporary file first, then ``os.replace`` puts it under its name. Two
    writers of the same content race harmlessly (both rename a complete, identical file).
    """
    memory.touch()  # rendering and encoding pictures allocates much: trim when idle
    digest = hashlib.sha256(data).hexdigest()[:40]
    folder = served_folder()
    path = folder / f"{digest}.{suffix}"
    try:
        if path.stat().st_size == len(data):
            os.utime(path)  # Gradio's delete_cache ages files: a reused file is fresh again
            return str(path)
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{digest[:12]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def served_image(image: Image.Image | np.ndarray, fmt: str = "webp") -> str:
    """A picture encoded as Gradio would encode it (``fmt``; PNG where PIL cannot write that
    format), written by :func:`served_bytes`."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:  # floats in [0, 1] (or other numbers): clip to 8 bits
            scale = 255.0 if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0 else 1.0
            arr = np.clip(np.asarray(arr, np.float64) * scale, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
    fmt = (fmt or "webp").lower()
    if fmt in ("jpeg", "jpg") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    try:
        data = processing_utils.encode_pil_to_bytes(image, fmt)
    except (KeyError, ValueError, OSError):
        fmt = "png"
        data = processing_utils.encode_pil_to_bytes(image, fmt)
    return served_bytes(data, "jpg" if fmt == "jpeg" else fmt)


def _short(value: Any, n: int = 60) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_picture(value: Any) -> bool:
    return isinstance(value, Image.Image) or (
        isinstance(value, np.ndarray) and value.ndim in (2, 3)
    )


# ------------------------------------------------------------------------------ components
def _define_components() -> tuple[type, ...]:
    with quiet_component_hook():

        class ServedImage(gr.Image):
            """An output ``gr.Image`` whose pictures are written once, atomically (see module
            docstring); paths and ``None`` pass through as with ``gr.Image``."""

            def postprocess(self, value):  # type: ignore[override]
                if _is_picture(value):
                    value = served_image(value, self.format)
                return super().postprocess(value)

            def get_block_name(self) -> str:
                return "image"

        class ServedGallery(gr.Gallery):
            """A ``gr.Gallery`` whose pictures (bare or ``(picture, caption)``) are written once,
            atomically (see module docstring)."""

            def postprocess(self, value):  # type: ignore[override]
                if isinstance(value, (list, tuple)):
                    value = [self._serve(item) for item in value]
                return super().postprocess(value)

            def _serve(self, item):
                if isinstance(item, (tuple, list)) and len(item) == 2 and _is_picture(item[0]):
                    return (served_image(item[0], self.format), item[1])
                return served_image(item, self.format) if _is_picture(item) else item

            def get_block_name(self) -> str:
                return "gallery"

        class RawNumber(gr.Number):
            """A ``gr.Number`` whose value reaches the handler as sent (not rounded, not
            bounds-checked): the handler validates it and answers in the app's words."""

            def preprocess(self, payload):  # type: ignore[override]
                return payload

            def get_block_name(self) -> str:
                return "number"

        class RawSlider(gr.Slider):
            """A ``gr.Slider`` whose value reaches the handler as sent (see :class:`RawNumber`)."""

            def preprocess(self, payload):  # type: ignore[override]
                return payload

            def get_block_name(self) -> str:
                return "slider"

    return ServedImage, ServedGallery, RawNumber, RawSlider


ServedImage, ServedGallery, RawNumber, RawSlider = _define_components()


class UploadData(ImageData):
    """Gradio's ``ImageData`` that lets a payload which is not a file object through, marked as
    refused, so that the upload component answers with the app's own message. (Gradio validates
    the payload before any of our code runs, and its validation error would reach an API caller
    as the generic "upstream app raised an exception"; an error raised inside a pydantic
    validator becomes that same validation error.) Same fields and JSON schema as ``ImageData``,
    so the API description does not change."""

    _refused: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _mark_non_files(cls, data: Any, handler) -> Any:
        if data is None:
            return handler(data)
        if isinstance(data, (dict, ImageData)):
            checked = handler(data)
            if checked.path is None and not (checked.url or "").startswith("data:"):
                # a URL alone: the app does not fetch images from the network
                checked._refused = (
                    f"the image must be sent as an uploaded file, got only the address "
                    f"{_short(checked.url)!r}; with gradio_client use handle_file(path)"
                )
            return checked
        marked = cls.model_construct()
        marked._refused = (
            f"the image must be sent as an uploaded file, got {type(data).__name__} "
            f"{_short(data)!r}; with gradio_client use handle_file(path)"
        )
        return marked

    @property
    def refused(self) -> str | None:
        """Why this payload is not an image file (``None`` for a real file object)."""
        return self._refused


UploadData.__name__ = UploadData.__qualname__ = "ImageData"


__all__ = [
    "RawNumber",
    "RawSlider",
    "ServedGallery",
    "ServedImage",
    "UploadData",
    "quiet_component_hook",
    "served_bytes",
    "served_folder",
    "served_image",
]
