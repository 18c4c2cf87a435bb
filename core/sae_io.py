"""Saving, loading and publishing SAEs, without ever unpickling arbitrary objects.

Native format, one folder (= one Hub repo or a sub-folder of one):

- ``config.json``: :class:`~saescope.core.sae.SAEConfig` (architecture, sizes, hyper-parameters,
  model id and revision, layer, token kinds, metrics, library and format version);
- ``sae.safetensors``: ``W_enc, b_enc, W_dec, b_dec, norm_mean, norm_scale, threshold``
  (+ ``log_threshold`` for JumpReLU). Normalisation constants travel with the weights.

``from_pretrained`` also reads other tools' checkpoints: saev ``.pt`` files, SAELens and sparsify
folders. The importers live in :mod:`saescope.core.sae_import` (re-exported here) and reproduce
each tool's own codes exactly, or refuse naming what they cannot reproduce.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from saescope.core import formats
from saescope.core.fileio import atomic_path, atomic_write_text
from saescope.core.hub_errors import hub_message
from saescope.core.sae import SAE, SAEConfig, ShapeMismatch
from saescope.core.sae_import import (  # noqa: F401  (_saelens_architecture: for tests)
    SAELENS_CONFIG,
    SAELENS_WEIGHTS,
    SPARSIFY_CONFIG,
    SPARSIFY_WEIGHTS,
    CheckpointError,
    _saelens_architecture,
    import_saelens,
    import_saev,
    import_sparsify,
    read_saev_checkpoint,
    sae_from_tensors,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "sae.safetensors"
FORMATS_TRIED = (
    f"saescope ({CONFIG_NAME} + {WEIGHTS_NAME}), SAELens ({SAELENS_CONFIG} + "
    f"{SAELENS_WEIGHTS}), sparsify ({SPARSIFY_CONFIG} + {SPARSIFY_WEIGHTS})"
)


# ------------------------------------------------------------------------------ native format
def save_sae(sae: SAE, folder: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``sae.safetensors`` into ``folder`` atomically (temp + rename).

    The config is serialised first, so a config that cannot be written leaves both files as
    they were; the weights are renamed into place before the config that describes them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    config_text = json.dumps(sae.cfg.to_dict(), indent=2, sort_keys=True)
    with atomic_path(folder / WEIGHTS_NAME) as tmp_w:
        save_file(
            tensors,
            str(tmp_w),
            metadata={"format": formats.SAE.name, "architecture": sae.cfg.architecture},
        )
    atomic_write_text(folder / CONFIG_NAME, config_text)
    return folder


# ------------------------------------------------------------------------------ folders
def folder_format(folder: Path) -> str | None:
    """'saescope', 'saelens' or 'sparsify' from the files in ``folder``; None if none fits."""

    def has(name: str) -> bool:
        return (folder / name).is_file()

    if has(CONFIG_NAME) and has(WEIGHTS_NAME):
        return "saescope"
    if has(SAELENS_CONFIG) and has(SAELENS_WEIGHTS):
        return "saelens"
    if has(SPARSIFY_CONFIG) and has(SPARSIFY_WEIGHTS):
        return "sparsify"
    return None


def unrecognised_folder(folder: Path) -> CheckpointError:
    """The error for a folder of no known format: sub-folders that are SAEs, or what was tried."""
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    subs = [p.name for p in entries if p.is_dir() and folder_format(p)]
    if subs:
        shown = ", ".join(subs[:8]) + (", ..." if len(subs) > 8 else "")
        return CheckpointError(
            f"{folder} holds one SAE per sub-folder ({shown}): give the sub-folder, e.g. "
            f"{folder / subs[0]} (or subfolder={subs[0]!r})"
        )
    held = ", ".join(p.name for p in entries[:8]) or "nothing"
    return CheckpointError(
        f"{folder} is not a recognised SAE folder: tried {FORMATS_TRIED}; it holds {held}"
    )


def import_folder(folder: str | os.PathLike) -> SAE:
    """Import an SAELens or sparsify folder, whichever it is (the error says what was tried)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no SAE folder at {folder}")
    fmt = folder_format(folder)
    if fmt == "saelens":
        return import_saelens(folder)
    if fmt == "sparsify":
        return import_sparsify(folder)
    if fmt == "saescope":
        raise CheckpointError(f"{folder} is already a saescope SAE folder: use it as it is")
    raise unrecognised_folder(folder)


def load_sae_folder(folder: str | os.PathLike) -> SAE:
    """Load a native SAE folder, or import an SAELens or sparsify one (told apart by files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no SAE folder at {folder}")
    fmt = folder_format(folder)
    if fmt in ("saelens", "sparsify"):
        return import_folder(folder)
    if fmt is None:
        raise unrecognised_folder(folder)
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    try:
        cfg_dict = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from err
    if not isinstance(cfg_dict, dict) or "d_in" not in cfg_dict or "d_sae" not in cfg_dict:
        raise CheckpointError(f"{cfg_path} is not an saescope SAE config (no d_in/d_sae)")
    try:
        cfg = SAEConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as err:  # wrong types or values, or a newer format
        raise CheckpointError(f"{cfg_path}: {err}") from None
    try:
        tensors = load_file(str(w_path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{w_path} is corrupt or truncated: {err}") from err
    return sae_from_tensors(cfg, tensors, str(folder))


def from_pretrained(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    subfolder: str | None = None,
    token: str | None = None,
    expected_model: str | None = None,
    expected_layer: int | None = None,
    expected_d_in: int | None = None,
) -> SAE:
    """Load an SAE from a folder (saescope, SAELens or sparsify), a saev ``.pt`` file, or a Hub
    repo (optionally a subfolder, e.g. one hookpoint of a sparsify run).

    The ``expected_*`` arguments guard against pairing an SAE with the wrong backbone: a mismatch
    raises :class:`~saescope.core.sae.ShapeMismatch` naming both sides.
    """
    path = Path(name_or_path)
    if subfolder and path.exists():
        path = path / subfolder
    if path.is_file():
        sae = import_saev(path)
    elif path.is_dir():
        sae = load_sae_folder(path)
    else:
        sae = _from_hub(str(name_or_path), revision, subfolder, token)
    check_compatible(sae, expected_model, expected_layer, expected_d_in)
    return sae


def _from_hub(repo_id: str, revision: str | None, subfolder: str | None, token: str | None) -> SAE:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = [f"{subfolder}/*" if subfolder else "*"]
    try:
        local = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=patterns)
    except HFValidationError as err:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local path nor a valid Hub repo id"
        ) from err
    except Exception as err:
        raise FileNotFoundError(
            hub_message(err, "SAE", repo_id, revision)
            or f"could not fetch SAE {repo_id!r} from the Hugging Face Hub "
            f"(offline, or no such repo/revision?): {err}"
        ) from err
    folder = Path(local) / subfolder if subfolder else Path(local)
    return load_sae_folder(folder)


def check_compatible(
    sae: SAE, model_id: str | None = None, layer: int | None = None, d_in: int | None = None
) -> None:
    """Raise a clear :class:`ShapeMismatch` if ``sae`` was not made for this model/layer/width."""
    cfg = sae.cfg
    if d_in is not None and d_in != cfg.d_in:
        raise ShapeMismatch(f"SAE expects width {cfg.d_in}, the backbone gives {d_in}")
    if model_id is not None and cfg.model_id is not None and model_id != cfg.model_id:
        raise ShapeMismatch(f"SAE was trained on {cfg.model_id!r}, not {model_id!r}")
    if layer is not None and cfg.layer is not None and layer != cfg.layer:
        raise ShapeMismatch(f"SAE was trained on layer {cfg.layer}, not layer {layer}")


def push_to_hub(
    sae: SAE,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    path_in_repo: str | None = None,
    api: Any = None,
) -> str:
    """Save ``sae`` to a temporary folder and upload it with huggingface_hub; return the URL."""
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_sae(sae, tmp)
        write_model_card(sae, Path(tmp) / "README.md")
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            path_in_repo=path_in_repo,
            commit_message=commit_message or f"Upload SAE {sae.cfg.name}",
            repo_type="model",
        )
    return f"https://huggingface.co/{repo_id}"


def write_model_card(sae: SAE, path: Path) -> None:
    cfg = sae.cfg
    metrics = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in sorted(cfg.metrics.items())
    )
    path.write_text(
        "---\nlibrary_name: saescope\ntags:\n- sparse-autoencoder\n- interpretability\n"
        "- vision\n---\n"
        f"# SAE {cfg.name}\n\nA {cfg.architecture} sparse autoencoder with {cfg.d_sae} latents "
        "over "
        f"layer {cfg.layer} ({cfg.token_kinds} tokens) of `{cfg.model_id}`.\n\n"
        "```python\nfrom saescope.core.sae_io import from_pretrained\n"
        "sae = from_pretrained(REPO_ID)\n"
        "codes = sae.encode(activations)  # raw activations: normalisation is built in\n```\n\n"
        f"| metric | value |\n|---|---|\n{metrics}\n"
    )


__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "SAELENS_CONFIG",
    "SAELENS_WEIGHTS",
    "SPARSIFY_CONFIG",
    "SPARSIFY_WEIGHTS",
    "FORMATS_TRIED",
    "CheckpointError",
    "folder_format",
    "unrecognised_folder",
    "save_sae",
    "load_sae_folder",
    "from_pretrained",
    "check_compatible",
    "push_to_hub",
    "write_model_card",
    "import_folder",
    "import_saev",
    "import_saelens",
    "import_sparsify",
    "read_saev_checkpoint",
]
