"""Safe image loading shared by training and the apps.

Every image that enters saescope goes through :func:`load_image`, so that a decompression bomb, a
truncated upload or a 16-bit TIFF fails (or converts) the same way everywhere: the result is always
an RGB :class:`PIL.Image.Image`, and every failure is an :class:`ImageError` with a message a user
can act on.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 64 Mpx: far above any photo a ViT needs, far below a bomb
# The one size policy of extraction and the apps: any decodable image is used, down to 1x1 (it is
# resized to the model's input like any other); below TINY_IMAGE_PX on a side it carries little
# information, which the apps say (:func:`tiny_image_note`).
DEFAULT_MIN_SIDE = 1
TINY_IMAGE_PX = 16

ImageInput = (
    str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
)

# PIL's bomb guard is a module global; the lock makes our temporary adjustment of it (and the
# warning filter that turns its warning into an error) safe between our own loader threads.
_OPEN_LOCK = threading.Lock()
RASTER_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
"""The decoders an image may be opened with: plain raster formats. Why a list: PIL would also
open EPS/PS (which runs Ghostscript when installed) and other exotic plugins on hostile bytes."""
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(ValueError):
    """An input could not be turned into a usable RGB image; the message says why."""


def load_image(
    src: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    name: str | None = None,
) -> Image.Image:
    """Decode ``src`` (path, bytes, file object, PIL image or array) into an RGB PIL image.

    Applies the EXIF orientation, flattens transparency onto white, maps grey, palette, CMYK,
    16-bit and float images to 8-bit RGB. Raises :class:`ImageError` for corrupt, truncated,
    empty, non-image, too small (``min(w, h) < min_side``; by default only an image without
    pixels is) or too large (``w * h > max_pixels``, the decompression-bomb guard; ``None``
    disables it) inputs.
    """
    label = name or _describe(src)
    if isinstance(src, np.ndarray):
        image = array_to_image(src)
        _check_size(image.size, label, max_pixels, min_side)
        return image
    if isinstance(src, Image.Image):
        _check_size(src.size, label, max_pixels, min_side)
        try:
            src.load()
        except Exception as err:  # any decoder failure of a lazily opened image
            raise ImageError(f"{label}: the image data is corrupt or truncated ({err})") from err
        return _finish(src, label)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise ImageError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{label}: the file is empty (0 bytes)")
        with open(path, "rb") as fh:
            return _decode(fh, label, max_pixels, min_side)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError(f"{label}: no data (0 bytes)")
        return _decode(io.BytesIO(bytes(src)), label, max_pixels, min_side)
    if hasattr(src, "read"):
        return _decode(src, label, max_pixels, min_side)  # type: ignore[arg-type]
    raise ImageError(f"cannot load an image from a {type(src).__name__}")


def tiny_image_note(image: Image.Image | tuple[int, int]) -> str | None:
    """A note for an image with a side below :data:`TINY_IMAGE_PX`, else None.

    Why: such an image is accepted (and enlarged to the model's input), but the features it
    shows say little; the apps tell the user so instead of refusing it.
    """
    w, h = image.size if isinstance(image, Image.Image) else image
    if min(w, h) >= TINY_IMAGE_PX:
        return None
    return (
        f"this image is only {w}x{h} px; it carries little information "
        "(it is enlarged to the model's input size)"
    )


def _describe(src: object) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return f"<{type(src).__name__}>"


def _check_size(size: tuple[int, int], label: str, max_pixels: int | None, min_side: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{label}: the image has zero size ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{label}: the image claims {w}x{h} = {w * h:,} pixels, above the limit of "
            f"{max_pixels:,} (decompression-bomb guard); raise max_pixels only for trusted files"
        )
    if min(w, h) < min_side:
        raise ImageError(
            f"{label}: the image is too small ({w}x{h}); each side must be at least {min_side} px"
        )


def _decode(fh: BinaryIO, label: str, max_pixels: int | None, min_side: int) -> Image.Image:
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            if max_pixels is not None and old is not None and max_pixels > old:
                Image.MAX_IMAGE_PIXELS = max_pixels  # our cap is the one that applies
            try:
                image = Image.open(fh, formats=RASTER_FORMATS)
            finally:
                Image.MAX_IMAGE_PIXELS = old
        _check_size(image.size, label, max_pixels, min_side)  # header only: nothing decoded yet
        image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{label}: refused as a possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{label}: not an image, or an unsupported image format") from err
    except Exception as err:
        # OSError, SyntaxError, EOFError, struct.error, MemoryError ... or whatever else a
        # format plugin raises on a hostile file: all of them mean "this data does not decode"
        msg = " ".join(str(err).split()) or type(err).__name__
        if "truncated" in msg.lower():
            raise ImageError(f"{label}: the file is truncated ({msg})") from err
        raise ImageError(f"{label}: the image data is corrupt ({msg})") from err
    return _finish(image, label)


def _finish(image: Image.Image, label: str) -> Image.Image:
    """Orientation + mode conversion: any PIL image -> RGB."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose an otherwise fine picture
        pass
    try:
        return to_rgb(image)
    except (OSError, ValueError, TypeError, MemoryError) as err:
        raise ImageError(f"{label}: cannot convert mode {image.mode} to RGB ({err})") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white, high bit depths rescaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode in ("1", "L") and "transparency" in image.info:
        image = image.convert("LA")
        mode = "LA"
    elif mode.startswith("I;16") or mode in ("I", "F"):
        grey = _to_uint8(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in _ALPHA_MODES:
        if mode == "La":  # premultiplied grey+alpha converts only via LA
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(arr: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """Grey levels -> uint8 by their evident range: [0, 1] floats, 8-bit, 16-bit, else stretched.

    ``sixteen_bit`` says the data is known to be 16-bit (PIL's ``I;16`` modes), so a dark 16-bit
    image is not mistaken for a bright 8-bit one.
    """
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    is_int = np.issubdtype(arr.dtype, np.integer)
    if sixteen_bit or arr.dtype == np.uint16:
        a = a / 257.0
    elif not is_int and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif is_int and lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """A numpy image (H, W), (H, W, 1|3|4); bool, int or float) -> RGB PIL image."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(_to_uint8(arr)), "L").convert("RGB")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if arr.dtype == np.uint8:
            a = arr
        else:
            a = _to_uint8(arr)
        mode = "RGB" if a.shape[-1] == 3 else "RGBA"
        return to_rgb(Image.fromarray(np.ascontiguousarray(a), mode))
    raise ImageError(f"cannot make an image from an array of shape {arr.shape}")


__all__ = [
    "ImageError",
    "load_image",
    "to_rgb",
    "array_to_image",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "TINY_IMAGE_PX",
    "tiny_image_note",
]
