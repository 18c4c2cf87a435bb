"""Build, match and publish bundles.

``saescope bundle --sae S --store A --out B [--push-to-hub REPO]`` assembles one bundle
(SAE, exemplars and feature statistics, the decoder index, packed thumbnails, manifest with
checksums; the patch index only with ``--patch-index N``). ``--exemplars DIR``,
``--feature-index PATH`` and ``--patch-index-from PATH`` reuse the outputs of ``saescope
exemplars`` and ``saescope index`` (:mod:`saescope.train.bundle_inputs` checks them against the
SAE). The offline default bundles the apps use are built by :mod:`saescope.train.default_bundle`.

Bundles are built in a ``.partial`` folder and renamed into place, so a killed build never
leaves something that looks like a bundle.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.core.bundle import (
    Bundle,
    pack_thumbnails,
    push_bundle,
    update_manifest,
    write_manifest,
)
from saescope.train.cli import OutOption, add_step, announce_config, option

PATCH_INDEX_SAMPLE = 10_000_000
"""Default sample of a bare ``--patch-index``: about 9 GB as IVF-PQ at width 768."""


def _map_dtypes() -> tuple[str, ...]:
    from saescope.core.exemplars import MAP_DTYPES

    return MAP_DTYPES


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[bundle] {msg}", file=sys.stderr, flush=True)


def _preprocess_from_manifest(store):
    from saescope.core.backbones.base import Preprocess

    d = store.manifest.get("model", {}).get("preprocess")
    return Preprocess.from_dict(d) if d else None


def _thumbnails(folder: Path, store, ex, size: int, progress: bool) -> int:
    """Thumbnails of the exemplar images as the model saw them (same crop), packed in one file."""
    from saescope.core.exemplars import ExemplarError
    from saescope.core.heatmap import crop_for_preprocess

    preprocess = _preprocess_from_manifest(store)
    spec = (ex.meta.get("source") or {}).get("spec")

    def items():
        for i in sorted(ex.images):
            image = ex.load_image(i)
            yield (
                i,
                ex.images[i][0],
                crop_for_preprocess(image, preprocess) if preprocess else image,
            )

    try:
        return pack_thumbnails(folder, items(), size=size, source_spec=spec)
    except ExemplarError as err:
        _log(f"no thumbnails: {err}", progress)
        return 0


def _inputs(sae, store, exemplars, feature_index, patch_index_from):
    """The reused outputs, checked against the SAE and store before any work is done."""
    from saescope.train.bundle_inputs import (
        reuse_exemplars,
        reuse_feature_index,
        reuse_patch_index,
    )

    return (
        None if exemplars is None else reuse_exemplars(exemplars, sae, store),
        None if feature_index is None else reuse_feature_index(feature_index, sae),
        None if patch_index_from is None else reuse_patch_index(patch_index_from, sae, store),
    )


def _link_folder(src: Path, dst: Path) -> None:
    from saescope.core.fileio import is_temp_path
    from saescope.train.bundle_inputs import link_or_copy

    for p in sorted(src.iterdir()):
        if p.is_file() and not is_temp_path(p):
            link_or_copy(p, dst / p.name)


def _indices(tmp: Path, sae, store, reused_fi, reused_pi, patch_index, progress) -> bool:
    """Write ``indices/``: the decoder index, and the patch index when asked for; whether the
    bundle has a patch index."""
    from saescope.core.index import sidecar_path
    from saescope.train.bundle_inputs import link_or_copy, sampled_patch_index
    from saescope.train.indices import feature_index, save_patch_index

    folder = tmp / "indices"
    folder.mkdir()
    if reused_fi is not None:
        for p in (reused_fi, sidecar_path(reused_fi)):
            link_or_copy(p, folder / p.name.replace(reused_fi.name, "features.faiss"))
    else:
        feature_index(sae).save(folder / "features.faiss")
    if reused_pi is not None:
        for p in reused_pi:
            link_or_copy(p, folder / p.name)
        return True
    if patch_index is None:
        return False
    _log(f"patch index over a sample of up to {patch_index} patch tokens", progress)
    save_patch_index(sampled_patch_index(sae, store, patch_index, progress=progress), store, folder)
    return True


def build_bundle(
    sae_path: str | Path,
    store_path: str | Path,
    out: str | Path,
    *,
    k: int = 32,
    name: str | None = None,
    title: str | None = None,
    description: str = "",
    thumb_size: int = 160,
    map_dtype: str = "uint8",
    per_source: int | None = 1,
    patch_index: int | None = None,
    exemplars: str | Path | None = None,
    feature_index: str | Path | None = None,
    patch_index_from: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    extra: dict | None = None,
) -> Path:
    """Assemble a bundle folder from a trained SAE and the store it was trained on.

    ``patch_index=N`` adds the optional patch index over a random sample of at most N patch
    tokens (off by default: no app needs it, and over a whole data set it outgrows everything
    else). ``exemplars``, ``feature_index`` and ``patch_index_from`` reuse the outputs of
    ``saescope exemplars`` and ``saescope index`` (checked against the SAE, then hard-linked or
    copied) instead of recomputing them.
    """
    from saescope.core.sae_io import check_compatible, from_pretrained, save_sae
    from saescope.core.store import ActivationStore
    from saescope.train.exemplars import build_exemplars

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to rebuild it")
    if patch_index is not None and patch_index_from is not None:
        raise ValueError("give --patch-index N or --patch-index-from PATH, not both")
    sae = from_pretrained(sae_path)
    store = ActivationStore(store_path)
    check_compatible(sae, store.model_id, store.layer, store.d_model)
    ex, reused_fi, reused_pi = _inputs(sae, store, exemplars, feature_index, patch_index_from)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    save_sae(sae, tmp / "sae")  # native format, also for imported saev/SAELens checkpoints
    if ex is not None:
        _log(f"exemplars reused from {exemplars}", progress)
        _link_folder(Path(exemplars), tmp / "exemplars")
    else:
        _log(f"exemplars (top {k} images per feature, {sae.cfg.d_sae} features)", progress)
        ex = build_exemplars(sae, store, k=k, per_source=per_source, progress=progress)
        ex.save(tmp / "exemplars", map_dtype=map_dtype)
    has_patches = _indices(tmp, sae, store, reused_fi, reused_pi, patch_index, progress)
    _log(f"thumbnails of {len(ex.images)} exemplar images", progress)
    n_thumbs = _thumbnails(tmp, store, ex, thumb_size, progress)
    components = {"sae": "sae", "exemplars": "exemplars", "feature_index": "indices/features.faiss"}
    if has_patches:
        components["patch_index"] = "indices/patches.faiss"
    if n_thumbs:
        components["thumbnails"] = "thumbnails.safetensors"
    reused = {
        "exemplars": None if exemplars is None else str(exemplars),
        "feature_index": None if feature_index is None else str(feature_index),
        "patch_index": None if patch_index_from is None else str(patch_index_from),
    }
    info = _info(out, sae, store, name, title, description, components, extra)
    info["reused"] = {key: v for key, v in reused.items() if v is not None}
    _write_card(tmp, info)
    write_manifest(tmp, info)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    _log(f"bundle {out} ready in {time.perf_counter() - t0:.0f}s", progress)
    return out


def _info(out: Path, sae, store, name, title, description, components, extra) -> dict[str, Any]:
    """The manifest's metadata (everything but the file list)."""
    model = store.manifest.get("model", {})
    display = model.get("display_name") or model.get("model_id")
    return {
        "name": name or out.name,
        "title": title or f"{display} - layer {store.layer}",
        "description": description,
        "model": {
            k2: model.get(k2)
            for k2 in (
                "model_id",
                "revision",
                "display_name",
                "family",
                "n_layers",
                "d_model",
                "patch_size",
                "n_registers",
                "preprocess",
            )
        },
        "layer": store.layer,
        "token_kinds": [t.value for t in store.kinds],
        "layout": store.manifest.get("layout"),
        "sae": {
            "name": sae.cfg.name,
            "architecture": sae.cfg.architecture,
            "d_sae": sae.cfg.d_sae,
            "k": sae.cfg.k,
            "metrics": sae.cfg.metrics,
        },
        "dataset": {
            "source": (store.manifest.get("source") or {}).get("spec"),
            "n_images": store.n_images,
            "n_tokens": store.n_tokens,
            "label_names": store.label_names,
        },
        "components": components,
        "head": {"name": "saliency", "from": "backbone"}
        if model.get("model_id", "").startswith("offline:")
        else None,
        **(extra or {}),
    }


def _write_card(folder: Path, info: dict) -> None:
    m = info["sae"].get("metrics") or {}
    metrics = ", ".join(f"{k} {m[k]:.3g}" for k in ("fvu", "l0", "dead_fraction") if k in m)
    (folder / "README.md").write_text(
        "---\nlibrary_name: saescope\ntags:\n- sparse-autoencoder\n- interpretability\n"
        "- vision\n---\n"
        f"# {info['title']}\n\nA saescope bundle: a {info['sae']['architecture']} SAE with "
        f"{info['sae']['d_sae']} features on layer {info['layer']} of "
        f"`{info['model']['model_id']}`, "
        f"its top exemplars per feature over {info['dataset']['n_images']} images "
        f"(`{info['dataset']['source']}`), feature statistics, FAISS indices and thumbnails.\n\n"
        f"Metrics: {metrics or 'n/a'}.\n\n"
        "```bash\nsaescope-browser --bundle THIS_REPO_ID\n```\n"
    )


def add_matches(
    bundle_a: str | Path,
    store_a: str | Path,
    bundle_b: str | Path,
    store_b: str | Path,
    k: int = 10,
    max_images: int | None = 2000,
    progress: bool = True,
) -> None:
    """Cross-model feature matches (activation correlation over shared images) in both bundles."""
    from saescope.core.matches import Matches
    from saescope.core.store import ActivationStore
    from saescope.train.indices import activation_correlation

    a, b = Bundle.load(bundle_a, verify=False), Bundle.load(bundle_b, verify=False)
    _log(f"matching features of {a.name} and {b.name}", progress)
    m = activation_correlation(
        a.sae,
        ActivationStore(store_a),
        b.sae,
        ActivationStore(store_b),
        max_images=max_images,
        k=k,
        progress=progress,
    )
    swapped = Matches(
        m.b_to_a_indices, m.b_to_a_scores, m.a_to_b_indices, m.a_to_b_scores, m.method, m.meta
    )
    for bundle, other, matches in ((a, b, m), (b, a, swapped)):
        rel = f"matches/{other.name}.safetensors"
        matches.save(bundle.path / rel)
        update_manifest(bundle.path, _add_match_component(other.name, rel))


def _add_match_component(name: str, rel: str):
    """A manifest change that records the matches file ``rel`` against bundle ``name``."""

    def change(info: dict) -> None:
        info.setdefault("components", {}).setdefault("matches", {})[name] = rel

    return change


# ------------------------------------------------------------------------------ CLI
@dataclass(kw_only=True)
class BundleConfig(OutOption):
    """``saescope bundle``: an SAE and its store in, one bundle folder OUT (= one Hub repo) out."""

    sae: str
    """SAE folder or Hub id"""
    store: str
    """the SAE's activation store"""
    k: int = 32
    """exemplar images per feature"""
    name: str | None = None
    """bundle name (default: the name of the OUT folder)"""
    title: str | None = None
    """title shown by the apps (default: the model and the layer)"""
    thumb_size: int = 160
    """thumbnail edge in pixels"""
    map_dtype: str = option("uint8", choices=_map_dtypes)
    """patch-map storage of exemplars built here (uint8: half the size, 1/255 steps)"""
    per_source: int = 1
    """at most N exemplars of a feature from one source image (augmented views of one image
    count as one; 0 = no limit)"""
    patch_index: int | None = option(
        None, nargs="?", const=PATCH_INDEX_SAMPLE, metavar="N", exclusive="patches"
    )
    """also build the optional patch index, over a random sample of at most N patch tokens
    (N defaults to 10000000 when omitted)"""
    patch_index_from: str | None = option(None, metavar="PATH", exclusive="patches")
    """reuse this patch index (patches.faiss, or the output folder of 'saescope index')"""
    exemplars: str | None = option(None, metavar="DIR")
    """reuse these exemplars (output folder of 'saescope exemplars') instead of recomputing"""
    feature_index: str | None = option(None, metavar="PATH")
    """reuse this decoder index (features.faiss, or the output folder of 'saescope index')"""
    force: bool = False
    """rebuild an existing bundle folder"""
    push_to_hub: str | None = option(None, metavar="REPO")
    """upload the bundle to this Hub repo"""
    private: bool = False
    """make the uploaded repo private"""
    match_with: list[str] | None = option(None, nargs=2, metavar=("BUNDLE", "STORE"))
    """also compute cross-model feature matches with another bundle"""


def add_parser(sub) -> None:
    add_step(
        sub,
        "bundle",
        BundleConfig,
        run_bundle,
        help="assemble a bundle (SAE, exemplars, indices, thumbnails) for the apps",
        description="Build a bundle folder (= one Hub repo) from an SAE and its activation "
        "store;\noptionally upload it.",
    )


def run_bundle(cfg: BundleConfig) -> int:
    announce_config(cfg, "bundle", None)
    out = build_bundle(
        cfg.sae,
        cfg.store,
        cfg.out,
        k=cfg.k,
        name=cfg.name,
        title=cfg.title,
        thumb_size=cfg.thumb_size,
        map_dtype=cfg.map_dtype,
        per_source=cfg.per_source or None,
        patch_index=cfg.patch_index,
        exemplars=cfg.exemplars,
        feature_index=cfg.feature_index,
        patch_index_from=cfg.patch_index_from,
        force=cfg.force,
    )
    if cfg.match_with:
        add_matches(out, cfg.store, cfg.match_with[0], cfg.match_with[1])
    if cfg.push_to_hub:
        print(f"uploaded to {push_bundle(out, cfg.push_to_hub, private=cfg.private)}")
    print(out)
    return 0
