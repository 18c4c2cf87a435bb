"""Fuzzing the one image decoder that extraction and the apps share (issue 14).

:func:`saescope.core.images.load_image` is the only door for pixels; these properties (hypothesis)
throw at it what a careless user or an attacker would: every mode and bit depth PIL writes
(1, L, LA, P with transparency, I;16, I, F, CMYK, RGB, RGBA; 16-bit PNG), 1x1 images, files
truncated anywhere, bit-flipped or zeroed anywhere, and headers that claim 100000 x 100000
pixels. Every case ends in the project's own :class:`~saescope.core.images.ImageError` or in a
correct RGB image, never another exception, and never a hang: each example has a deadline and the
module a hard timeout.
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from saescope.core.images import DEFAULT_MAX_PIXELS, ImageError, load_image

pytestmark = [
    pytest.mark.timeout(120),  # a real hang fails the module instead of stalling CI
    # PIL's own notes on the broken files we feed it (the outcome is what is checked)
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning"),
    pytest.mark.filterwarnings("ignore:Truncated File Read:UserWarning"),
]

SETTINGS = dict(deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# (mode, formats that store it losslessly); JPEG is lossy and checked for shape only
LOSSLESS = {
    "1": ["PNG", "BMP", "TIFF"],
    "L": ["PNG", "BMP", "TIFF", "GIF"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "GIF", "BMP"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
    "CMYK": ["TIFF"],
    "RGB": ["PNG", "BMP", "TIFF", "WEBP"],
    "RGBA": ["PNG", "TIFF"],
}
LOSSY = {"L": ["JPEG"], "RGB": ["JPEG"], "CMYK": ["JPEG"]}


# ------------------------------------------------------------------------------ inputs
@st.composite
def images(draw) -> tuple[Image.Image, str, bool]:
    """(image, format, lossless): any mode PIL writes, 1x1 up to 24x24, random pixels."""
    mode = draw(st.sampled_from(sorted(LOSSLESS)))
    lossy = mode in LOSSY and draw(st.booleans())
    fmt = draw(st.sampled_from(LOSSY[mode] if lossy else LOSSLESS[mode]))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "1":
        image = Image.fromarray(rng.random((h, w)) > 0.5)
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        image = image if image.mode == "I;16" else image.convert("I;16")
    elif mode == "I":
        image = Image.fromarray(rng.integers(-(2**20), 2**20, (h, w), dtype=np.int32), "I")
    elif mode == "F":
        image = Image.fromarray(rng.random((h, w)).astype(np.float32), "F")
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 8, (h, w), dtype=np.uint8), "P")
        image.putpalette(rng.integers(0, 256, 8 * 3, dtype=np.uint8).tobytes())
        if fmt in ("PNG", "GIF") and draw(st.booleans()):  # BMP stores no transparency
            image.info["transparency"] = int(rng.integers(0, 8))
    else:
        bands = len(mode)
        arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        image = Image.frombytes(mode, (w, h), arr.tobytes())
    return image, fmt, not lossy


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    if fmt == "GIF" and "transparency" in image.info:
        kw["transparency"] = image.info["transparency"]
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(w: int, h: int, depth: int = 8, colour: int = 0) -> bytes:
    """A PNG whose header (valid CRC) claims ``w x h`` over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def gif_claiming(w: int, h: int) -> bytes:
    """A GIF whose screen and image descriptors claim ``w x h`` (at most 65535 a side)."""
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    desc = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
    return head + desc + b"\x02\x02\x44\x01\x00" + b"\x3b"


def bmp_claiming(w: int, h: int) -> bytes:
    """A BMP whose info header claims ``w x h`` at 24 bits over 16 bytes of pixels."""
    pixels = b"\x00" * 16
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    head = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return head + info + pixels


# ------------------------------------------------------------------------------ expectations
def expected_rgb(image: Image.Image) -> np.ndarray | None:
    """The RGB pixels an image must give, stated independently of core.images (None: check
    only shape and greyness, for I and F whose scaling is a choice, not a fact)."""
    mode = image.mode
    if mode == "1":
        grey = np.asarray(image, dtype=np.uint8) * 255
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "L":
        return np.repeat(np.asarray(image)[..., None], 3, axis=2)
    if mode == "I;16":
        v = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(v / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGB", "CMYK"):
        return np.asarray(image.convert("RGB")) if mode == "CMYK" else np.asarray(image)
    if mode == "P":
        index = np.asarray(image)
        palette = np.frombuffer(bytes(image.getpalette()[: 3 * 256]), np.uint8).reshape(-1, 3)
        rgb = palette[index].copy()
        if "transparency" in image.info:
            rgb[index == image.info["transparency"]] = 255
        return rgb
    if mode in ("LA", "RGBA"):
        a = np.asarray(image).astype(np.float64)
        colour = a[..., :1].repeat(3, axis=2) if mode == "LA" else a[..., :3]
        alpha = a[..., -1:] / 255.0
        return np.clip(np.rint(colour * alpha + 255.0 * (1 - alpha)), 0, 255).astype(np.uint8)
    return None


def check_result(out: Image.Image, original: Image.Image | None = None) -> None:
    """A decoded image: RGB, with pixels, within the pixel cap; equal to ``original``'s
    expected RGB when given."""
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    w, h = out.size
    assert w >= 1 and h >= 1 and w * h <= DEFAULT_MAX_PIXELS
    arr = np.asarray(out)
    assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
    if original is None:
        return
    assert out.size == original.size
    want = expected_rgb(original)
    if want is None:  # I, F: grey levels in the order of the source values
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
        src = np.asarray(original).astype(np.float64).ravel()
        got = arr[..., 0].astype(np.int64).ravel()
        order = np.argsort(src, kind="stable")
        assert (np.diff(got[order]) >= 0).all()
    else:
        tolerance = 1 if original.mode in ("LA", "RGBA") else 0
        assert np.abs(arr.astype(int) - want.astype(int)).max() <= tolerance


def decode(data: bytes) -> Image.Image | None:
    """``load_image(data)``; None for the project's own ImageError, anything else escapes."""
    try:
        return load_image(data, name="fuzz")
    except ImageError as err:
        assert str(err).startswith("fuzz") and "\n" not in str(err)
        return None


# ------------------------------------------------------------------------------ properties
@settings(max_examples=80, **SETTINGS)
@given(images())
def test_every_mode_and_depth_decodes_to_the_right_rgb(case) -> None:
    image, fmt, lossless = case
    out = decode(encode(image, fmt))
    assert out is not None, f"a valid {image.mode} {fmt} {image.size} was refused"
    check_result(out, image if lossless else None)
    assert out.size == image.size


def test_sixteen_bit_png_and_one_pixel_images_exactly() -> None:
    ramp = np.array([[0, 256, 257, 32767, 65535]], dtype=np.uint16)
    png16 = encode(Image.fromarray(ramp), "PNG")
    assert png16[24] == 16  # IHDR bit depth: a real 16-bit PNG
    out = np.asarray(load_image(png16))[0, :, 0]
    assert out.tolist() == [0, 1, 1, 127, 255]
    for mode, value, rgb in [
        ("L", 7, (7, 7, 7)),
        ("RGB", (1, 2, 3), (1, 2, 3)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("1", 1, (255, 255, 255)),
    ]:
        one = load_image(encode(Image.new(mode, (1, 1), value), "PNG"))
        assert one.size == (1, 1) and one.getpixel((0, 0)) == rgb


@settings(max_examples=60, **SETTINGS)
@given(images(), st.data())
def test_truncated_files_are_refused_or_decoded(case, data) -> None:
    image, fmt, _ = case
    blob = encode(image, fmt)
    cut = data.draw(st.integers(0, len(blob) - 1), label="keep bytes")
    out = decode(blob[:cut])
    if out is not None:
        check_result(out)


@settings(max_examples=80, **SETTINGS)
@given(images(), st.data())
def test_bit_flipped_and_zeroed_files_are_refused_or_decoded(case, data) -> None:
    image, fmt, _ = case
    blob = bytearray(encode(image, fmt))
    n = len(blob)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        pos = data.draw(st.integers(0, n - 1), label="position")
        blob[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    if data.draw(st.booleans(), label="zero a run"):
        start = data.draw(st.integers(0, n - 1), label="run start")
        blob[start : start + data.draw(st.integers(1, 32), label="run")] = b"\x00" * 32
    out = decode(bytes(blob))
    if out is not None:
        check_result(out)


@settings(max_examples=40, **SETTINGS)
@given(
    st.sampled_from(["png", "gif", "bmp"]),
    st.integers(9_000, 100_000),
    st.integers(9_000, 100_000),
    st.sampled_from([(8, 0), (16, 0), (8, 2), (8, 6), (1, 0)]),
)
def test_huge_declared_sizes_are_refused_at_once(kind, w, h, png_type) -> None:
    """Headers claiming 81 Mpx to 10 Gpx: refused from the header, quickly, without allocating
    the pixels (which would take up to 40 GB)."""
    if kind == "png":
        blob = png_claiming(w, h, *png_type)
    elif kind == "gif":
        blob = gif_claiming(min(w, 65535), min(h, 65535))
    else:
        blob = bmp_claiming(w, h)
    t0 = time.perf_counter()
    with pytest.raises(ImageError) as info:
        load_image(blob, name="fuzz")
    assert time.perf_counter() - t0 < 1.0
    msg = str(info.value)
    assert "above the limit" in msg or "decompression bomb" in msg, msg


def test_the_headline_bombs_name_the_guard() -> None:
    for blob in (png_claiming(100_000, 100_000), gif_claiming(65535, 65535)):
        with pytest.raises(ImageError, match="decompression.bomb|above the limit"):
            load_image(blob)
