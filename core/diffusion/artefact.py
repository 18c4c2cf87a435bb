"""The diffusion-steering artefact on disk: SAE + feature statistics + names + manifest.

Why a checked manifest: an artefact is downloaded from the Hub and fed to an app; every file is
listed with its size and sha256, and a manifest of a newer saescope is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescope import __version__
from saescope.core import formats
from saescope.core.diffusion.pipeline import default_scorer
from saescope.core.fileio import atomic_write_json, sha256_file
from saescope.core.sae import SAE

FORMAT = formats.DIFFUSION_STEERING.name
FORMAT_VERSION = formats.DIFFUSION_STEERING.version
MANIFEST = "diffusion.json"
SAE_DIR = "sae"
STATS_FILE = "feature_stats.json"
NAMES_FILE = "feature_names.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Indented JSON written atomically (:func:`saescope.core.fileio.atomic_write_json`)."""
    atomic_write_json(path, obj, indent=2)


@dataclass
class Artefact:
    """A trained diffusion-steering folder: SAE + feature statistics + names + manifest."""

    path: Path
    manifest: dict
    sae: SAE
    stats: dict
    names: dict[int, dict] = field(default_factory=dict)

    @property
    def pipeline(self) -> str:
        return self.manifest["pipeline"]

    @property
    def scorer(self) -> str:
        return self.manifest.get("scorer") or default_scorer(self.pipeline)

    @property
    def tiny(self) -> bool:
        return bool(self.manifest.get("tiny"))

    def amount(self, feature: int, strength: float) -> float:
        """Code change for a strength (1 = the feature's max activation on the corpus)."""
        f = self.sae.check_feature(feature)
        return float(strength) * float(self.stats["max"][f])

    def label(self, feature: int) -> str:
        n = self.names.get(int(feature))
        return f"#{feature} · {n['name']}" if n else f"#{feature}"


def save_artefact(
    folder: str | os.PathLike,
    sae: SAE,
    stats: dict,
    manifest: dict,
    names: dict[int, dict] | None = None,
) -> Path:
    """Write the artefact folder; the manifest lists every file with its size and sha256."""
    from saescope.core.sae_io import save_sae

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_sae(sae, folder / SAE_DIR)
    write_json_atomic(folder / STATS_FILE, stats)
    if names is not None:
        write_json_atomic(folder / NAMES_FILE, {str(k): v for k, v in sorted(names.items())})
    files = {}
    for rel in [f"{SAE_DIR}/config.json", f"{SAE_DIR}/sae.safetensors", STATS_FILE] + (
        [NAMES_FILE] if (folder / NAMES_FILE).is_file() else []
    ):
        p = folder / rel
        files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {
        **manifest,
        **formats.DIFFUSION_STEERING.header(),
        "library_version": __version__,
        "files": files,
        "names": NAMES_FILE if NAMES_FILE in files else None,
    }
    write_json_atomic(folder / MANIFEST, manifest)
    return folder


def _local_artefact(spec: str, revision: str | None = None, token: str | None = None) -> Path:
    p = Path(spec)
    if p.is_dir():
        return p
    if p.exists():
        raise FileNotFoundError(f"{spec} is a file, not a diffusion-steering artefact folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(spec, revision=revision, token=token))
    except HFValidationError as err:
        raise FileNotFoundError(
            f"{spec!r} is neither a local folder nor a valid Hub repo id"
        ) from err
    except Exception as err:
        raise FileNotFoundError(
            f"could not fetch artefact {spec!r} from the Hugging Face Hub "
            f"(offline, or no such repo?): {type(err).__name__}"
        ) from err


def load_artefact(
    spec: str | os.PathLike,
    revision: str | None = None,
    token: str | None = None,
    verify: bool = True,
) -> Artefact:
    """Load an artefact from a local folder or a Hub repo id (checks the listed files)."""
    from saescope.core.sae_io import load_sae_folder

    folder = _local_artefact(str(spec), revision, token)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(
            f"{folder} is not a diffusion-steering artefact (no {MANIFEST}; "
            "make one with 'saescope diffusion-fit')"
        )
    manifest = json.loads(mpath.read_text())
    # manifests from before the version field are version 1
    formats.DIFFUSION_STEERING.check(manifest, mpath, default_version=FORMAT_VERSION)
    for rel, info in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: {rel} is missing (partial download?)")
        if verify and (p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]):
            raise ValueError(f"{folder}: {rel} does not match its checksum in {MANIFEST}")
    sae = load_sae_folder(folder / SAE_DIR)
    stats = json.loads((folder / STATS_FILE).read_text())
    names: dict[int, dict] = {}
    if manifest.get("names") and (folder / manifest["names"]).is_file():
        names = {int(k): v for k, v in json.loads((folder / manifest["names"]).read_text()).items()}
    if len(stats.get("max", [])) != sae.cfg.d_sae:
        raise ValueError(
            f"{folder}: {STATS_FILE} has {len(stats.get('max', []))} features, "
            f"the SAE has {sae.cfg.d_sae}"
        )
    return Artefact(folder, manifest, sae, stats, names)


def push_artefact(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    api: Any = None,
) -> str:
    """Upload an artefact folder as a Hub model repo; returns its URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    load_artefact(folder)  # refuse to publish something that does not load
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        path_in_repo=None,
        commit_message="Upload saescope diffusion-steering SAE",
        repo_type="model",
    )
    return f"https://huggingface.co/{repo_id}"


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "SAE_DIR",
    "STATS_FILE",
    "NAMES_FILE",
    "write_json_atomic",
    "Artefact",
    "save_artefact",
    "load_artefact",
    "push_artefact",
]
