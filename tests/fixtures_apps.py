"""Fixtures of the app tests that need no browser: awkward upload files, serving an app on a free
localhost port, and loading a Space's ``app.py``. Split out of ``tests/conftest.py`` (which
registers this module in ``pytest_plugins``); tests take these as arguments and never import this
module."""

from __future__ import annotations

import importlib.util
import io
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ awkward images
def _image_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _awkward_files(folder: Path) -> dict[str, Path]:
    """Files an upload box will meet: good ones in odd modes, and bad ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (120, 160, 3), np.uint8))
    sixteen = Image.fromarray((rng.integers(0, 65535, (64, 64))).astype(np.uint16))
    files: dict[str, bytes] = {
        "rgb.png": _image_bytes(rgb, "PNG"),
        "grey.png": _image_bytes(rgb.convert("L"), "PNG"),
        "rgba.png": _image_bytes(rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": _image_bytes(rgb.convert("CMYK"), "JPEG"),
        "sixteen.png": _image_bytes(sixteen, "PNG"),
        "palette.gif": _image_bytes(rgb.convert("P"), "GIF"),
        "tiny.png": _image_bytes(rgb.resize((4, 4)), "PNG"),
        "not_an_image.png": b"this is not an image, just text with a .png name\n" * 5,
        "empty.jpg": b"",
    }
    good = _image_bytes(rgb, "JPEG")
    files["truncated.jpg"] = good[: len(good) // 3]
    corrupt = bytearray(_image_bytes(rgb, "PNG"))
    corrupt[60:200] = bytes(140)
    files["corrupt.png"] = bytes(corrupt)
    # a decompression bomb: a small PNG file that claims 20000 x 20000 pixels
    files["bomb.png"] = _image_bytes(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    # huge but below PIL's own bomb limit: the apps' pixel cap (40 Mpx) must refuse it
    files["huge.png"] = _image_bytes(Image.new("1", (8000, 6000)), "PNG", optimize=True)
    out = {}
    for name, data in files.items():
        p = folder / name
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.fixture(scope="session")
def awkward_files() -> Callable[[Path], dict[str, Path]]:
    """``awkward_files(folder)`` -> {name: path}: good images in odd modes (rgb.png, grey.png,
    rgba.png, cmyk.jpg, sixteen.png, palette.gif; tiny.png, 4x4, used with a note) and bad files
    (not_an_image.png, empty.jpg, truncated.jpg, corrupt.png, bomb.png, huge.png)."""
    return _awkward_files


# ------------------------------------------------------------------------------ serving
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """An app launched in this process on a free localhost port (closed by ``close``)."""

    def __init__(self, demo, port: int | None = None):
        from saescope.apps.launch import launch

        self.demo = demo
        self.port = port or _free_port()
        _, self.url = launch(demo, "127.0.0.1", self.port, prevent_thread_lock=True, quiet=True)
        self.url = self.url.rstrip("/")

    def close(self) -> None:
        self.demo.close()


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture(scope="session")
def serve() -> type[Served]:
    """``serve(demo, port=None)`` -> a :class:`Served` app (``.url``; the caller closes it)."""
    return Served


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()`` -> a localhost port nobody listens on."""
    return _free_port


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., bool]:
    """``wait_for(predicate, timeout=30, interval=0.1)`` -> whether it became true in time."""
    return _wait_for


# ------------------------------------------------------------------------------ Spaces
def _front_matter(readme: Path) -> dict[str, str]:
    text = readme.read_text()
    assert text.startswith("---\n"), f"{readme} must start with Space front matter"
    out = {}
    for line in text[4 : text.index("\n---", 4)].splitlines():
        m = re.match(r"^([A-Za-z_]+):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"')
    return out


@pytest.fixture(scope="session")
def front_matter() -> Callable[[Path], dict[str, str]]:
    """``front_matter(readme)`` -> the Space README's front matter as {key: value}."""
    return _front_matter


@pytest.fixture()
def load_space(monkeypatch) -> Callable[[str, dict[str, str]], Any]:
    """``load_space(space, env)`` -> the ``demo`` that ``spaces/<space>/app.py`` builds with
    ``env`` set (and warm-up off), executed the way a Space runs it."""

    def load(space: str, env: dict[str, str]):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("SAESCOPE_WARM_UP", "0")
        path = ROOT / "spaces" / space / "app.py"
        spec = importlib.util.spec_from_file_location(f"space_{space}_app", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.demo

    return load
