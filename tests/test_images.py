"""core.images: every input becomes RGB or a clear ImageError, never anything else."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from saescope.core.images import (
    TINY_IMAGE_PX,
    ImageError,
    array_to_image,
    load_image,
    tiny_image_note,
)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width x height`` and a tiny IDAT: no allocation."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _gradient(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None]
    return Image.fromarray(
        np.concatenate(
            [
                np.broadcast_to(x, (h, w, 1)),
                np.broadcast_to(y, (h, w, 1)),
                np.full((h, w, 1), 77, np.uint8),
            ],
            axis=2,
        ),
        "RGB",
    )


# -- modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "CMYK",
        "YCbCr",
        "I;16",
        "I;16B",
        "I",
        "F",
        "HSV",
    ],
)
def test_every_mode_becomes_rgb(mode):
    image = load_image(Image.new(mode, (13, 11)))
    assert image.mode == "RGB" and image.size == (13, 11)


def test_alpha_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (10, 10), (0, 0, 0, 128))
    r, g, b = load_image(half).getpixel((0, 0))
    assert r == g == b and 120 <= r <= 135


def test_palette_with_transparency_from_png():
    p = Image.new("P", (10, 10), 0)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.putpixel((5, 5), 1)
    buf = io.BytesIO()
    p.save(buf, format="PNG", transparency=0)
    out = load_image(buf.getvalue())
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent index -> white
    assert out.getpixel((5, 5)) == (200, 10, 10)


def test_16bit_png_rescaled():
    arr = np.array([[0, 257 * 100, 65535] * 4] * 9, dtype=np.uint16)
    png = _png_bytes(Image.fromarray(arr))
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    out = np.asarray(load_image(png))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [100] * 3
    assert out[0, 2].tolist() == [255] * 3


def test_dark_16bit_image_is_not_taken_for_8bit():
    arr = np.full((9, 9), 200, np.uint16)
    out = np.asarray(load_image(Image.fromarray(arr)))
    assert out[0, 0, 0] == 1  # 200 / 257, not 200


def test_float_tiff_in_unit_range():
    arr = np.full((10, 10), 0.5, np.float32)
    buf = io.BytesIO()
    Image.fromarray(arr, "F").save(buf, format="TIFF")
    out = np.asarray(load_image(buf.getvalue()))
    assert out[0, 0].tolist() == [128] * 3


def test_cmyk_jpeg():
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, format="JPEG")
    r, g, b = load_image(buf.getvalue()).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_applied():
    image = _gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(buf.getvalue())).size == (40, 20)
    assert load_image(buf.getvalue()).size == (20, 40)


def test_path_and_file_object(tmp_path):
    path = tmp_path / "a.png"
    _gradient().save(path)
    assert load_image(path).size == (40, 30)
    assert load_image(str(path)).size == (40, 30)
    with open(path, "rb") as fh:
        assert load_image(fh).size == (40, 30)


# -- failures ------------------------------------------------------------------------------


def test_corrupt_bytes():
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"this is certainly not a picture" * 10)


def test_corrupt_png_data(tmp_path):
    data = bytearray(_png_bytes(_gradient(64, 64)))
    idat = data.index(b"IDAT")
    for i in range(idat + 8, idat + 40):
        data[i] ^= 0xFF
    with pytest.raises(ImageError, match="corrupt|truncated"):
        load_image(bytes(data), name="broken.png")


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(path)
    assert "cut.jpg" in str(info.value)


def test_empty_inputs(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(b"")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))


def test_tiny_images_are_used_with_a_note():
    """One policy for extraction and the apps (issue 14): any decodable image down to 1x1 is
    used; below TINY_IMAGE_PX on a side it gets a note, not a refusal."""
    for size in [(1, 1), (3, 3), (7, 100), (1, 40)]:
        out = load_image(_png_bytes(Image.new("L", size, 200)))
        assert out.mode == "RGB" and out.size == size
        assert out.getpixel((0, 0)) == (200, 200, 200)
        w, h = size
        assert tiny_image_note(out) == (
            f"this image is only {w}x{h} px; it carries little information "
            "(it is enlarged to the model's input size)"
        )
    assert tiny_image_note(Image.new("RGB", (TINY_IMAGE_PX, 500))) is None
    assert tiny_image_note((TINY_IMAGE_PX - 1, 500)) is not None
    # a caller may still ask for a minimum side
    with pytest.raises(ImageError, match="too small"):
        load_image(Image.new("RGB", (7, 100)), min_side=8)
    assert load_image(Image.new("RGB", (7, 100)), min_side=4).size == (7, 100)


def test_a_tiny_image_goes_through_preprocessing_like_any_other():
    from saescope.core.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Preprocess

    pre = Preprocess((56, 56), 64, IMAGENET_MEAN, IMAGENET_STD)
    for size in [(1, 1), (2, 9), (9, 2)]:
        pixels = pre([load_image(Image.new("RGB", size, (10, 200, 30)))])
        assert pixels.shape == (1, 3, 56, 56) and bool(pixels.isfinite().all())


def test_bomb_header_refused_without_allocating():
    # 100k x 100k = 10 Gpx: PIL's own guard (2x its limit) fires while reading the header
    with pytest.raises(ImageError, match="decompression-bomb|decompression bomb"):
        load_image(_png_header_only(100_000, 100_000))
    # 9000 x 8000 = 72 Mpx: below PIL's limit, above ours
    with pytest.raises(ImageError, match="above the limit"):
        load_image(_png_header_only(9000, 8000))
    # 10000 x 10000 = 100 Mpx: PIL would only *warn*; we refuse
    with pytest.raises(ImageError, match="bomb"):
        load_image(_png_header_only(10_000, 10_000))


def test_custom_cap_overrides_pil_global(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    png = _png_bytes(_gradient(40, 30))  # 1200 px: a "bomb" for PIL's patched global
    assert load_image(png, max_pixels=5000).size == (40, 30)
    with pytest.raises(ImageError, match="bomb"):
        load_image(png, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 500  # restored


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)


# -- properties ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=400))
def test_arbitrary_bytes_never_escape(data):
    try:
        out = load_image(data)
    except ImageError:
        return
    assert out.mode == "RGB"


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]),
    st.integers(1, 300),
)
def test_truncations_never_escape(seed, fmt, cut):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    try:
        out = load_image(data[: max(0, len(data) - cut)])
    except ImageError:
        return
    assert out.mode == "RGB" and out.size == (20, 24)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, bool]),
    st.sampled_from([0, 1, 3, 4]),
    st.integers(8, 30),
    st.integers(8, 30),
    st.integers(0, 2**31 - 1),
)
def test_arrays_become_rgb(dtype, channels, h, w, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 0 else (h, w, channels)
    if dtype is bool:
        arr = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.floating):
        arr = (rng.random(shape) * rng.choice([1.0, 255.0, 1e4, -3.0])).astype(dtype)
    else:
        arr = rng.integers(0, np.iinfo(dtype).max if dtype != np.int32 else 70000, shape).astype(
            dtype
        )
    out = load_image(arr)
    assert out.mode == "RGB" and out.size == (w, h)
    assert array_to_image(arr).size == (w, h)


# -- one size policy for extraction and the apps (issue 14) ---------------------------------


def test_extract_keeps_tiny_images(tmp_path, make_tiny_model):
    """``extract`` used to skip images below 8 px: now 1x1 to 15x15 are extracted like any
    other (and an undecodable file is still skipped and listed)."""
    from saescope.core.backbones import load_backbone
    from saescope.core.store import ActivationStore
    from saescope.train.extract import extract

    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(1, 1), (2, 9), (9, 2), (5, 5), (15, 15), (200, 1), (40, 30)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i * 30, 100, 200)).save(folder / f"img_{i}.png")
    (folder / "img_9.png").write_bytes(b"not a picture")
    backbone = load_backbone(str(make_tiny_model(tmp_path / "model", crop=28)))
    (path,) = extract(backbone, str(folder), tmp_path / "store", layers=[0], progress=False)
    store = ActivationStore(path)
    assert store.n_images == len(sizes)
    assert [s["id"] for s in store.manifest["skipped"]] == ["img_9.png"]


def test_apps_accept_a_tiny_upload_and_note_it(tmp_path, capsys):
    from saescope.apps.uploads import read_upload, try_upload

    path = tmp_path / "dot.png"
    Image.new("RGB", (3, 2), (255, 0, 0)).save(path)
    assert read_upload(str(path)).size == (3, 2)
    image, problem = try_upload(str(path))
    assert problem is None and image.size == (3, 2) and image.getpixel((0, 0)) == (255, 0, 0)
    # outside a gradio event the note is printed; inside one it is an info toast
    assert "only 3x2 px; it carries little information" in capsys.readouterr().out
    Image.new("RGB", (64, 64)).save(path)
    try_upload(str(path))
    assert "little information" not in capsys.readouterr().out


def test_only_raster_decoders_run():
    """A PostScript file (which PIL would hand to Ghostscript) is refused as not an image."""
    from saescope.core.images import RASTER_FORMATS

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not an image, or an unsupported image format"):
        load_image(eps)
    assert "EPS" not in RASTER_FORMATS
