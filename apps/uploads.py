"""Uploads that reach *our* decoder untouched, so bad files become one clear message.

Gradio would decode an upload with PIL before the app sees it; a corrupt file, a non-image or a
decompression bomb would then fail with a generic error. :class:`SafeImage` hands over the raw
file, :func:`read_upload` decodes it with :func:`saescope.core.images.load_image` and turns every
failure into a message that says what to do.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from saescope.apps.components import UploadData
from saescope.apps.validate import BadInput
from saescope.core.fileio import atomic_path
from saescope.core.images import ImageError, load_image, tiny_image_note

APP_MAX_PIXELS = 40_000_000  # decompression-bomb cap for uploads (about 7300 x 5500)
MAX_FILE_SIZE = "40mb"


def _raw_upload(payload):
    """An image payload -> the uploaded file's path (or a pasted data URL's bytes), undecoded."""
    if payload is None:
        return None
    refused = getattr(payload, "refused", None)  # not a file object (UploadData)
    if refused:
        raise BadInput(refused, title="Cannot use this image")
    url = getattr(payload, "url", None)
    if url and url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[1])
        except Exception:
            return b""
    return getattr(payload, "path", None)


def _define_safe_image():
    # Gradio writes a ``.pyi`` stub next to the source file of every component subclass it sees
    # defined; that would litter (or fail on) an installed package, so the hook is off while
    # this one class is created. A subclass, not an instance override: gradio re-creates
    # components from their class when an event updates them.
    import gradio.component_meta as meta

    hook = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:

        class SafeImage(gr.Image):
            """A ``gr.Image`` upload that hands the raw file to the app instead of decoding it.

            Gradio's own preprocessing opens the file with PIL before the app sees it, so a
            corrupt file or a decompression bomb would fail there with a generic error. This one
            returns the file path (or the bytes of a pasted/webcam data URL) and the app decodes
            it with :func:`core.images.load_image`.
            """

            data_model = UploadData  # a non-file payload gets our message, not Gradio's

            def preprocess(self, payload):  # type: ignore[override]
                return _raw_upload(payload)

            def get_block_name(self) -> str:
                return "image"
    finally:
        meta.create_or_modify_pyi = hook
    return SafeImage


SafeImage = _define_safe_image()


def read_upload(src: Any, name: str | None = None) -> Image.Image:
    """Decode an upload (path, bytes, PIL, array) into RGB, or raise ``gr.Error`` that says why."""
    if src is None:
        raise gr.Error("Upload an image first (or pick one of the examples).", title="No image")
    label = name or (Path(src).name if isinstance(src, (str, os.PathLike)) else "the upload")
    try:
        # the size policy is core's (any decodable image, down to 1x1), as for extraction
        return load_image(src, max_pixels=APP_MAX_PIXELS, name=label)
    except ImageError as err:
        raise gr.Error(
            upload_message(err), title="Cannot use this image", print_exception=False
        ) from None
    except Exception as err:  # anything else a decoder may throw: still a message, no traceback
        raise gr.Error(
            f"{label}: could not be read as an image ({type(err).__name__}).",
            title="Cannot use this image",
            print_exception=False,
        ) from None


def try_upload(src: Any) -> tuple[Image.Image | None, str | None]:
    """``(image, None)``, or ``(None, message)``.

    Apps use this on upload so that a bad file leaves one clear message (the status line under
    the upload box, which stays) and a cleared upload box, instead of error badges on every
    output. No toast as well: the same warning twice on one page reads as two problems. An image
    that is used but tiny (:func:`saescope.core.images.tiny_image_note`) gets an info toast.
    """
    try:
        image = read_upload(src)
    except gr.Error as err:
        return None, err.message
    note = tiny_image_note(image)
    if note:  # accepted, but the user should know why its features say little
        gr.Info(note[0].upper() + note[1:] + ".", title="Tiny image")
    return image, None


def upload_message(err: Exception) -> str:
    msg = str(err)
    if "decompression-bomb" in msg or "decompression bomb" in msg:
        msg += f". Please upload an image below {APP_MAX_PIXELS / 1e6:.0f} megapixels."
    elif "not an image" in msg:
        msg += ". Please upload a PNG, JPEG, WebP, GIF, BMP or TIFF picture."
    elif "too small" in msg:
        msg += "."
    return msg


def example_images(
    names: Iterable[str] = ("chelsea", "astronaut", "coffee", "rocket", "motorcycle_left"),
) -> list[str]:
    """The packaged scikit-image photos saved once as JPEG files (gradio examples need files)."""
    from saescope.core.paths import cache_dir

    folder = cache_dir("app_examples")
    out = []
    for name in names:
        path = folder / f"{name}.jpg"
        if not path.is_file():
            try:
                import skimage.data as data

                arr = (
                    data.stereo_motorcycle()[0]
                    if name == "motorcycle_left"
                    else getattr(data, name)()
                )
                img = load_image(arr)
                img.thumbnail((640, 640))
                with atomic_path(path) as tmp:
                    img.save(tmp, "JPEG", quality=90)
            except Exception:
                continue
        out.append(str(path))
    return out


def image_upload(height: int, examples: bool = True):
    """The safe upload box with the example photos under it (in the current layout context)."""
    upload = SafeImage(
        label="Upload an image",
        type="filepath",
        sources=["upload", "clipboard"],
        height=height,
        elem_id="upload",
    )
    if examples:
        ex_files = example_images()
        if ex_files:
            gr.Examples(ex_files, inputs=upload, label="Examples", examples_per_page=6)
    return upload


__all__ = [
    "APP_MAX_PIXELS",
    "MAX_FILE_SIZE",
    "SafeImage",
    "read_upload",
    "try_upload",
    "upload_message",
    "example_images",
    "image_upload",
]
