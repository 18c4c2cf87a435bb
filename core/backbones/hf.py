"""transformers vision towers (CLIP, DINOv2, DINOv2 with registers, ViT) behind :class:`Backbone`.

Each wrapper runs the *same* layer modules as the transformers model, block by block, so that
"layer L" is exactly ``hidden_states[L + 1]`` of ``model(..., output_hidden_states=True)`` and
``run_from`` can resume the model from any block (what steering needs).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from saescope.core.backbones.base import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Preprocess,
)

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("clip", "clip_vision_model", "dinov2", "dinov2_with_registers", "vit")


def _int_pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks, wherever this transformers version keeps it."""
    for path in ("encoder.layer", "encoder.layers", "layers", "layer"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


# -- preprocessing ---------------------------------------------------------------------------
def _size_pair(value: Any) -> tuple[int, int] | None:
    """``224``, ``[h, w]``, ``{"height", "width"}`` or ``{"shortest_edge"}`` -> (h, w)."""
    if value is None:
        return None
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
        return None
    return _int_pair(value)


def preprocess_from_dict(cfg: dict, default: Preprocess) -> Preprocess:
    """Build a :class:`Preprocess` from a ``preprocessor_config.json`` dict.

    A fixed ``{"height", "width"}`` resize (e.g. google/vit) is approximated by resizing the
    short side and centre-cropping, which keeps the aspect ratio instead of squashing; the two
    agree on square images.
    """
    size = cfg.get("size")
    if isinstance(size, dict) and "shortest_edge" in size:
        shortest: int | None = int(size["shortest_edge"])
        resized = (shortest, shortest)
    else:
        resized = _size_pair(size)
        shortest = min(resized) if resized else None
    if cfg.get("do_resize") is False:
        shortest = None
    crop = _size_pair(cfg.get("crop_size")) if cfg.get("do_center_crop", True) else None
    crop = crop or resized or default.crop_size
    if shortest is None and default.resize_shortest_edge and cfg.get("do_resize") is not False:
        shortest = min(crop)
    normalize = cfg.get("do_normalize", True)
    mean = tuple(float(x) for x in cfg.get("image_mean", default.mean)) if normalize else (0.0,) * 3
    std = tuple(float(x) for x in cfg.get("image_std", default.std)) if normalize else (1.0,) * 3
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    rescale = (
        float(cfg.get("rescale_factor", default.rescale)) if cfg.get("do_rescale", True) else 1.0
    )
    resample = cfg.get("resample", default.resample)
    return Preprocess(
        crop_size=crop,
        resize_shortest_edge=shortest,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        resample=int(resample) if resample is not None else Image.BICUBIC,
        rescale=rescale,
    )


def read_preprocessor_config(model_id: str, revision: str | None = None) -> dict | None:
    """The raw ``preprocessor_config.json`` of a local folder or Hub repo, or None if absent.

    Read as plain JSON (no image-processor class), so no torchvision-backed fast processor is
    ever instantiated.
    """
    local = Path(model_id)
    if local.is_dir():
        path = local / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model_id, "preprocessor_config.json", revision=revision)
    except Exception as err:  # missing file, offline without cache, gated repo ...
        log.info("no preprocessor_config.json for %s (%s); using family defaults", model_id, err)
        return None
    return json.loads(Path(path).read_text())


# -- backbones -------------------------------------------------------------------------------
class HFBackbone(Backbone):
    """Common part: holds the transformers model, its block list and its final norm."""

    family = "vit"
    family_label = "ViT"

    def __init__(
        self,
        model: torch.nn.Module,
        model_id: str,
        revision: str | None = None,
        preprocess: Preprocess | None = None,
        display_name: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.model_id = model_id
        self.revision = revision
        self.n_layers = int(self.config.num_hidden_layers)
        self.d_model = int(self.config.hidden_size)
        self.patch_size = _int_pair(self.config.patch_size)[0]
        self.n_registers = int(getattr(self.config, "num_register_tokens", 0) or 0)
        self.native_size = _int_pair(getattr(self.config, "image_size", 224))
        # a plain list, so the blocks are not registered twice in state_dict()
        self.blocks: list[torch.nn.Module] = list(_find_blocks(model))
        if len(self.blocks) != self.n_layers:
            raise ValueError(
                f"{model_id}: {len(self.blocks)} blocks but config says {self.n_layers}"
            )
        self.preprocess_source = (
            "preprocessor_config.json" if preprocess else f"defaults:{self.family}"
        )
        self.preprocess = preprocess or self.default_preprocess(self.config)
        self.display_name = display_name or f"{self.family_label} ({model_id})"

    @classmethod
    def default_preprocess(cls, config: Any) -> Preprocess:
        """Family defaults, used when the checkpoint has no preprocessor_config.json."""
        size = _int_pair(getattr(config, "image_size", 224))
        return Preprocess(size, min(size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        out = self.blocks[index](hidden, None)  # (hidden_states, attention_mask)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _needs_interpolation(self, pixel_values: torch.Tensor) -> bool:
        return tuple(pixel_values.shape[-2:]) != self.native_size

    def describe(self) -> dict:
        return {**super().describe(), "preprocess_source": self.preprocess_source}


class CLIPVisionBackbone(HFBackbone):
    """CLIP vision tower: ``pre_layrnorm`` belongs to the embedding, ``post_layernorm`` is final.

    transformers applies ``post_layernorm`` only to the pooled CLS token; here it is the final
    norm of every token, as open_clip's ``ln_post`` (so ``forward(x)[:, 0]`` is the pooled output).
    """

    family = "clip"
    family_label = "CLIP"

    @classmethod
    def default_preprocess(cls, config: Any) -> Preprocess:
        size = _int_pair(getattr(config, "image_size", 224))
        return Preprocess(size, min(size), CLIP_MEAN, CLIP_STD)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        h = m.embeddings(
            pixel_values, interpolate_pos_encoding=self._needs_interpolation(pixel_values)
        )
        return m.pre_layrnorm(h)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.post_layernorm(hidden)


class Dinov2Backbone(HFBackbone):
    """DINOv2 (transformers ``Dinov2Model``); position embeddings always interpolate."""

    family = "dinov2"
    family_label = "DINOv2"

    @classmethod
    def default_preprocess(cls, config: Any) -> Preprocess:
        return Preprocess((224, 224), 256, IMAGENET_MEAN, IMAGENET_STD)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixel_values)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.layernorm(hidden)


class Dinov2RegistersBackbone(Dinov2Backbone):
    """DINOv2 with registers: tokens are CLS, ``num_register_tokens`` registers, patches."""

    family = "dinov2-registers"
    family_label = "DINOv2+registers"


class ViTBackbone(HFBackbone):
    """Generic transformers ``ViTModel`` (final ``layernorm``; the pooler is not used)."""

    family = "vit"
    family_label = "ViT"

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(
            pixel_values, interpolate_pos_encoding=self._needs_interpolation(pixel_values)
        )

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.layernorm(hidden)


def _model_classes(model_type: str) -> tuple[type, type[HFBackbone]]:
    if model_type in ("clip", "clip_vision_model"):
        from transformers import CLIPVisionModel

        return CLIPVisionModel, CLIPVisionBackbone
    if model_type == "dinov2":
        from transformers import Dinov2Model

        return Dinov2Model, Dinov2Backbone
    if model_type == "dinov2_with_registers":
        from transformers import Dinov2WithRegistersModel

        return Dinov2WithRegistersModel, Dinov2RegistersBackbone
    if model_type == "vit":
        from transformers import ViTModel

        return ViTModel, ViTBackbone
    raise ValueError(
        f"unsupported model type {model_type!r}: supported transformers model types are "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}; plus 'offline:dinov2-s-saliency' and "
        "'open_clip:<arch>' / 'hf-hub:<repo>' (open_clip backend)"
    )


def from_pretrained_quiet(model_cls: type, model_id: str | Path, **kwargs: Any) -> torch.nn.Module:
    """``from_pretrained`` without progress bars or the load report (a CLIP checkpoint's text
    weights are expected to be unused); missing vision weights are still reported, as a warning."""
    from transformers.utils import logging as tf_logging

    previous, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        model, info = model_cls.from_pretrained(model_id, output_loading_info=True, **kwargs)
    finally:
        tf_logging.set_verbosity(previous)
        if bars:
            tf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        warnings.warn(
            f"{model_id}: weights missing from the checkpoint (left random): {missing}",
            stacklevel=3,
        )
    return model


def load_hf_backbone(
    model_id: str,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HFBackbone:
    """Load a Hub id or local folder with transformers, picking the wrapper from its config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_id, revision=revision)
    model_type = getattr(config, "model_type", None)
    model_cls, backbone_cls = _model_classes(str(model_type))
    kwargs: dict[str, Any] = {"revision": revision, "dtype": dtype}
    if model_type == "clip":  # full CLIP checkpoint: load only the vision tower's weights
        kwargs["config"] = config.vision_config
    if model_type == "vit":
        kwargs["add_pooling_layer"] = False
    model = from_pretrained_quiet(model_cls, model_id, **kwargs)
    model = model.to(device).eval().requires_grad_(False)
    proc = read_preprocessor_config(model_id, revision)
    preprocess = (
        preprocess_from_dict(proc, backbone_cls.default_preprocess(model.config)) if proc else None
    )
    commit = getattr(config, "_commit_hash", None)
    return backbone_cls(model, model_id, revision or commit, preprocess)


__all__ = [
    "HFBackbone",
    "CLIPVisionBackbone",
    "Dinov2Backbone",
    "Dinov2RegistersBackbone",
    "ViTBackbone",
    "load_hf_backbone",
    "from_pretrained_quiet",
    "preprocess_from_dict",
    "read_preprocessor_config",
    "SUPPORTED_MODEL_TYPES",
]
