"""Importing other tools' SAE checkpoints so that our SAE computes exactly their codes.

Formats (``sae_io.from_pretrained`` and ``sae_io.import_folder`` tell them apart by their files):

- saev ``.pt`` files: a JSON config line, then a torch state dict, read with
  ``weights_only=True`` (never unpickling anything but tensors);
- SAELens folders: ``cfg.json`` + ``sae_weights.safetensors``, from ``save_inference_model``
  or from its trainer's ``save_model`` checkpoints (with ``activation_scaler.json`` and
  ``activation_whitening.safetensors`` beside them when the inputs were scaled or whitened);
- sparsify folders: ``cfg.json`` + ``sae.safetensors`` (one per hookpoint sub-folder of a run).

Why exact: each peer encodes as ``act((x - [b_dec]) @ W_enc + b_enc)`` plus its own twists
(input scaling or whitening, decoder-norm rescaling, b_dec subtracted or not). Every twist is
folded into ``W_enc, b_enc, W_dec, b_dec`` the way the peer itself folds it, so ``sae.encode(x)``
is the peer's codes and ``sae(x)`` its reconstruction; ``tests/test_sae_import_peers.py`` checks
that on checkpoints the peers wrote themselves (``bench/make_peer_fixtures.py``). What cannot be
folded (per-token normalisation, transcoders, skip connections, gated or abs-TopK codes) is
refused with one line naming the flag. Which SAELens/saev names map to which of our architectures
is declared by each architecture class (``saelens_names``, ``saev_activation``).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from saescope.core.sae import SAE, SAEConfig, architectures, get_architecture

SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SAELENS_SCALER, SAELENS_WHITENING = "activation_scaler.json", "activation_whitening.safetensors"
SPARSIFY_CONFIG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit what it claims to be."""


# ------------------------------------------------------------------------------ shared
def sae_from_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor], source: str) -> SAE:
    """Our SAE for ``cfg`` holding ``tensors``; a missing or mis-shaped tensor is named."""
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


def _core_tensors(
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    w_dec: torch.Tensor,
    b_dec: torch.Tensor,
    b_dec_subtracted: bool,
    threshold: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Our tensors for a peer computing ``act((x - [b_dec]) @ W_enc + b_enc) @ W_dec + b_dec``.

    Our encoder always subtracts ``b_dec``; for a peer that does not, ``b_enc`` absorbs it.
    """
    w_enc, b_enc, w_dec, b_dec = (t.double() for t in (w_enc, b_enc, w_dec, b_dec))
    if not b_dec_subtracted:
        b_enc = b_enc + b_dec @ w_enc
    return {
        "W_enc": w_enc.float(),
        "b_enc": b_enc.float(),
        "W_dec": w_dec.float(),
        "b_dec": b_dec.float(),
        "norm_mean": torch.zeros(w_enc.shape[0]),
        "norm_scale": torch.ones(()),
        "threshold": torch.tensor(float(threshold)),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is corrupt or truncated: {err}") from None


def _need(state: dict[str, torch.Tensor], keys: tuple[str, ...], source: Any) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{source}: the weights lack {', '.join(missing)}")


def _int_field(cfg: dict[str, Any], key: str, source: Any) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CheckpointError(f"{source}: config field {key} must be an integer, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------ saev
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_saev_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Header dict and state dict of a saev checkpoint; tensors only (``weights_only=True``).

    A body that is not plain tensors is refused as an unsafe file: nothing in it runs, and the
    message never suggests loading it another way.
    """
    path = Path(path)
    with open(path, "rb") as fd:
        first = fd.readline()
        body = fd.read()
    try:
        header = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path}: not a saev checkpoint (the first line must be a JSON config)"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: saev header is not a JSON object")
    try:
        state = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        found = _UNSAFE_GLOBAL.search(str(err))
        what = f" (it calls for {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} is not a safe checkpoint: its state dict holds more than plain tensors"
            f"{what}; it was refused without running any of it"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"{path}: the state dict after the header is corrupt or truncated "
            f"({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the body is not a dict of tensors")
    return header, state


def saev_subtracts_b_dec(header: dict[str, Any], source: Any = "saev checkpoint") -> bool:
    """Whether the saev that wrote ``header`` subtracted ``b_dec`` before its encoder.

    The paper-era saev, whose configs say ``d_vit`` (the published checkpoints; saev 0.1.0 on
    PyPI, ``saev/nn.py`` ``SparseAutoencoder.forward``: ``einsum(x - self.b_dec, W_enc) +
    b_enc``), does. Since the rename to ``d_model`` (OSU-NLP-Group/saev d4cc39a, Oct 2025;
    ``src/saev/nn/modeling.py`` ``encode`` at 3d73f1f: ``einsum(x, W_enc) + b_enc``) it does
    not. saev's own commits 654befb..70cd3b4 (Sep 2025) wrote ``d_vit`` headers without
    subtracting; for those pass ``subtract_b_dec=False`` to :func:`import_saev`.
    """
    cfg = header.get("cfg", header)
    if "d_vit" in cfg:
        return True
    if "d_model" in cfg:
        return False
    raise CheckpointError(f"{source}: saev config has no d_vit/d_model")


def _saev_architecture(
    header: dict, state: dict[str, torch.Tensor], source: Any
) -> tuple[dict, str, int | None, float]:
    """(config, our architecture, k, inference threshold) of a saev checkpoint.

    saev's BatchTopK keeps ``x > threshold`` at inference (plain ReLU while the threshold is
    still 0); checkpoints from before saev learned that threshold have no per-token rule, so
    they are read as per-token TopK, with a warning.
    """
    cfg = header.get("cfg", header)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: saev header field cfg is not a JSON object")
    cls = str(header.get("cls", "Relu"))
    act, k = cfg.get("activation"), cfg.get("top_k")
    if isinstance(act, dict):
        cls = str(act.get("cls", cls))
        k = (act.get("params") or {}).get("top_k", k)
    saev = [a for a in architectures() if a.saev_activation]
    by_name = {a.saev_activation.lower(): a.architecture for a in saev}
    arch = by_name.get(cls.lower().replace("activation", ""))
    if arch is None:
        supported = ", ".join(a.saev_activation for a in saev)
        raise CheckpointError(f"{source}: saev activation {cls!r} is not supported ({supported})")
    threshold = 0.0
    if arch == "batchtopk":
        if "activation.threshold" not in state:
            warnings.warn(
                f"{source}: saev BatchTopK without an inference threshold; read as per-token TopK",
                stacklevel=3,
            )
            arch = "topk"
        else:
            threshold = float(state["activation.threshold"])
            arch = "batchtopk" if threshold > 0 else "relu"
    return cfg, arch, int(k) if k is not None else None, threshold


def import_saev(
    path: str | os.PathLike,
    normalization_sample: torch.Tensor | None = None,
    *,
    subtract_b_dec: bool | None = None,
    **provenance: Any,
) -> SAE:
    """Import a saev checkpoint, paper-era (``d_vit``, ``exp_factor``) or current (``d_model``).

    Whether saev subtracted ``b_dec`` before the encoder is read from the header
    (:func:`saev_subtracts_b_dec`); ``subtract_b_dec`` overrides it. saev's TopK keeps the k
    largest pre-activations without a ReLU, ours applies one: codes agree wherever the k-th
    largest pre-activation is positive (always, for a trained SAE). saev checkpoints carry no
    normalisation; pass ``normalization_sample`` (raw activations) to estimate and store the
    scale the SAE was trained with, or leave it at identity if the inputs were not normalised.
    """
    header, state = read_saev_checkpoint(path)
    cfg_d, arch, k, threshold = _saev_architecture(header, state, path)
    d_in = cfg_d.get("d_vit", cfg_d.get("d_model"))
    if d_in is None:
        raise CheckpointError(f"{path}: saev config has no d_vit/d_model")
    d_sae = cfg_d.get("d_sae") or int(d_in) * int(cfg_d.get("exp_factor", 0))
    _need(state, ("W_enc", "b_enc", "W_dec", "b_dec"), path)
    subtract = saev_subtracts_b_dec(header, path) if subtract_b_dec is None else subtract_b_dec
    cfg = SAEConfig(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture=arch,
        k=k if get_architecture(arch).k_sparse else None,
        normalization="none" if normalization_sample is None else "standardize",
        hyperparameters={
            "imported_from": "saev",
            "saev_header": header,
            "saev_subtracts_b_dec": subtract,
        },
        **provenance,
    )
    tensors = _core_tensors(
        state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"], subtract, threshold
    )
    sae = sae_from_tensors(cfg, tensors, str(path))
    if normalization_sample is not None:
        sae.set_normalization(normalization_sample)
    return sae


# ------------------------------------------------------------------------------ SAELens
_SAELENS_RESCALING = ("topk", "batchtopk", "matryoshka_batchtopk")
_SAELENS_NORMS = ("none", "expected_average_only_in", "covariance_whitening")
_SAELENS_PER_TOKEN_NORMS = ("layer_norm", "constant_norm_rescale")


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


def _saelens_major(cfg: dict[str, Any]) -> int:
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    match = re.match(r"\s*(\d+)", str(version or ""))
    return int(match.group(1)) if match else 0


def saelens_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg.json`` with SAELens's own pre-6.0 defaults applied (its ``handle_pre_6_0_config``),
    so that folders of every SAELens version are read alike."""
    if _saelens_major(cfg) >= 6:
        return dict(cfg)
    renames = {"activation_fn_str": "activation_fn", "hook_point": "hook_name"}
    c = {renames.get(k, k): v for k, v in cfg.items()}
    c.setdefault("apply_b_dec_to_input", True)
    c.setdefault("activation_fn", "relu")
    c.setdefault("architecture", "standard")
    kwargs = c.get("activation_fn_kwargs")
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    if c["activation_fn"] == "topk" and kwargs.get("k") is not None:
        c["architecture"], c["k"] = "topk", kwargs["k"]
    norm = c.get("normalize_activations")
    if isinstance(norm, bool):
        c["normalize_activations"] = "expected_average_only_in" if norm else "none"
    elif norm is None:
        c["normalize_activations"] = "none"
    return c


def _saelens_refusals(c: dict[str, Any], state: dict[str, torch.Tensor], folder: Path) -> None:
    """Refuse, naming the flag, what our SAE cannot compute exactly."""
    arch = str(c.get("architecture", "standard"))
    names = {name for a in architectures() for name, _ in a.saelens_names if name}
    if arch not in names:
        raise CheckpointError(
            f"{folder}: SAELens architecture {arch!r} is not supported (supported: "
            f"{', '.join(sorted(names))})"
        )
    if c.get("d_out") not in (None, c.get("d_in")):
        raise CheckpointError(f"{folder}: SAELens transcoders (d_out != d_in) are not supported")
    act = str(c.get("activation_fn", "relu")).lower()
    if arch == "standard" and act != "relu":
        raise CheckpointError(f"{folder}: SAELens activation_fn={act!r} is not supported")
    scale = state.get("scaling_factor", state.get("finetuning_scaling_factor"))
    trivial = scale is not None and bool((scale == 1).all())  # SAELens drops an all-ones one
    if (scale is not None and not trivial) or (c.get("finetuning_scaling_factor") and not trivial):
        raise CheckpointError(
            f"{folder}: SAELens finetuning_scaling_factor (per-latent decoder scaling) is not "
            "supported"
        )
    norm = c.get("normalize_activations")
    if norm in _SAELENS_PER_TOKEN_NORMS:
        raise CheckpointError(
            f"{folder}: SAELens normalize_activations={norm!r} rescales each token by its own "
            "statistics, which saescope's SAE (one scale for all tokens) cannot reproduce"
        )
    if norm not in _SAELENS_NORMS:
        raise CheckpointError(f"{folder}: SAELens normalize_activations={norm!r} is unknown")


def _saelens_input_transform(
    c: dict[str, Any], folder: Path, norm_scaling_factor: float | None
) -> tuple[float | None, dict[str, torch.Tensor] | None]:
    """(scaling factor, whitening tensors) the SAE's inputs went through, from the files that
    SAELens's trainer writes beside the weights; refused when the folder lacks them."""
    norm = c.get("normalize_activations", "none")
    scaler = folder / SAELENS_SCALER
    if norm == "expected_average_only_in":
        factor = norm_scaling_factor
        if factor is None and scaler.is_file():
            factor = _read_json(scaler).get("scaling_factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise CheckpointError(
                f"{folder}: SAELens normalize_activations='expected_average_only_in' needs the "
                f"activation scaling factor, and the folder has no {SAELENS_SCALER} with one "
                "(pass norm_scaling_factor=...)"
            )
        return float(factor), None
    if norm == "covariance_whitening":
        path = folder / SAELENS_WHITENING
        if not path.is_file():
            raise CheckpointError(
                f"{folder}: SAELens normalize_activations='covariance_whitening' needs "
                f"{SAELENS_WHITENING} beside the weights"
            )
        whitening = _read_safetensors(path)
        _need(whitening, ("mean", "matrix", "inverse_matrix"), path)
        return None, whitening
    return None, None


def _fold_decoder_norm(t: dict[str, torch.Tensor]) -> None:
    """SAELens's ``fold_W_dec_norm`` / ``_fold_norm_topk``: unit decoder rows, same codes for a
    ``rescale_acts_by_decoder_norm`` SAE (whose codes are pre-activations x decoder norms)."""
    norms = t["W_dec"].norm(dim=-1).clamp(min=1e-8)
    t["W_dec"] = t["W_dec"] / norms[:, None]
    t["W_enc"] = t["W_enc"] * norms
    t["b_enc"] = t["b_enc"] * norms


def _saelens_fold(
    c: dict[str, Any],
    t: dict[str, torch.Tensor],
    factor: float | None,
    whitening: dict[str, torch.Tensor] | None,
) -> list[str]:
    """Fold input scaling/whitening and decoder-norm rescaling into ``t`` (float64), in the
    order SAELens's trainer and ``save_inference_model`` do; return what was folded."""
    rescale = bool(c.get("rescale_acts_by_decoder_norm")) and c["architecture"] in (
        _SAELENS_RESCALING
    )
    folded = []
    if whitening is not None:  # SAELens fold_activation_whitening (TopK: norms first)
        if rescale:
            _fold_decoder_norm(t)
            folded.append("rescale_acts_by_decoder_norm")
            rescale = False
        mean, m, m_inv = (whitening[k].double() for k in ("mean", "matrix", "inverse_matrix"))
        t["W_enc"] = m @ t["W_enc"]
        if not c.get("apply_b_dec_to_input", True):
            t["b_enc"] = t["b_enc"] - mean @ t["W_enc"]
        t["W_dec"] = t["W_dec"] @ m_inv
        t["b_dec"] = t["b_dec"] @ m_inv + mean
        folded.append("covariance_whitening")
    if factor is not None:  # SAELens fold_activation_norm_scaling_factor
        t["W_enc"] = t["W_enc"] * factor
        t["W_dec"] = t["W_dec"] / factor
        t["b_dec"] = t["b_dec"] / factor
        if rescale and "threshold" in t:  # BatchTopK's threshold is in rescaled units
            t["threshold"] = t["threshold"] / factor
        folded.append(f"expected_average_only_in (x{factor:g})")
    if rescale:
        _fold_decoder_norm(t)
        folded.append("rescale_acts_by_decoder_norm")
    return folded


def _saelens_target(c: dict[str, Any], t: dict[str, torch.Tensor], source: Path) -> dict:
    """Our architecture, k and extra config fields for SAELens's (folded) maths."""
    arch, d_sae = str(c["architecture"]), int(c["d_sae"])
    act = str(c.get("activation_fn", "relu")).lower()
    ours = _saelens_architecture(arch, act)
    if ours is None:
        raise CheckpointError(f"{source}: SAELens architecture {arch}/{act} is not supported")
    target: dict[str, Any] = {"architecture": ours, "k": None}
    if arch == "topk":
        target["k"] = _int_field(c, "k", source)
    if arch not in ("batchtopk", "matryoshka_batchtopk"):
        return target
    # what SAELens's save_inference_model makes of it: JumpReLU at the learned threshold (plain
    # ReLU while that is still 0); its k only matters in training
    threshold = t.get("threshold")
    if threshold is None or threshold.numel() != 1:
        raise CheckpointError(f"{source}: SAELens {arch} checkpoint lacks its topk_threshold")
    if float(threshold) <= 0:
        return {"architecture": "relu", "k": None}
    target["k"] = max(1, min(d_sae, round(float(c.get("k") or 1))))
    widths = c.get("matryoshka_widths")
    if ours == "matryoshka" and widths and list(widths) == sorted(set(widths)):
        target["matryoshka_prefixes"] = [int(w) for w in widths]
    else:
        target["architecture"] = "batchtopk"
    return target


def import_saelens(folder: str | os.PathLike, norm_scaling_factor: float | None = None) -> SAE:
    """Import an SAELens folder (``cfg.json`` + ``sae_weights.safetensors``).

    Every flag that changes SAELens's maths is honoured by folding it into the weights as
    SAELens itself does (``apply_b_dec_to_input``, ``rescale_acts_by_decoder_norm``,
    ``normalize_activations`` 'expected_average_only_in' and 'covariance_whitening', a
    JumpReLU ``threshold`` or ``log_threshold``, BatchTopK's learned threshold) or refused
    naming it. ``norm_scaling_factor`` supplies the scale of 'expected_average_only_in' when
    the folder has no ``activation_scaler.json`` (SAELens lists it per pretrained release).
    """
    folder = Path(folder)
    cfg_path, w_path = folder / SAELENS_CONFIG, folder / SAELENS_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{folder}: SAELens folders need {SAELENS_CONFIG} and {SAELENS_WEIGHTS}"
        )
    raw = _read_json(cfg_path)
    c = saelens_config(raw)
    state = _read_safetensors(w_path)
    _saelens_refusals(c, state, folder)
    d_in, d_sae = _int_field(c, "d_in", cfg_path), _int_field(c, "d_sae", cfg_path)
    factor, whitening = _saelens_input_transform(c, folder, norm_scaling_factor)
    if "log_threshold" in state and "threshold" not in state:  # older JumpReLU checkpoints
        state["threshold"] = state["log_threshold"].double().exp()
    if "topk_threshold" in state:
        state["threshold"] = state["topk_threshold"]
    _need(state, ("W_enc", "b_enc", "W_dec", "b_dec"), w_path)
    t = {k: v.double() for k, v in state.items() if k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if "threshold" in state:
        t["threshold"] = state["threshold"].double()
    folded = _saelens_fold(c, t, factor, whitening)
    target = _saelens_target(c, t, cfg_path)
    thr = t.get("threshold", torch.zeros(()))
    tensors = _core_tensors(
        t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], bool(c["apply_b_dec_to_input"]),
        float(thr) if thr.numel() == 1 else 0.0,
    )  # fmt: skip
    if target["architecture"] == "jumprelu":
        _need(t, ("threshold",), w_path)
        tensors["log_threshold"] = thr.expand(d_sae).clamp_min(1e-12).log().float()
    metadata = c.get("metadata") or {}
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        normalization="none",
        model_id=c.get("model_name") or metadata.get("model_name"),
        hyperparameters={"imported_from": "saelens", "saelens_cfg": raw, "folded": folded},
        **target,
    )
    return sae_from_tensors(cfg, tensors, str(folder))


# ------------------------------------------------------------------------------ sparsify
def import_sparsify(folder: str | os.PathLike) -> SAE:
    """Import a sparsify ``SparseCoder`` folder (``cfg.json`` + ``sae.safetensors``).

    sparsify encodes ``topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))`` and decodes
    ``codes @ W_dec + b_dec``: our TopK SAE exactly. Transcoders, skip connections and GroupMax
    codes have no counterpart in our SAE and are refused.
    """
    folder = Path(folder)
    cfg_path, w_path = folder / SPARSIFY_CONFIG, folder / SPARSIFY_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{folder}: sparsify folders need {SPARSIFY_CONFIG} and {SPARSIFY_WEIGHTS}"
        )
    c = _read_json(cfg_path)
    if c.get("transcode"):
        raise CheckpointError(
            f"{folder}: sparsify transcoders (transcode: true) are not supported: "
            "saescope's SAE reconstructs its own input"
        )
    state = _read_safetensors(w_path)
    if c.get("skip_connection") or "W_skip" in state:
        raise CheckpointError(
            f"{folder}: sparsify skip connections (skip_connection: true) are not supported"
        )
    if c.get("activation", "topk") != "topk":
        raise CheckpointError(
            f"{folder}: sparsify activation {c.get('activation')!r} is not supported (topk only)"
        )
    d_in = _int_field(c, "d_in", cfg_path)
    if c.get("num_latents"):
        d_sae = _int_field(c, "num_latents", cfg_path)
    else:  # sparsify's default: a multiple of the input width
        d_sae = d_in * _int_field(c, "expansion_factor", cfg_path)
    _need(state, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), w_path)
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture="topk",
        k=_int_field(c, "k", cfg_path),
        normalization="none",
        hyperparameters={"imported_from": "sparsify", "sparsify_cfg": c},
    )
    w = state["encoder.weight"]
    tensors = _core_tensors(w.T, state["encoder.bias"], state["W_dec"], state["b_dec"], True)
    return sae_from_tensors(cfg, tensors, str(folder))


__all__ = [
    "CheckpointError",
    "SAELENS_CONFIG",
    "SAELENS_WEIGHTS",
    "SPARSIFY_CONFIG",
    "SPARSIFY_WEIGHTS",
    "import_saelens",
    "import_saev",
    "import_sparsify",
    "read_saev_checkpoint",
    "sae_from_tensors",
    "saelens_config",
    "saev_subtracts_b_dec",
]
