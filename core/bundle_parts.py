"""The parts of a bundle checked against its SAE, from JSON files and safetensors headers only.

Why a module of its own: :mod:`saescope.core.bundle_check` holds the entry points and the
manifest's field checks; this holds one reader per part (exemplars and statistics, indices,
matches, probes, OOD calibration, thumbnails), each comparing what the part says with the SAE's
sizes, model and layer (:class:`Reference`) and raising one BundleError naming both sides.
Nothing here reads tensor data: headers give the shapes, so a 10 GB bundle checks in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from saescope.core import formats
from saescope.core.bundle_manifest import (
    MANIFEST,
    PATH_COMPONENTS,
    TABLE_COMPONENTS,
    BundleError,
    BundleView,
    is_grid,
    is_int,
    is_pos_int,
)
from saescope.core.thumbnails import THUMBS

# saescope.core.exemplars' file names, repeated so that a check does not import torch (1 s);
# tests/test_bundle_consistency.py asserts they agree
META_FILE, EXEMPLARS_FILE, STATS_FILE = (
    "exemplars.json",
    "exemplars.safetensors",
    "feature_stats.safetensors",
)
MAP_DTYPES = ("float16", "uint8")


# ------------------------------------------------------------------------------ reading parts
class NotFetched(Exception):
    """A part of a Hub bundle that is not downloaded yet: checked once it is (``Bundle.fetch``)."""


def _absent(b: BundleView, p: Path, message: str | None = None) -> NoReturn:
    """A missing file or folder: NotFetched when a Hub bundle lists it, else a BundleError."""
    rel = _rel(b, p)
    listed = any(r == rel or r.startswith(rel + "/") for r in b.manifest.get("files") or {})
    if getattr(b, "hub", None) is not None and listed:
        raise NotFetched(rel)
    raise BundleError(message or f"bundle {b.name}: {rel} is missing")


def _rel(b: BundleView, p: Path) -> str:
    try:
        return p.relative_to(b.path).as_posix()
    except ValueError:
        return str(p)


def _read_json(b: BundleView, p: Path) -> dict:
    """A JSON object from a part of ``b``; a damaged file is a BundleError naming it."""
    try:
        out = json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        _absent(b, p)
    except (OSError, ValueError, RecursionError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"bundle {b.name}: {_rel(b, p)} is not valid JSON ({msg})") from err
    if not isinstance(out, dict):
        raise BundleError(f"bundle {b.name}: {_rel(b, p)} is not a JSON object")
    return out


def _shapes(b: BundleView, p: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a safetensors file, from its header alone (no data read)."""
    from safetensors import safe_open

    if not p.is_file():
        _absent(b, p)
    try:
        with safe_open(str(p), framework="numpy") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            return shapes, dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own error types on damaged headers
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(
            f"bundle {b.name}: {_rel(b, p)} is not a readable safetensors file ({msg})"
        ) from err


def _shape(b: BundleView, shapes: dict, tensor: str, want: tuple, p: Path, why: str) -> None:
    """Refuse a missing tensor, or one whose shape is not ``want`` (``why`` names the rule)."""
    got = shapes.get(tensor)
    if got is None:
        raise BundleError(f"bundle {b.name}: {_rel(b, p)} lacks tensor {tensor!r}")
    if tuple(got) != tuple(want):
        raise BundleError(
            f"bundle {b.name}: tensor {tensor} in {_rel(b, p)} has shape {list(got)}, "
            f"expected {list(want)} ({why})"
        )


def _field(
    b: BundleView, d: dict, key: str, p: Path | str, ok=is_pos_int, what="a positive integer"
):
    """``d[key]`` if present and valid (None if absent); a bad value is a BundleError."""
    v = d.get(key)
    if v is not None and not ok(v):
        where = p if isinstance(p, str) else _rel(b, p)
        raise BundleError(f"bundle {b.name}: field {key} of {where} must be {what}, got {v!r}")
    return v


def _agree(b: BundleView, got: Any, want: Any, claim: str, ref: str, where: str, ref_where: str):
    """One BundleError naming both sides when two known values disagree (None = unknown)."""
    if got is not None and want is not None and got != want:
        raise BundleError(
            f"bundle {b.name}: {claim.format(got)} but {ref.format(want)} ({where} vs {ref_where})"
        )


def _component(b: BundleView, name: str, folder: bool) -> Path | None:
    """The path of component ``name`` (None if the bundle has none); it must exist."""
    rel = b.components.get(name)
    if rel is None:
        return None
    p = b.path / rel
    if not p.exists():
        _absent(b, p, f"bundle {b.name}: component {name!r} points to {rel}, which is missing")
    if p.is_dir() != folder:
        want = "a folder" if folder else "a file"
        raise BundleError(f"bundle {b.name}: component {name!r} ({rel}) must be {want}")
    return p


# ------------------------------------------------------------------------------ the reference
@dataclass(frozen=True)
class Reference:
    """What every part of a bundle must agree with: the SAE's sizes, model and layer."""

    d_in: int | None
    d_sae: int | None
    model_id: str | None
    layer: int | None
    where: str  # the file these come from, named in messages
    from_sae: bool

    def vs(self, b: BundleView, got: Any, attr: str, claim: str, where: str) -> None:
        """One BundleError when ``got`` (``claim`` of ``where``) differs from the SAE's ``attr``."""
        _agree(b, got, getattr(self, attr), claim, _SAE_SAYS[attr], where, self.where)


_SAE_SAYS = {
    "d_in": "the SAE reads {}-d activations",
    "d_sae": "the SAE has {}",
    "model_id": "the SAE was trained on {!r}",
    "layer": "the SAE reads layer {}",
}


def _manifest_reference(b: BundleView) -> Reference:
    """The manifest's own account of the SAE (its model, sae and layer fields)."""
    model = b.manifest.get("model") or {}
    layer = b.manifest.get("layer", model.get("layer"))
    d_sae = (b.manifest.get("sae") or {}).get("d_sae")
    return Reference(model.get("d_model"), d_sae, model.get("model_id"), layer, MANIFEST, False)


def sae_reference(b: BundleView) -> Reference:
    """The SAE's ``d_in``, ``d_sae``, model and layer from its config and weight header.

    Model and layer fall back to the manifest's when the SAE does not record them (imports).
    Without an SAE component the manifest's blocks are the reference.
    """
    fallback = _manifest_reference(b)
    try:
        folder = _component(b, "sae", folder=True)
    except NotFetched:
        folder = None
    if folder is None:
        return fallback
    native = (folder / "config.json").is_file() or not (folder / "cfg.json").is_file()
    cfg_path = folder / ("config.json" if native else "cfg.json")
    w_path = folder / ("sae.safetensors" if native else "sae_weights.safetensors")
    try:
        cfg = _read_json(b, cfg_path)
    except NotFetched:
        return fallback
    d_in, d_sae = _field(b, cfg, "d_in", cfg_path), _field(b, cfg, "d_sae", cfg_path)
    if d_in is None or d_sae is None:
        raise BundleError(f"bundle {b.name}: {_rel(b, cfg_path)} gives no d_in/d_sae")
    model_id, layer = None, None
    if native:
        model_id = _field(b, cfg, "model_id", cfg_path, lambda v: isinstance(v, str), "a string")
        layer = _field(b, cfg, "layer", cfg_path, is_int, "an integer")
    why = f"{_rel(b, cfg_path)} says d_in={d_in}, d_sae={d_sae}"
    try:
        shapes, _ = _shapes(b, w_path)
    except NotFetched:
        shapes = None
    if shapes is not None:
        _shape(b, shapes, "W_enc", (d_in, d_sae), w_path, why)
        _shape(b, shapes, "W_dec", (d_sae, d_in), w_path, why)
    return Reference(
        d_in,
        d_sae,
        model_id if model_id is not None else fallback.model_id,
        layer if layer is not None else fallback.layer,
        _rel(b, cfg_path),
        True,
    )


# ------------------------------------------------------------------------------ the parts
def _check_manifest_blocks(b: BundleView, ref: Reference) -> None:
    """The manifest's model and sae blocks against the SAE (stale after a swapped SAE)."""
    if not ref.from_sae:
        return
    model = b.manifest.get("model") or {}
    ref.vs(b, model.get("d_model"), "d_in", "the manifest's model has d_model={}", MANIFEST)
    ref.vs(b, model.get("model_id"), "model_id", "the manifest names the model {!r}", MANIFEST)
    layer = b.manifest.get("layer", model.get("layer"))
    ref.vs(b, layer, "layer", "the manifest says layer {}", MANIFEST)
    d_sae = (b.manifest.get("sae") or {}).get("d_sae")
    ref.vs(b, d_sae, "d_sae", "the manifest's sae block says {} features", MANIFEST)


def _check_exemplars(b: BundleView, ref: Reference) -> int | None:
    """Exemplars and feature statistics against the SAE; returns their patches per image."""
    folder = _component(b, "exemplars", folder=True)
    if folder is None:
        return None
    mp, ep, sp = folder / META_FILE, folder / EXEMPLARS_FILE, folder / STATS_FILE
    meta = _read_json(b, mp)
    where = f"bundle {b.name}: {_rel(b, mp)}"
    formats.EXEMPLARS.check(meta, where, error=BundleError, default_version=1)
    k, n_features = _field(b, meta, "k", mp), _field(b, meta, "n_features", mp)
    grid = _field(b, meta, "grid", mp, is_grid, "two positive integers")
    if k is None or grid is None:
        raise BundleError(f"{where} lacks field {'k' if k is None else 'grid'}")
    n_patches = grid[0] * grid[1]
    _agree(
        b,
        _field(b, meta, "n_patches", mp),
        n_patches,
        "exemplar maps have {} patches",
        f"the grid {grid[0]}x{grid[1]} has {{}}",
        _rel(b, mp),
        "its grid",
    )
    map_dtype = meta.get("map_dtype", "float16")
    if map_dtype not in MAP_DTYPES:
        raise BundleError(f"{where}: unknown map_dtype {map_dtype!r} (known: {MAP_DTYPES})")
    images = meta.get("images") if isinstance(meta.get("images"), dict) else {}
    lists = [images.get(x) for x in ("index", "id", "source_index")]
    if not all(isinstance(x, list) and len(x) == len(lists[0] or ()) for x in lists):
        raise BundleError(f"{where}: field images must hold lists index, id, source_index")
    shapes, _ = _shapes(b, ep)
    f = _first(shapes, "indices")
    ref.vs(b, f, "d_sae", "exemplars cover {} features", _rel(b, ep))
    _agree(
        b,
        n_features,
        f,
        "exemplars.json says {} features",
        "exemplars.safetensors holds {}",
        _rel(b, mp),
        _rel(b, ep),
    )
    f = f if f is not None else ref.d_sae
    why = f"{_rel(b, mp)}: k={k}, grid {grid[0]}x{grid[1]}"
    for tensor, want in (("indices", (f, k)), ("values", (f, k)), ("maps", (f, k, n_patches))):
        _shape(b, shapes, tensor, want, ep, why)
    if map_dtype == "uint8":
        _shape(b, shapes, "map_scales", (f, k), ep, why)
    stats, _ = _shapes(b, sp)
    _agree(
        b,
        _first(stats, "frequency"),
        f,
        "feature statistics cover {} features",
        "the exemplars {}",
        _rel(b, sp),
        _rel(b, ep),
    )
    for tensor in ("frequency", "mean", "mean_active", "max"):
        _shape(b, stats, tensor, (f,), sp, f"one value per feature, {f} features")
    n_bins = (_first(stats, "bin_edges") or 1) - 1
    _shape(b, stats, "histogram", (f, n_bins), sp, "[features, len(bin_edges) - 1]")
    ref.vs(b, meta.get("model_id"), "model_id", "exemplars were built on {!r}", _rel(b, mp))
    ref.vs(b, meta.get("layer"), "layer", "exemplars were built on layer {}", _rel(b, mp))
    _agree(
        b,
        grid,
        (b.manifest.get("layout") or {}).get("grid"),
        "exemplar maps have a {} grid",
        "the manifest's layout {}",
        _rel(b, mp),
        MANIFEST,
    )
    return n_patches


def _first(shapes: dict[str, tuple[int, ...]], tensor: str) -> int | None:
    """The first dimension of ``tensor`` in a header's shapes (None if absent or a scalar)."""
    shape = shapes.get(tensor)
    return int(shape[0]) if shape else None


def _sidecar(b: BundleView, index: Path) -> tuple[dict, Path]:
    """The JSON sidecar of a saved index (``NAME.json``): sizes without opening the index."""
    side = index.with_name(index.name + ".json")
    info = _read_json(b, side)
    formats.VECTOR_INDEX.check(info, f"bundle {b.name}: {_rel(b, side)}", error=BundleError)
    for key in ("d", "n"):
        if not is_int(info.get(key)) or info[key] < 0:
            raise BundleError(f"bundle {b.name}: {_rel(b, side)} lacks a valid field {key!r}")
    return info, side


def _check_index(b: BundleView, ref: Reference, component: str, n_patches: int | None) -> None:
    """The decoder (feature) index or the patch index against the SAE, from its sidecar."""
    label = component.replace("_", " ")
    path = _component(b, component, folder=False)
    if path is None:
        return
    info, side = _sidecar(b, path)
    where = _rel(b, side)
    ref.vs(b, info["d"], "d_in", f"the {label} holds {{}}-d vectors", where)
    meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
    if component == "feature_index":
        ref.vs(b, info["n"], "d_sae", "the feature index holds {} decoder directions", where)
        ref.vs(b, meta.get("d_sae"), "d_sae", "the feature index was built for {} features", where)
    else:
        _agree(
            b,
            meta.get("n_patches"),
            n_patches,
            "the patch index has {} patches per image",
            "the exemplar maps {}",
            where,
            "exemplars",
        )
    ref.vs(b, meta.get("model_id"), "model_id", f"the {label} was built on {{!r}}", where)
    ref.vs(b, meta.get("layer"), "layer", f"the {label} was built on layer {{}}", where)


def _check_match(b: BundleView, ref: Reference, other: str, rel: str) -> None:
    """Matches with ``other``: this bundle's side covers the SAE's features, both consistent."""
    p = b.path / rel
    shapes, md = _shapes(b, p)
    where = f"bundle {b.name}: {rel}"
    formats.FEATURE_MATCHES.check(md, where, error=BundleError, default_version=1)
    mine = _first(shapes, "a_to_b.indices")
    ref.vs(b, mine, "d_sae", f"the matches with {other} cover {{}} features", rel)
    for side in ("a_to_b", "b_to_a"):
        idx = shapes.get(f"{side}.indices")
        if idx is None or len(idx) != 2:
            raise BundleError(f"{where} lacks a 2-d tensor {side}.indices")
        _shape(b, shapes, f"{side}.scores", idx, p, f"same shape as {side}.indices")


def _check_probe(b: BundleView, ref: Reference, name: str, entry: Any) -> None:
    """A probe head reads final backbone tokens: its width is the SAE's input width."""
    model_id = (b.manifest.get("model") or {}).get("model_id")
    rel = Path(entry["path"] if isinstance(entry, dict) else entry)
    jp = b.path / rel.parent / f"{rel.name}.json"
    wp = b.path / rel.parent / f"{rel.name}.safetensors"
    meta = _read_json(b, jp)
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    d_in = _field(b, cfg, "d_in", jp)
    ref.vs(b, d_in, "d_in", f"probe {name!r} reads {{}}-d tokens", _rel(b, jp))
    _agree(
        b,
        cfg.get("backbone_id"),
        model_id,
        f"probe {name!r} was fitted on {{!r}}",
        "the bundle's model is {!r}",
        _rel(b, jp),
        MANIFEST,
    )
    if meta.get("class") != "LinearProbe" or d_in is None:
        return
    classes = cfg.get("class_names")
    n_classes = len(classes) if isinstance(classes, list) else None
    d_feat = d_in * (2 if cfg.get("pooling") == "cls+mean" else 1)
    shapes, _ = _shapes(b, wp)
    why = f"{_rel(b, jp)}: d_in={d_in}, {n_classes} classes"
    _shape(b, shapes, "linear.weight", (n_classes, d_feat), wp, why)
    for tensor in ("mean", "std"):
        _shape(b, shapes, tensor, (d_feat,), wp, why)


def _check_ood(b: BundleView, ref: Reference) -> None:
    """OOD calibration: its model/layer, and the width of its indices and tensors."""
    folder = _component(b, "ood", folder=True)
    if folder is None:
        return
    mp, tp = folder / "ood.json", folder / "ood.safetensors"
    info = _read_json(b, mp)
    formats.OOD.check(info, f"bundle {b.name}: {_rel(b, mp)}", error=BundleError, default_version=1)
    meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
    where = _rel(b, mp)
    ref.vs(b, meta.get("model_id"), "model_id", "the OOD calibration was fitted on {!r}", where)
    ref.vs(b, meta.get("layer"), "layer", "the OOD calibration was fitted on layer {}", where)
    shapes = _shapes(b, tp)[0] if tp.is_file() else {}
    scorers = info.get("scorers") if isinstance(info.get("scorers"), list) else []
    for s in (s for s in scorers if isinstance(s, dict)):
        state = s.get("state") if isinstance(s.get("state"), dict) else {}
        width = "d_sae" if str(state.get("field", "")).startswith("code") else "d_in"
        label = f"OOD scorer {s.get('name')!r}"
        if s.get("class") == "KNNDistance" and isinstance(state.get("index"), str):
            side_info, side = _sidecar(b, folder / state["index"])
            ref.vs(b, side_info["d"], width, f"{label} holds {{}}-d vectors", _rel(b, side))
        if s.get("class") == "RareFeatures":
            n = _first(shapes, f"{s.get('name')}/frequency")
            ref.vs(b, n, "d_sae", f"{label} counts {{}} features", _rel(b, tp))
        if s.get("class") == "Mahalanobis":
            n = _first(shapes, f"{s.get('name')}/precision")
            ref.vs(b, n, width, f"{label} is {{}}-d", _rel(b, tp))


def _check_thumbnails(b: BundleView) -> None:
    """The packed thumbnails: one offset more than images, one byte stream."""
    p = b.path / THUMBS
    if not p.is_file():
        return
    shapes, _ = _shapes(b, p)
    n = _first(shapes, "image_index")
    if n is None or len(shapes.get("data", ())) != 1:
        raise BundleError(f"bundle {b.name}: {THUMBS} lacks its image_index or data tensor")
    _shape(b, shapes, "offsets", (n + 1,), p, f"one more than the {n} images")


def _unless_not_fetched(check, *args) -> Any:
    try:
        return check(*args)
    except NotFetched:
        return None


def _matches_file(b: BundleView, other: str, rel: str) -> None:
    if not (b.path / rel).is_file():
        msg = f"bundle {b.name}: the matches with {other!r} point to {rel}, which is missing"
        _absent(b, b.path / rel, msg)


def check_parts(b: BundleView, ref: Reference) -> None:
    """Every part of ``b`` against ``ref``; parts of a Hub bundle not downloaded yet are skipped
    (``Bundle.fetch`` checks again once they are)."""
    for name, folder in PATH_COMPONENTS.items():
        _unless_not_fetched(_component, b, name, folder)
    for other, rel in (b.components.get("matches") or {}).items():
        _unless_not_fetched(_matches_file, b, other, rel)
    n_patches = _unless_not_fetched(_check_exemplars, b, ref)
    for component in ("feature_index", "patch_index"):
        _unless_not_fetched(_check_index, b, ref, component, n_patches)
    for other, rel in (b.components.get("matches") or {}).items():
        _unless_not_fetched(_check_match, b, ref, other, rel)
    for name, entry in (b.components.get("probes") or {}).items():
        _unless_not_fetched(_check_probe, b, ref, name, entry)
    _unless_not_fetched(_check_ood, b, ref)
    _unless_not_fetched(_check_thumbnails, b)
    _check_manifest_blocks(b, ref)  # last: a stale manifest matters less than a part that differs


__all__ = [
    "PATH_COMPONENTS",
    "TABLE_COMPONENTS",
    "NotFetched",
    "Reference",
    "check_parts",
    "is_grid",
    "is_int",
    "is_pos_int",
    "sae_reference",
]
