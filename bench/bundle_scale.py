"""Bundles at ImageNet scale: build size and time, app cold start, memory, feature-page latency.

    python -m bench.bundle_scale            # 1/16 of the reference shape + growth table (~2 min)
    python -m bench.bundle_scale --full     # the reference shape itself (~8 GB, ~10 min)

The reference shape is what people publish: a ViT-B (DINOv2, 16 x 16 patches, width 768) SAE of
24,576 features, 128 exemplars each, over about a million distinct ImageNet images. The codes
and pictures are synthetic, the writers real: a random SAE (``save_sae``), exemplars with random
indices, values and patch maps (``Exemplars.save``, uint8 maps as ``saescope bundle`` writes
them), thumbnails (``pack_thumbnails``), the decoder index (``train.indices.feature_index``) and
the manifest (``write_manifest``). Thumbnails are real JPEGs: the 400 packaged photo views,
encoded once at 160 px (quality 85, 6.6 KB on average, like ImageNet photos) and stored again
for every image (``pack_thumbnails`` takes encoded bytes as they are), so the build does not
spend an hour in the JPEG encoder; the encoding time a real build adds is reported apart.

Start and page are measured in a fresh process that does what the browser app does first: load
the bundle, its SAE, exemplars, statistics and thumbnails (``saescope.apps.adapter``), then 20
feature pages (the top 16 exemplars of a random feature, their patch maps and decoded thumbnails,
its statistics); the peak resident memory of that process (``VmHWM``) is its memory.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.report import write_section

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"features": 24_576, "k": 128, "images": 1_000_000}
GRID, WIDTH, THUMB = (16, 16), 768, 160
MODEL, LAYER = "facebook/dinov2-base", 11
CHILD = r"""
import json, random, resource, sys, time
def peak_mb():
    # VmHWM: this process's peak resident memory (ru_maxrss would report the parent's peak,
    # which Linux carries over fork and exec)
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
from saescope.apps import adapter
from saescope.core import bundle_files
t_import = time.perf_counter()
b = adapter.load_bundle(sys.argv[1])
t_load = time.perf_counter()
b.sae
ex = adapter.exemplars(b)
st = adapter.stats(b)
b.thumbnails
t_ready = time.perf_counter()
rng = random.Random(0)
pages = []
for f in [rng.randrange(ex.n_features) for _ in range(20)]:
    t = time.perf_counter()
    tops = adapter.top_exemplars(b, f, 16)
    images = [adapter.thumbnail(b, e[0]) for e in tops]
    st.of(f)
    pages.append(time.perf_counter() - t)
    assert len(images) == len(tops) == 16 and all(im is not None for im in images)
print(json.dumps({
    "import_s": t_import - t0, "load_s": t_load - t_import, "ready_s": t_ready - t_load,
    "start_s": t_ready - t_import, "pages_s": pages,
    "maxrss_mb": peak_mb(),
    "hashed_files": bundle_files.HASHED["files"], "hashed_bytes": bundle_files.HASHED["bytes"],
}))
"""


def thumbnail_pool() -> tuple[list[bytes], float]:
    """Real JPEG thumbnails (the packaged photo views) and the seconds one takes to encode."""
    from PIL import Image

    from saescope.core.sources import open_source

    src = open_source("builtin:photos?views=2")
    blobs, t = [], time.perf_counter()
    for i in range(len(src)):
        im = src.load(i).convert("RGB")
        im.thumbnail((THUMB, THUMB), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        blobs.append(buf.getvalue())
    return blobs, (time.perf_counter() - t) / len(blobs)


def synthetic_exemplars(n_features: int, k: int, n_images: int, seed: int = 0):
    """Exemplars of the given shape: every image used (about F x k / N times), random values
    sorted per feature, random patch maps, plausible statistics."""
    from saescope.core.exemplars import Exemplars, histogram_edges

    g = torch.Generator().manual_seed(seed)
    slots = n_features * k
    indices = (torch.randperm(slots, generator=g) % n_images).view(n_features, k)
    values = torch.rand(n_features, k, generator=g).sort(1, descending=True).values * 10
    maps = torch.randint(0, 256, (n_features, k, GRID[0] * GRID[1]), dtype=torch.uint8, generator=g)
    edges = histogram_edges()
    stats = {
        "frequency": torch.rand(n_features, generator=g) * 0.01,
        "mean": torch.rand(n_features, generator=g),
        "mean_active": torch.rand(n_features, generator=g),
        "max": values[:, 0].clone(),
        "histogram": torch.randint(0, 1000, (n_features, len(edges) - 1), generator=g),
        "bin_edges": edges,
    }
    used = torch.unique(indices).tolist()
    images = {i: (f"synthetic/{i:07d}", i) for i in used}
    meta = {
        "model_id": MODEL,
        "layer": LAYER,
        "token_kinds": ["patch"],
        "n_images": n_images,
        "n_tokens": n_images * GRID[0] * GRID[1],
        "source": {"spec": "synthetic"},
    }
    return Exemplars(indices, values, maps.half(), stats, GRID, images, meta)


def build(out: Path, n_features: int, k: int, n_images: int, pool: list[bytes]) -> dict:
    """A bundle of the given shape with the real writers; seconds per step."""
    from saescope.core.bundle import pack_thumbnails, write_manifest
    from saescope.core.sae import SAE, SAEConfig
    from saescope.core.sae_io import save_sae
    from saescope.train.indices import feature_index

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    times, t = {}, time.perf_counter()
    cfg = SAEConfig(d_in=WIDTH, d_sae=n_features, k=64, model_id=MODEL, layer=LAYER)
    sae = SAE(cfg)
    save_sae(sae, out / "sae")
    times["sae"], t = time.perf_counter() - t, time.perf_counter()
    ex = synthetic_exemplars(n_features, k, n_images)
    ex.save(out / "exemplars", map_dtype="uint8")
    times["exemplars"], t = time.perf_counter() - t, time.perf_counter()
    items = ((i, ex.images[i][0], pool[i % len(pool)]) for i in sorted(ex.images))
    pack_thumbnails(out, items, size=THUMB, source_spec="synthetic")
    times["thumbnails"], t = time.perf_counter() - t, time.perf_counter()
    feature_index(sae).save(out / "indices" / "features.faiss")
    times["feature_index"], t = time.perf_counter() - t, time.perf_counter()
    components = {
        "sae": "sae",
        "exemplars": "exemplars",
        "thumbnails": "thumbnails.safetensors",
        "feature_index": "indices/features.faiss",
    }
    write_manifest(
        out,
        {
            "name": out.name,
            "title": f"synthetic {n_features} x {k} over {n_images} images",
            "model": {"model_id": MODEL, "patch_size": 14},
            "layer": LAYER,
            "sae": {"name": cfg.name, "d_sae": n_features, "k": 64, "architecture": "topk"},
            "components": components,
        },
    )
    times["manifest"] = time.perf_counter() - t
    return {"seconds": times, "images": len(ex.images)}


def sizes(folder: Path) -> dict[str, int]:
    """Bytes per component (a component's files, sidecars included) and the rest."""
    from saescope.core.bundle import read_manifest
    from saescope.core.bundle_files import component_files

    m = read_manifest(folder)
    out, seen = {}, set()
    for name, path in m["components"].items():
        rels = component_files(m, path)
        out[name] = sum(m["files"][r]["bytes"] for r in rels)
        seen.update(rels)
    out["other"] = sum(v["bytes"] for r, v in m["files"].items() if r not in seen)
    out["other"] += (folder / "bundle.json").stat().st_size
    return out


def start(folder: Path) -> dict:
    """App start and feature pages in a fresh process (see the module docstring)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if res.returncode:
        raise RuntimeError(f"start failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def growth(root: Path, base: dict, pool: list[bytes]) -> list[dict]:
    """Size and build time as images and features double and exemplars halve (others fixed);
    ``images`` counts the distinct images the exemplars use (all of them: F x k >= images)."""
    steps = [("images", m) for m in (1, 2, 4)] + [("features", 2), ("features", 4)]
    steps += [("k", 0.5), ("k", 0.25)]
    rows = []
    for axis, mult in steps:
        shape = {**base, axis: int(base[axis] * mult)}
        out = root / f"growth-{axis}-{mult}"
        b = build(out, shape["features"], shape["k"], shape["images"], pool)
        rows.append(
            {
                "axis": "base" if mult == 1 else axis,
                **shape,
                "images": b["images"],
                "bytes": sum(sizes(out).values()),
                "build_s": sum(b["seconds"].values()),
            }
        )
        shutil.rmtree(out, ignore_errors=True)
    return rows


def law(main: dict, shape: dict) -> dict[str, float]:
    """Per-unit coefficients of each component (the growth law), from the main build."""
    s = main["sizes"]
    slots = shape["features"] * shape["k"]
    return {
        "thumbnail_bytes_per_image": s["thumbnails"] / main["images"],
        "exemplar_bytes_per_slot": s["exemplars"] / slots,
        "sae_bytes_per_feature": s["sae"] / shape["features"],
        "feature_index_bytes_per_feature": s["feature_index"] / shape["features"],
    }


def predict(coef: dict[str, float], shape: dict, images: int) -> float:
    return (
        coef["thumbnail_bytes_per_image"] * images
        + coef["exemplar_bytes_per_slot"] * shape["features"] * shape["k"]
        + (coef["sae_bytes_per_feature"] + coef["feature_index_bytes_per_feature"])
        * shape["features"]
    )


def _table(main: dict, shape: dict, coef: dict, rows: list[dict], full: bool) -> str:
    s, st = main["sizes"], main["start"]
    pages = sorted(st["pages_s"])
    ref = predict(coef, REFERENCE, REFERENCE["images"])
    name = "the reference shape" if full else f"1/{main['fraction']} of the reference shape"
    md = [
        f"## Bundles at ImageNet scale (`python -m bench.bundle_scale{' --full' * full}`)\n",
        f"A bundle of {name}: {shape['features']:,} features x {shape['k']} exemplars over "
        f"{main['images']:,} distinct images (ViT-B: 16 x 16 patches, width 768), synthetic "
        "codes, real writers and real 160 px JPEG thumbnails (reused blobs; see the script).\n",
        "| component | MB | grows with |",
        "|---|---|---|",
        f"| thumbnails | {s['thumbnails'] / 1e6:,.0f} | distinct exemplar images "
        f"({coef['thumbnail_bytes_per_image'] / 1e3:.1f} kB each) |",
        f"| exemplars (uint8 maps, stats, image table) | {s['exemplars'] / 1e6:,.0f} | "
        f"features x exemplars ({coef['exemplar_bytes_per_slot']:.0f} B each) |",
        f"| sae | {s['sae'] / 1e6:,.0f} | features x width |",
        f"| feature_index | {s['feature_index'] / 1e6:,.0f} | features x width |",
        f"| other (manifest, card) | {s['other'] / 1e6:.1f} | - |",
        f"| **total** | **{sum(s.values()) / 1e6:,.0f}** | no term in the data set size |",
        "",
        "| measurement | value | target |",
        "|---|---|---|",
        f"| build (writers, thumbnails from encoded blobs) | {sum(main['seconds'].values()):.0f} s"
        f" ({', '.join(f'{k} {v:.0f}' for k, v in main['seconds'].items())}) | - |",
        f"| JPEG encoding a real build adds (160 px, 1 core) | "
        f"{main['encode_s_per_image'] * main['images'] / 60:.0f} min "
        f"({main['encode_s_per_image'] * 1e3:.1f} ms an image) | - |",
        f"| app start, new process, bundle already on disk (import {st['import_s']:.1f} s "
        f"excluded) | **{st['start_s']:.2f} s** (load {st['load_s']:.2f}) | < 15 s |",
        f"| files hashed at that start (verified marker) | {st['hashed_files']} | 0 |",
        "| peak resident memory of that process (VmHWM) | "
        f"**{st['maxrss_mb']:,.0f} MB** | < 3 GB |",
        f"| feature page: 16 exemplars, maps, thumbnails, stats (median / max of 20) | "
        f"**{pages[len(pages) // 2] * 1e3:.0f} / {pages[-1] * 1e3:.0f} ms** | < 500 ms |",
        "",
        "Growth law (per component, from this build): size = "
        f"{coef['thumbnail_bytes_per_image'] / 1e3:.1f} kB x distinct images + "
        f"{coef['exemplar_bytes_per_slot']:.0f} B x features x exemplars + "
        f"{(coef['sae_bytes_per_feature'] + coef['feature_index_bytes_per_feature']) / 1e3:.1f}"
        f" kB x features. At the reference shape (24,576 x 128, 1M images): "
        f"**{ref / 1e9:.1f} GB** (target <= 10 GB). The optional patch index "
        "(`--patch-index N`) adds about (width/8 + width + 8) B x N: 8.7 GB for the default "
        "N = 10M at width 768, and is downloaded only by an app that searches patches.\n",
        "Growth (from a small base, one axis changed at a time):\n",
        "| varied | features | exemplars | images | MB | build s |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['axis']} | {r['features']:,} | {r['k']} | {r['images']:,} | "
        f"{r['bytes'] / 1e6:,.1f} | {r['build_s']:.1f} |"
        for r in rows
    ]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="build the reference shape itself")
    ap.add_argument("--fraction", type=int, default=16, help="1/N of the reference (default)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the built bundle")
    args = ap.parse_args(argv)
    frac = 1 if args.full else args.fraction
    shape = {
        "features": REFERENCE["features"] // frac,
        "k": REFERENCE["k"],
        "images": REFERENCE["images"] // frac,
    }
    root = Path(tempfile.mkdtemp(prefix="bundle_scale_", dir=args.workdir))
    try:
        pool, encode_s = thumbnail_pool()
        out = root / "bundle"
        main_run = build(out, shape["features"], shape["k"], shape["images"], pool)
        main_run.update(fraction=frac, encode_s_per_image=encode_s, sizes=sizes(out))
        main_run["start"] = start(out)
        small = REFERENCE["features"] // args.fraction, REFERENCE["images"] // args.fraction
        base = {"features": small[0] // 4, "k": shape["k"], "images": small[1] // 8}
        rows = growth(root, base, pool)
        coef = law(main_run, shape)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    md = _table(main_run, shape, coef, rows, args.full)
    print(md)
    data = {"shape": shape, "main": main_run, "law": coef, "growth": rows}
    data["reference_bytes_predicted"] = predict(coef, REFERENCE, REFERENCE["images"])
    write_section("bundle_scale_full" if args.full else "bundle_scale", md, data)
    return data


if __name__ == "__main__":
    main()
