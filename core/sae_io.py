"""Saving, loading, publishing and importing SAEs, without ever unpickling arbitrary objects.

Native format, one folder (= one Hub repo or a sub-folder of one):

- ``config.json``: :class:`~saescope.core.sae.SAEConfig` (architecture, sizes, hyper-parameters,
  model id and revision, layer, token kinds, metrics, library and format version);
- ``sae.safetensors``: ``W_enc, b_enc, W_dec, b_dec, norm_mean, norm_scale, threshold``
  (+ ``log_threshold`` for JumpReLU). Normalisation constants travel with the weights.

Imports: the published checkpoints of "Interpretable and Testable Vision Features" (saev: a JSON
header line, then a torch state dict read with ``weights_only=True``) and SAELens-style folders
(``cfg.json`` + ``sae_weights.safetensors``). Which foreign architecture names map to which of
ours is declared by each architecture class (``saev_activation``, ``saelens_names``) and read from
the registry here.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saescope.core import formats
from saescope.core.fileio import atomic_path, atomic_write_text
from saescope.core.sae import SAE, SAEConfig, ShapeMismatch, architectures, get_architecture

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "sae.safetensors"
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit what it claims to be."""


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


def _sae_from_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor], source: str) -> SAE:
    sae = SAE(cfg, seed=None)
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, the config "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {shape}"
            )
    sae.load_state_dict({k: tensors[k].float() for k in expected}, strict=True)
    sae.eval()
    return sae


def load_sae_folder(folder: str | os.PathLike) -> SAE:
    """Load a native SAE folder; falls back to SAELens layout when that is what the folder has."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no SAE folder at {folder}")
    if not (folder / CONFIG_NAME).exists() and (folder / SAELENS_CONFIG).exists():
        return import_saelens(folder)
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.exists() or not w_path.exists():
        raise CheckpointError(
            f"{folder} is not an SAE folder: expected {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(or SAELens {SAELENS_CONFIG} + {SAELENS_WEIGHTS})"
        )
    try:
        cfg_dict = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from err
    if "d_in" not in cfg_dict or "d_sae" not in cfg_dict:
        raise CheckpointError(f"{cfg_path} is not an saescope SAE config (no d_in/d_sae)")
    cfg = SAEConfig.from_dict(cfg_dict)
    try:
        tensors = load_file(str(w_path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{w_path} is corrupt or truncated: {err}") from err
    return _sae_from_tensors(cfg, tensors, str(folder))


def from_pretrained(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    subfolder: str | None = None,
    token: str | None = None,
    expected_model: str | None = None,
    expected_layer: int | None = None,
    expected_d_in: int | None = None,
) -> SAE:
    """Load an SAE from a local folder, a saev ``.pt`` file, or a Hub repo (optionally a subfolder).

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
            f"could not fetch SAE {repo_id!r} from the Hugging Face Hub "
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


# ------------------------------------------------------------------------------ saev import
def read_saev_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Header dict and state dict of a saev checkpoint; tensors only (``weights_only=True``)."""
    path = Path(path)
    with open(path, "rb") as fd:
        first = fd.readline()
        body = fd.read()
    try:
        header = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path}: not a saev checkpoint (the first line must be a JSON config)"
        ) from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: saev header is not a JSON object")
    try:
        state = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except Exception as err:
        raise CheckpointError(
            f"{path}: the state dict after the header could not be read safely "
            f"(corrupt, truncated, or not plain tensors): {err}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the body is not a dict of tensors")
    return header, state


def _saev_architecture(header: dict) -> tuple[dict, str, int | None]:
    cfg = header.get("cfg", header)
    cls = str(header.get("cls", "Relu"))
    act = cfg.get("activation")
    k = cfg.get("top_k")
    if isinstance(act, dict):
        cls = str(act.get("cls", cls))
        k = act.get("params", {}).get("top_k", k)
    saev = [a for a in architectures() if a.saev_activation]
    by_name = {a.saev_activation.lower(): a.architecture for a in saev}
    arch = by_name.get(cls.lower().replace("activation", ""))
    if arch is None:
        supported = ", ".join(a.saev_activation for a in saev)
        raise CheckpointError(f"saev activation {cls!r} is not supported ({supported})")
    return cfg, arch, int(k) if k is not None else None


def import_saev(
    path: str | os.PathLike, normalization_sample: torch.Tensor | None = None, **provenance: Any
) -> SAE:
    """Import a saev checkpoint (config keys like ``d_vit``, ``exp_factor``).

    saev computes ``x @ W_enc + b_enc`` without subtracting ``b_dec``; our encoder subtracts it,
    so ``b_enc`` is shifted by ``b_dec @ W_enc`` to give identical codes. saev checkpoints carry
    no normalisation; pass ``normalization_sample`` (raw activations) to estimate and store the
    scale the SAE was trained with, or leave it at identity if the inputs were not normalised.
    """
    header, state = read_saev_checkpoint(path)
    cfg_d, arch, k = _saev_architecture(header)
    d_in = cfg_d.get("d_vit", cfg_d.get("d_model"))
    if d_in is None:
        raise CheckpointError(f"{path}: saev config has no d_vit/d_model")
    d_sae = cfg_d.get("d_sae") or int(d_in) * int(cfg_d.get("exp_factor", 0))
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if key not in state:
            raise CheckpointError(f"{path}: saev state dict lacks {key}")
    cfg = SAEConfig(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture=arch,
        k=k if get_architecture(arch).k_sparse else None,
        normalization="none" if normalization_sample is None else "standardize",
        hyperparameters={"imported_from": "saev", "saev_header": header},
        **provenance,
    )
    w_enc, w_dec = state["W_enc"].float(), state["W_dec"].float()
    b_enc, b_dec = state["b_enc"].float(), state["b_dec"].float()
    tensors = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_dec": b_dec,
        "b_enc": b_enc + b_dec @ w_enc,
        "norm_mean": torch.zeros(cfg.d_in),
        "norm_scale": torch.ones(()),
        "threshold": torch.zeros(()),
    }
    sae = _sae_from_tensors(cfg, tensors, str(path))
    if normalization_sample is not None:
        sae.set_normalization(normalization_sample)
    return sae


# ------------------------------------------------------------------------------ SAELens import
def _saelens_architecture(arch_name: str, activation: str) -> str | None:
    """Our architecture for an SAELens (architecture, activation) pair, from the registry.

    A rule naming the SAELens architecture wins over an activation-only rule, so e.g.
    ("standard", "topk") is TopK while ("batchtopk", "topk") is BatchTopK.
    """
    rules = [(a.architecture, name, act) for a in architectures() for name, act in a.saelens_names]
    for ours, name, act in rules:
        if name is not None and name == arch_name and act in (None, activation):
            return ours
    for ours, name, act in rules:
        if name is None and act == activation:
            return ours
    return None


def import_saelens(folder: str | os.PathLike) -> SAE:
    """Import an SAELens-style folder: ``cfg.json`` + ``sae_weights.safetensors``."""
    folder = Path(folder)
    cfg_path, w_path = folder / SAELENS_CONFIG, folder / SAELENS_WEIGHTS
    if not cfg_path.exists() or not w_path.exists():
        raise CheckpointError(
            f"{folder}: SAELens folders need {SAELENS_CONFIG} and {SAELENS_WEIGHTS}"
        )
    cfg_d = json.loads(cfg_path.read_text())
    try:
        state = load_file(str(w_path))
    except Exception as err:
        raise CheckpointError(f"{w_path} is corrupt or truncated: {err}") from err
    arch_name = str(cfg_d.get("architecture", "standard")).lower()
    act = str(cfg_d.get("activation_fn_str", cfg_d.get("activation_fn", "relu"))).lower()
    k = cfg_d.get("k") or (cfg_d.get("activation_fn_kwargs") or {}).get("k")
    arch = _saelens_architecture(arch_name, act)
    if arch is None:
        raise CheckpointError(
            f"{folder}: SAELens architecture {arch_name!r}/{act!r} is not supported"
        )
    d_in, d_sae = int(cfg_d["d_in"]), int(cfg_d["d_sae"])
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=arch,
        k=int(k) if k else None,
        normalization="none",
        model_id=cfg_d.get("model_name"),
        hyperparameters={"imported_from": "saelens", "saelens_cfg": cfg_d},
    )
    if str(cfg_d.get("normalize_activations", "none")) not in ("none", "None", ""):
        raise CheckpointError(
            f"{folder}: SAELens normalize_activations={cfg_d['normalize_activations']!r} needs a "
            "dataset-specific scale that the folder does not store"
        )
    w_enc, w_dec = state["W_enc"].float(), state["W_dec"].float()
    b_enc, b_dec = state["b_enc"].float(), state["b_dec"].float()
    if not cfg_d.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ w_enc  # their encoder does not subtract b_dec; ours does
    tensors = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_enc": b_enc,
        "b_dec": b_dec,
        "norm_mean": torch.zeros(d_in),
        "norm_scale": torch.ones(()),
        "threshold": torch.zeros(()),
    }
    try:
        tensors.update(get_architecture(arch).saelens_extra_tensors(state))
    except ValueError as err:
        raise CheckpointError(f"{folder}: {err}") from err
    return _sae_from_tensors(cfg, tensors, str(folder))
