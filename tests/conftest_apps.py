"""Helpers for the app tests: small but complete bundles, images of every awkward kind, and a
served app. Imported explicitly by tests/test_apps_*.py and tests/test_spaces.py (this is not a
pytest conftest, so nothing here runs unless a test asks for it).

Two bundles:

- ``tiny_bundle``: a random 2-block DINOv2 (width 32) saved locally + a random TopK SAE; builds in
  about a second, no head. Enough for every code path except the head panels.
- ``offline_bundle``: the real offline DINOv2-S (saliency fine-tune) at a given layer, with an SAE
  whose normalisation and decoder bias come from real activations, exemplars over a few packaged
  photos and their thumbnails; the bundle has the saliency head. Tens of seconds; cached per
  session under the pytest temp dir.
"""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ bundles
def _photo_items(n: int) -> list[tuple[str, Image.Image]]:
    """Up to n real packaged photos (scikit-image), as (id, image)."""
    from saescope.train.sources import open_source

    src = open_source("builtin:photos?views=2")
    return [(src.image_id(i), src.load(i)) for i in range(min(n, len(src)))]


def build_bundle(folder: Path, model_id: str, layer: int, *, items: list[tuple[str, Image.Image]],
                 expansion: int = 8, k: int = 8, title: str | None = None, seed: int = 0,
                 exemplar_k: int = 8, train_steps: int = 0) -> Path:
    """A complete bundle (sae + exemplars + thumbnails + manifest) for ``model_id`` at ``layer``.

    The SAE is random except for its normalisation and decoder bias (from real activations of
    ``items``), optionally refined by a few Adam steps, so features fire in structured places.
    """
    from saescope.core.backbones import load_backbone
    from saescope.core.bundle import pack_thumbnails, write_manifest
    from saescope.core.sae import SAE, SAEConfig
    from saescope.core.sae_io import save_sae
    from saescope.train.exemplars import build_exemplars_from_images
    from saescope.train.sources import ListSource

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bb = load_backbone(model_id)
    L = bb.resolve_layer(layer)
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=bb.d_model, d_sae=bb.d_model * expansion, architecture="topk", k=k,
                        model_id=bb.model_id, layer=L, layer_requested=layer), seed=seed)
    with torch.inference_mode():
        px = bb.preprocess([im for _, im in items])
        out = bb.forward_layers(px, [L])
        x = out.layout.select(out.tokens[L], "patch").reshape(-1, bb.d_model).float()
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
    sae.eval()
    save_sae(sae, folder / "sae")
    source = ListSource(items, spec="memory:test-images")
    ex = build_exemplars_from_images(sae, bb, source, k=exemplar_k, progress=False)
    ex.save(folder / "exemplars")
    used = sorted(ex.images)
    pack_thumbnails(folder, [(i, items[i][0], items[i][1]) for i in used], size=160,
                    source_spec=source.spec)
    info = {"name": folder.name,
            "title": title or f"{bb.describe().get('display_name', model_id)} — layer {L}",
            "model": {"model_id": bb.model_id, "layer": L,
                      "display_name": bb.describe().get("display_name")},
            "components": {"sae": "sae", "exemplars": "exemplars"}}
    write_manifest(folder, info)
    return folder


def save_tiny_dinov2(folder: Path, layers: int = 2, width: int = 32, seed: int = 0) -> str:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                             intermediate_size=width * 2, image_size=224,
                             patch_size=14)).save_pretrained(folder)
    return str(folder)


def synthetic_items(n: int = 12, size: int = 96, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Coloured shapes on noise: cheap images with some structure."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        c = rng.integers(80, 255, 3)
        r0, c0 = rng.integers(0, size // 2, 2)
        a[r0:r0 + size // 3, c0:c0 + size // 3] = c
        out.append((f"synthetic/{i:02d}", Image.fromarray(a)))
    return out


def tiny_bundle(root: Path, name: str = "tiny", layer: int = 0, seed: int = 0) -> Path:
    model = save_tiny_dinov2(root / f"{name}-model", seed=seed)
    return build_bundle(root / name, model, layer, items=synthetic_items(seed=seed), expansion=4,
                        k=4, title=f"Tiny random DINOv2 — layer {layer}", seed=seed)


def offline_bundle(root: Path, layer: int = -2, n_images: int = 24, name: str | None = None,
                   train_steps: int = 60) -> Path:
    from saescope.core.backbones import load_backbone

    bb = load_backbone("offline")
    L = bb.resolve_layer(layer)
    return build_bundle(root / (name or f"offline-l{L}"), "offline:dinov2-s-saliency", layer,
                        items=_photo_items(n_images), expansion=4, k=16, exemplar_k=8,
                        train_steps=train_steps,
                        title=f"DINOv2-S (saliency fine-tune) — layer {L}")


# ------------------------------------------------------------------------------ awkward images
def image_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def awkward_files(folder: Path) -> dict[str, Path]:
    """Files an upload box will meet: good ones in odd modes, and bad ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (120, 160, 3), np.uint8))
    files: dict[str, bytes] = {
        "rgb.png": image_bytes(rgb, "PNG"),
        "grey.png": image_bytes(rgb.convert("L"), "PNG"),
        "rgba.png": image_bytes(rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": image_bytes(rgb.convert("CMYK"), "JPEG"),
        "sixteen.png": image_bytes(Image.fromarray((rng.integers(0, 65535, (64, 64))).astype(np.uint16)), "PNG"),
        "palette.gif": image_bytes(rgb.convert("P"), "GIF"),
        "tiny.png": image_bytes(rgb.resize((4, 4)), "PNG"),
        "not_an_image.png": b"this is not an image, just text with a .png name\n" * 5,
        "empty.jpg": b"",
    }
    good = image_bytes(rgb, "JPEG")
    files["truncated.jpg"] = good[: len(good) // 3]
    corrupt = bytearray(image_bytes(rgb, "PNG"))
    corrupt[60:200] = bytes(140)
    files["corrupt.png"] = bytes(corrupt)
    # a decompression bomb: a small PNG file that claims 20000 x 20000 pixels
    files["bomb.png"] = image_bytes(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    # huge but below PIL's own bomb limit: the apps' pixel cap (40 Mpx) must refuse it
    files["huge.png"] = image_bytes(Image.new("1", (8000, 6000)), "PNG", optimize=True)
    out = {}
    for name, data in files.items():
        p = folder / name
        p.write_bytes(data)
        out[name] = p
    return out


GOOD = ["rgb.png", "grey.png", "rgba.png", "cmyk.jpg", "sixteen.png", "palette.gif"]
BAD = {"tiny.png": "too small", "not_an_image.png": "not an image", "empty.jpg": "empty",
       "truncated.jpg": "truncated", "corrupt.png": "corrupt", "bomb.png": "bomb",
       "huge.png": "above the limit"}


# ------------------------------------------------------------------------------ serving
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """An app launched in this process on a free localhost port (closed by ``close``)."""

    def __init__(self, demo, port: int | None = None):
        from saescope.apps.common import launch

        self.demo = demo
        self.port = port or free_port()
        _, self.url = launch(demo, "127.0.0.1", self.port, prevent_thread_lock=True, quiet=True)
        self.url = self.url.rstrip("/")

    def close(self) -> None:
        self.demo.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
