"""Fixtures for tiny models and their inputs: random DINOv2 backbones and model folders, image
folders, the extraction worker and the thread setting. Split out of ``tests/conftest.py`` (which
registers this module in ``pytest_plugins``) so that each theme of fixtures stays a short module;
tests take these as arguments and never import this module."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

EXTRACT_WORKER = Path(__file__).with_name("extract_worker.py")


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


def _random_store_sae(store: Any, folder: Path, d_sae: int = 64, k: int = 6) -> Any:
    """An untrained TopK SAE on ``store``'s patch tokens, with its normalisation and decoder
    bias set from the store, saved to ``folder``; returns the SAE (eval mode)."""
    from saescope.core.sae import SAE, SAEConfig
    from saescope.core.sae_io import save_sae

    sae = SAE(
        SAEConfig(
            d_in=store.d_model,
            d_sae=d_sae,
            architecture="topk",
            k=k,
            model_id=store.model_id,
            layer=store.layer,
            token_kinds=["patch"],
        ),
        seed=0,
    )
    sae.set_normalization(store.sample(4000, kinds="patch"))
    sae.init_decoder_bias(store.sample(2000, kinds="patch"))
    save_sae(sae.eval(), folder)
    return sae


@pytest.fixture(scope="session")
def random_store_sae() -> Callable[..., Any]:
    """``random_store_sae(store, folder, d_sae=64, k=6)`` -> an untrained TopK SAE fitted to the
    store's statistics and saved to ``folder`` (for tests of steps that read any SAE)."""
    return _random_store_sae


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
