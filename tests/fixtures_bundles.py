"""Fixtures that build bundles: synthetic images, a bundle builder, the tiny and offline bundles,
a bundle with probes, and a local stand-in for the Hub to push them to. Split out of
``tests/conftest.py`` (which registers this module in ``pytest_plugins``); tests take these as
arguments and never import this module."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SCENES = "builtin:digit-scenes?n=300"
DIGITS = "builtin:digits?size=112&resample=nearest"


# ------------------------------------------------------------------------------ Hub
class LocalHub:
    """A Hub-like upload target on local disk, for push tests (the real Hub is unreachable here).

    It implements the ``HfApi`` calls that ``push_to_hub``/``push_bundle`` make (with the same
    keyword arguments), storing files where the Hub would store the repo, so that what was
    "pushed" can be loaded back. ``fail_after=N`` raises ``ConnectionError`` on the (N+1)-th
    commit, as a dropped connection would; ``commits`` lists each commit's message and files.
    """

    def __init__(self, root: Path, fail_after: int | None = None):
        self.root = root
        self.fail_after = fail_after
        self.commits: list[tuple[str, list[str]]] = []

    def _commit(self, message: str, files: list[str]) -> None:
        if self.fail_after is not None and len(self.commits) >= self.fail_after:
            raise ConnectionError("connection dropped (LocalHub fail_after)")
        self.commits.append((message, files))

    def create_repo(self, repo_id: str, private: bool, exist_ok: bool, repo_type: str) -> None:
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def file_exists(self, repo_id: str, filename: str, repo_type=None, revision=None) -> bool:
        return (self.root / repo_id / filename).is_file()

    def delete_file(
        self,
        path_in_repo: str,
        repo_id: str,
        repo_type=None,
        revision=None,
        commit_message: str = "",
    ) -> None:
        self._commit(commit_message, [f"-{path_in_repo}"])
        (self.root / repo_id / path_in_repo).unlink()

    def upload_file(
        self,
        path_or_fileobj,
        path_in_repo: str,
        repo_id: str,
        repo_type=None,
        revision=None,
        commit_message: str = "",
    ) -> None:
        self._commit(commit_message, [path_in_repo])
        dest = self.root / repo_id / path_in_repo
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path_or_fileobj, dest)

    def upload_folder(
        self,
        repo_id: str,
        folder_path: str,
        path_in_repo,
        commit_message: str,
        repo_type: str,
        revision=None,
        allow_patterns=None,
        ignore_patterns=None,
    ) -> None:
        import fnmatch

        src = Path(folder_path)
        rels = [p.relative_to(src).as_posix() for p in sorted(src.rglob("*")) if p.is_file()]
        pick = [
            r
            for r in rels
            if (allow_patterns is None or any(fnmatch.fnmatch(r, a) for a in allow_patterns))
            and not any(
                fnmatch.fnmatch(r, i) or fnmatch.fnmatch(Path(r).name, i)
                for i in ignore_patterns or []
            )
        ]
        self._commit(commit_message, pick)
        for r in pick:
            dest = self.root / repo_id / (path_in_repo or "") / r
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / r, dest)


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


@pytest.fixture(scope="session")
def app_bundle(offline_bundle, tmp_path_factory) -> Callable[[int], Path]:
    """``app_bundle(layer)`` -> one labelled offline bundle per layer per test session (16
    packaged photos), shared by every browser test module, so a run builds each once."""

    def at(layer: int) -> Path:
        from saescope.train.feature_labels import label_bundle

        root = tmp_path_factory.getbasetemp() / "apps-offline-bundles"
        root.mkdir(exist_ok=True)
        path = root / f"offline-l{layer}"
        if not (path / "bundle.json").is_file() or not (path / "labels").is_dir():
            shutil.rmtree(path, ignore_errors=True)
            offline_bundle(root, layer=layer, n_images=16, name=path.name, train_steps=40)
            label_bundle(path, progress=False)
        return path

    return at


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
