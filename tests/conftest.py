"""Shared fixtures of the test suite. Tests take them as arguments; nothing here is imported.

Fixtures that build things return factories (a test calls ``tiny_bundle(root, "name")``), so a
test keeps choosing where and how much to build, while the code lives in one place. Session-scoped
factories can be used from fixtures of any scope.

Models and bundles:

- ``tiny_dinov2``: a random 3-block DINOv2 (width 32) saved and loaded as a saescope backbone.
- ``make_tiny_model``: a random DINOv2 folder (optionally with registers) with its preprocessor.
- ``tiny_bundle``: a random 2-block DINOv2 + random TopK SAE bundle; about a second, no head.
- ``offline_bundle``: the real offline DINOv2-S (saliency fine-tune) at one layer, with an SAE
  whose normalisation and decoder bias come from real activations and the saliency head; tens of
  seconds.
- ``tiny_probe_bundle``: ``tiny_bundle`` plus a segmentation and a classification probe, built
  once per session.

Apps and browsers: ``serve`` (an app on a free localhost port), ``awkward_files``, ``chromium``
(launch settings; skips when Debian's chromium is missing), ``browser_page``, ``page``, ``ui``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXTRACT_WORKER = Path(__file__).with_name("extract_worker.py")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
BROWSER_TIMEOUT = 120_000  # ms: a busy 2-core CI machine is slow, a real hang still fails
SCREENSHOTS = Path(os.environ.get("SAESCOPE_SCREENSHOTS") or ROOT / "runs" / "screenshots")
SCENES = "builtin:digit-scenes?n=300"
DIGITS = "builtin:digits?size=112&resample=nearest"


# ------------------------------------------------------------------------------ threads
@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread: on a busy 2-core machine OpenMP spinning made a
    tiny-pipeline generation 10-30x slower with two. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ tiny models
def _tiny_dinov2(
    folder: Path, seed: int = 0, layers: int = 3, width: int = 32, image_size: int = 56
):
    """Save a random ``Dinov2Model`` to ``folder`` and load it as a saescope backbone."""
    from transformers import Dinov2Config, Dinov2Model

    from saescope.core.backbones import load_backbone

    torch.manual_seed(seed)
    Dinov2Model(
        Dinov2Config(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * width,
            image_size=image_size,
            patch_size=14,
        )
    ).save_pretrained(folder)
    return load_backbone(str(folder))


@pytest.fixture(scope="session")
def tiny_dinov2() -> Callable[..., Any]:
    """``tiny_dinov2(folder, seed=0, layers=3, width=32, image_size=56)`` -> backbone. One
    definition, so that every test gets the same model for the same seed."""
    return _tiny_dinov2


def _make_tiny_model(path: Path, registers: int = 0, crop: int = 56, seed: int = 0) -> Path:
    """A random 3-block DINOv2 (optionally with registers) that sees ``crop`` px images."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    common = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    if registers:
        model = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        )
    else:
        model = Dinov2Model(Dinov2Config(**common))
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_resize": True,
                "size": {"shortest_edge": crop + 8},
                "do_center_crop": True,
                "crop_size": {"height": crop, "width": crop},
                "do_normalize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "resample": 3,
            }
        )
    )
    return path


@pytest.fixture(scope="session")
def make_tiny_model() -> Callable[..., Path]:
    """``make_tiny_model(path, registers=0, crop=56, seed=0)`` -> the model folder."""
    return _make_tiny_model


def _make_image_folder(path: Path, n: int, corrupt: tuple[int, ...] = (), seed: int = 0) -> Path:
    """``n`` small random PNG/JPEGs in two sub-folders; indices in ``corrupt`` hold garbage."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = path / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".png" if i % 3 else ".jpg"
        f = sub / f"img_{i:04d}{ext}"
        if i in corrupt:
            f.write_bytes(b"not an image at all" * 3)
            continue
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(f)
    return path


@pytest.fixture(scope="session")
def make_image_folder() -> Callable[..., Path]:
    """``make_image_folder(path, n, corrupt=(), seed=0)`` -> the folder."""
    return _make_image_folder


@pytest.fixture(scope="session")
def extract_worker() -> ModuleType:
    """The extraction script that the SIGKILL test runs as a process (``.PATH`` is its file),
    loaded by path so that the in-process reference run is the very same code."""
    spec = importlib.util.spec_from_file_location("saescope_tests_extract_worker", EXTRACT_WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = EXTRACT_WORKER
    return module


# ------------------------------------------------------------------------------ Hub
class LocalHub:
    """A Hub-like upload target on local disk, for push tests (the real Hub is unreachable here).

    It implements the two ``HfApi`` calls that ``push_to_hub``/``push_bundle`` make, copying the
    folder where the Hub would store the repo, so that what was "pushed" can be loaded back.
    """

    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id: str, private: bool, exist_ok: bool, repo_type: str) -> None:
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def upload_folder(
        self, repo_id: str, folder_path: str, path_in_repo, commit_message: str, repo_type: str
    ) -> None:
        shutil.copytree(folder_path, self.root / repo_id / (path_in_repo or ""), dirs_exist_ok=True)


@pytest.fixture(scope="session")
def local_hub() -> type[LocalHub]:
    """``local_hub(root)`` -> an ``api=`` object whose uploads land under ``root``."""
    return LocalHub


# ------------------------------------------------------------------------------ bundles
def _synthetic_items(n: int = 12, size: int = 96, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Coloured shapes on noise: cheap images with some structure."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        c = rng.integers(80, 255, 3)
        r0, c0 = rng.integers(0, size // 2, 2)
        a[r0 : r0 + size // 3, c0 : c0 + size // 3] = c
        out.append((f"synthetic/{i:02d}", Image.fromarray(a)))
    return out


def _photo_items(n: int) -> list[tuple[str, Image.Image]]:
    """Up to n real packaged photos (scikit-image), as (id, image)."""
    from saescope.core.sources import open_source

    src = open_source("builtin:photos?views=2")
    return [(src.image_id(i), src.load(i)) for i in range(min(n, len(src)))]


def _fit_sae(
    bb,
    layer: int,
    items: list[tuple[str, Image.Image]],
    *,
    expansion: int,
    k: int,
    seed: int,
    train_steps: int,
    layer_requested: int,
):
    """A random TopK SAE whose normalisation and decoder bias come from real activations of
    ``items``, optionally refined by a few Adam steps, so features fire in structured places."""
    from saescope.core.sae import SAE, SAEConfig

    torch.manual_seed(seed)
    sae = SAE(
        SAEConfig(
            d_in=bb.d_model,
            d_sae=bb.d_model * expansion,
            architecture="topk",
            k=k,
            model_id=bb.model_id,
            layer=layer,
            layer_requested=layer_requested,
        ),
        seed=seed,
    )
    with torch.inference_mode():
        px = bb.preprocess([im for _, im in items])
        out = bb.forward_layers(px, [layer])
        x = out.layout.select(out.tokens[layer], "patch").reshape(-1, bb.d_model).float()
    x = x.clone()
    sae.set_normalization(x)
    sae.init_decoder_bias(x)
    if train_steps:
        opt = torch.optim.Adam(sae.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(train_steps):
            batch = x[torch.randint(len(x), (min(1024, len(x)),), generator=g)]
            loss = sae.train_forward(batch).loss
            opt.zero_grad()
            loss.backward()
            sae.remove_parallel_grads()
            opt.step()
            sae.normalize_decoder()
    return sae.eval()


def _build_bundle(
    folder: Path,
    model_id: str,
    layer: int,
    *,
    items: list[tuple[str, Image.Image]],
    expansion: int = 8,
    k: int = 8,
    title: str | None = None,
    seed: int = 0,
    exemplar_k: int = 8,
    train_steps: int = 0,
) -> Path:
    """A complete bundle (sae + exemplars + thumbnails + manifest) for ``model_id`` at ``layer``."""
    from saescope.core.backbones import load_backbone
    from saescope.core.bundle import pack_thumbnails, write_manifest
    from saescope.core.sae_io import save_sae
    from saescope.core.sources import ListSource
    from saescope.train.exemplars import build_exemplars_from_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bb = load_backbone(model_id)
    L = bb.resolve_layer(layer)
    sae = _fit_sae(
        bb,
        L,
        items,
        expansion=expansion,
        k=k,
        seed=seed,
        train_steps=train_steps,
        layer_requested=layer,
    )
    save_sae(sae, folder / "sae")
    source = ListSource(items, spec="memory:test-images")
    ex = build_exemplars_from_images(sae, bb, source, k=exemplar_k, progress=False)
    ex.save(folder / "exemplars")
    used = sorted(ex.images)
    pack_thumbnails(
        folder, [(i, items[i][0], items[i][1]) for i in used], size=160, source_spec=source.spec
    )
    info = {
        "name": folder.name,
        "title": title or f"{bb.describe().get('display_name', model_id)} — layer {L}",
        "model": {
            "model_id": bb.model_id,
            "layer": L,
            "display_name": bb.describe().get("display_name"),
        },
        "components": {"sae": "sae", "exemplars": "exemplars"},
    }
    write_manifest(folder, info)
    return folder


def _save_tiny_dinov2(folder: Path, layers: int = 2, width: int = 32, seed: int = 0) -> str:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(
        Dinov2Config(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=width * 2,
            image_size=224,
            patch_size=14,
        )
    ).save_pretrained(folder)
    return str(folder)


def _tiny_bundle(root: Path, name: str = "tiny", layer: int = 0, seed: int = 0) -> Path:
    model = _save_tiny_dinov2(root / f"{name}-model", seed=seed)
    return _build_bundle(
        root / name,
        model,
        layer,
        items=_synthetic_items(seed=seed),
        expansion=4,
        k=4,
        title=f"Tiny random DINOv2 — layer {layer}",
        seed=seed,
    )


def _offline_bundle(
    root: Path, layer: int = -2, n_images: int = 24, name: str | None = None, train_steps: int = 60
) -> Path:
    from saescope.core.backbones import load_backbone

    L = load_backbone("offline").resolve_layer(layer)
    return _build_bundle(
        root / (name or f"offline-l{L}"),
        "offline:dinov2-s-saliency",
        layer,
        items=_photo_items(n_images),
        expansion=4,
        k=16,
        exemplar_k=8,
        train_steps=train_steps,
        title=f"DINOv2-S (saliency fine-tune) — layer {L}",
    )


@pytest.fixture(scope="session")
def synthetic_items() -> Callable[..., list[tuple[str, Image.Image]]]:
    """``synthetic_items(n=12, size=96, seed=0)`` -> [(id, image)]: coloured shapes on noise."""
    return _synthetic_items


@pytest.fixture(scope="session")
def build_test_bundle() -> Callable[..., Path]:
    """``build_test_bundle(folder, model_id, layer, *, items, expansion=8, k=8, title=None,
    seed=0, exemplar_k=8, train_steps=0)`` -> a complete bundle folder."""
    return _build_bundle


@pytest.fixture(scope="session")
def tiny_bundle() -> Callable[..., Path]:
    """``tiny_bundle(root, name="tiny", layer=0, seed=0)`` -> a random 2-block DINOv2 (width 32)
    bundle with a random TopK SAE; about a second, no head."""
    return _tiny_bundle


@pytest.fixture(scope="session")
def offline_bundle() -> Callable[..., Path]:
    """``offline_bundle(root, layer=-2, n_images=24, name=None, train_steps=60)`` -> a bundle of
    the real offline DINOv2-S with its saliency head (tens of seconds)."""
    return _offline_bundle


def _add_probes(bundle: Path, n_scenes: int = 40, n_digits: int = 60) -> Path:
    """Fit a ``digit-scenes`` segmentation and a ``digits`` classification probe on ``bundle``'s
    backbone through the real ``fit_probe`` and store them in it."""
    from saescope.core.bundle import Bundle
    from saescope.core.sources import open_segmentation_source, open_source
    from saescope.train.probes import add_probe_to_bundle, fit_probe

    backbone = Bundle.load(bundle, verify=False).backbone
    seg, _, _ = fit_probe(
        backbone,
        open_segmentation_source(SCENES, max_images=n_scenes),
        "segmentation",
        name="digit-scenes",
        progress=False,
    )
    add_probe_to_bundle(bundle, seg)
    cls, _, _ = fit_probe(
        backbone,
        open_source(DIGITS, max_images=n_digits),
        "classification",
        name="digits",
        progress=False,
    )
    add_probe_to_bundle(bundle, cls)
    return bundle


@pytest.fixture(scope="session")
def tiny_probe_bundle(tmp_path_factory) -> Path:
    """The tiny bundle with its two probes (seconds), built once per session and shared by the
    steering-app unit and Spaces tests. The real-browser tests use the offline default bundle
    instead: fitting probes on a fresh offline bundle costs minutes on 2 cores."""
    root = tmp_path_factory.mktemp("apps-steer-tiny")
    return _add_probes(_tiny_bundle(root, "tiny-probes"), n_scenes=24, n_digits=40)


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
    rgba.png, cmyk.jpg, sixteen.png, palette.gif) and bad files (tiny.png, not_an_image.png,
    empty.jpg, truncated.jpg, corrupt.png, bomb.png, huge.png)."""
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


# ------------------------------------------------------------------------------ browser
@pytest.fixture(scope="session")
def chromium() -> dict[str, Any]:
    """Keyword arguments for Playwright's ``launch_persistent_context`` on Debian's headless
    Chromium (a test tool's own browser download cannot work offline); skips when it is missing.
    Session-scoped, so the skip comes before any module fixture builds a bundle."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) "
            "to run the real-browser app tests"
        )
    return {"executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def browser_page(chromium):
    """One browser context per module (a private profile, removed afterwards)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, **chromium, viewport={"width": 1440, "height": 1000}
        )
        ctx.set_default_timeout(BROWSER_TIMEOUT)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser_page):
    """A fresh page; the test fails if the page raised a JavaScript error."""
    from playwright.sync_api import expect

    expect.set_options(timeout=BROWSER_TIMEOUT)  # assertions wait as long as actions (busy CI)
    pg = browser_page.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


class PageActions:
    """What the browser tests do to a page: drag and click on a patch grid, upload, read images,
    save a screenshot (PNG) under ``$SAESCOPE_SCREENSHOTS`` (default ``runs/screenshots``)."""

    def __init__(self, page, shots: Path = SCREENSHOTS):
        self.page = page
        self.shots = shots

    def srcs(self, selector: str) -> list[str]:
        return self.page.locator(selector).evaluate_all(
            "els => els.map(e => e.currentSrc || e.src)"
        )

    def image_bytes(self, selector: str) -> bytes:
        src = self.page.locator(selector).first.evaluate("e => e.currentSrc || e.src")
        return self.page.request.get(src).body()

    def drag(
        self, grid_selector: str, start: tuple[float, float], end: tuple[float, float]
    ) -> None:
        """Press at ``start`` and release at ``end`` (fractions of the grid's box)."""
        box = self.page.locator(grid_selector).bounding_box()
        x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
        x1, y1 = box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1]
        self.page.mouse.move(x0, y0)
        self.page.mouse.down()
        self.page.mouse.move(x1, y1, steps=12)
        self.page.mouse.up()

    def click_cell(self, grid_selector: str, frac: tuple[float, float]) -> None:
        box = self.page.locator(grid_selector).bounding_box()
        self.page.mouse.click(box["x"] + box["width"] * frac[0], box["y"] + box["height"] * frac[1])

    def upload(self, path: Path) -> None:
        self.page.locator("#upload input[type=file]").set_input_files(str(path))

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        return path


@pytest.fixture()
def ui(page) -> PageActions:
    """:class:`PageActions` on the test's ``page``."""
    return PageActions(page)
