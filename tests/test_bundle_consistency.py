"""A bundle whose parts disagree (issue 14, defect 4): ``Bundle.load`` + ``check_bundle`` refuse
it with one BundleError line naming both sides, never a wrong page or a warm-up traceback.

Every case starts from a real tiny bundle (random 2-block DINOv2, width 32, TopK SAE with 128
features) completed with a feature index, a patch index, matches and a linear probe, breaks one
part the way a user would (swapping in another SAE, another bundle's exemplars, ...) and
re-checksums the manifest with ``update_manifest``, so only the cross-checks can catch it.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.core import bundle_parts, exemplars, formats
from saescope.core.bundle import Bundle, BundleError, update_manifest
from saescope.core.bundle_check import (
    check_backbone,
    check_bundle,
    check_manifest_fields,
    load_manifest,
)
from saescope.core.index import VectorIndex
from saescope.core.matches import Matches
from saescope.core.probes import LinearProbe
from saescope.core.sae import SAE, SAEConfig
from saescope.core.sae_io import save_sae

D_IN, D_SAE, GRID = 32, 128, (16, 16)
THUMBS = "thumbnails.safetensors"


def _random_index(d: int, n: int, kind: str, meta: dict) -> VectorIndex:
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    return VectorIndex.build(x, metric="cosine", index_type="flat", kind=kind, meta=meta)


def _matches(n_a: int, n_b: int, k: int = 5) -> Matches:
    g = torch.Generator().manual_seed(0)
    return Matches(
        torch.randint(0, n_b, (n_a, k), generator=g),
        torch.rand(n_a, k, generator=g),
        torch.randint(0, n_a, (n_b, k), generator=g),
        torch.rand(n_b, k, generator=g),
        "decoder_cosine",
    )


def _probe(d_in: int, model_id: str) -> LinearProbe:
    return LinearProbe(d_in, ["a", "b"], backbone_id=model_id, name="p")


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_bundle) -> Path:
    """A complete tiny bundle: SAE, exemplars, thumbnails, both indices, matches and a probe."""
    from saescope.train.indices import feature_index

    folder = tiny_bundle(tmp_path_factory.mktemp("consistency"), "tiny")
    sae = Bundle.load(folder).sae
    model_id, layer = sae.cfg.model_id, sae.cfg.layer
    feature_index(sae).save(folder / "indices" / "features.faiss")
    meta = {"n_patches": GRID[0] * GRID[1], "model_id": model_id, "layer": layer}
    _random_index(D_IN, 300, "patches", meta).save(folder / "indices" / "patches.faiss")
    _matches(D_SAE, 64).save(folder / "matches" / "other.safetensors")
    _probe(D_IN, model_id).save(folder / "probes", "p")

    def complete(info: dict) -> None:
        info["components"].update(
            feature_index="indices/features.faiss",
            patch_index="indices/patches.faiss",
            matches={"other": "matches/other.safetensors"},
            probes={"p": {"path": "probes/p", "kind": "classification"}},
        )
        info["model"]["d_model"] = D_IN
        info["layer"] = layer
        info["sae"] = {"d_sae": D_SAE, "architecture": "topk"}
        info["layout"] = {"grid": list(GRID)}

    update_manifest(folder, complete)
    return folder


@pytest.fixture()
def copy(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "bundle"))


def _rechecksum(folder: Path) -> Path:
    update_manifest(folder, lambda info: None)
    return folder


def _swap_sae(folder: Path, **change) -> Path:
    cfg = Bundle.load(folder).sae.cfg
    kw = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "k": 4, "model_id": cfg.model_id}
    save_sae(SAE(SAEConfig(**{**kw, "layer": cfg.layer, **change}), seed=1), folder / "sae")
    return _rechecksum(folder)


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def _other_width_exemplars(folder: Path, build_test_bundle, synthetic_items) -> Path:
    """Exemplars (and statistics) of an SAE with 64 features, built on the same model."""
    model = Bundle.load(folder).model["model_id"]
    other = build_test_bundle(
        folder.parent / "narrow", model, 0, items=synthetic_items(n=6), expansion=2, k=4
    )
    shutil.rmtree(folder / "exemplars")
    shutil.copytree(other / "exemplars", folder / "exemplars")
    return _rechecksum(folder)


def _other_width_stats(folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    path = folder / "exemplars" / "feature_stats.safetensors"
    stats = load_file(str(path))
    save_file({k: v[:64] if k != "bin_edges" else v for k, v in stats.items()}, str(path))
    return _rechecksum(folder)


def _feature_index_64(folder: Path) -> Path:
    from saescope.train.indices import feature_index

    other = SAE(SAEConfig(d_in=D_IN, d_sae=64, k=4))
    feature_index(other).save(folder / "indices" / "features.faiss")
    return _rechecksum(folder)


def _patch_index_48(folder: Path) -> Path:
    _random_index(48, 100, "patches", {}).save(folder / "indices" / "patches.faiss")
    return _rechecksum(folder)


def _matches_64(folder: Path) -> Path:
    _matches(64, D_SAE).save(folder / "matches" / "other.safetensors")
    return _rechecksum(folder)


def _probe_48(folder: Path) -> Path:
    _probe(48, Bundle.load(folder).model["model_id"]).save(folder / "probes", "p")
    return _rechecksum(folder)


def _ood(folder: Path, d_sae: int, d_in: int) -> Path:
    """A real OOD suite (SAE and raw scorers) fitted on image summaries of the given widths."""
    from saescope.core.ood.scorers import default_scorers
    from saescope.core.ood.suite import OODSuite
    from saescope.core.ood.summary import ImageSummary
    from saescope.train.ood_bundle import add_ood_to_bundle

    r, n = np.random.default_rng(0), 30
    summary = ImageSummary(
        fvu=r.random(n).astype(np.float32),
        code_mean=r.random((n, d_sae)).astype(np.float32),
        fire_count=r.integers(0, 5, (n, d_sae)).astype(np.uint16),
        raw_mean=r.standard_normal((n, d_in)).astype(np.float32),
        n_patches=GRID[0] * GRID[1],
    )
    scorers = default_scorers(("sae", "raw"), k=3, raw_fields=("raw_mean",))
    cfg = Bundle.load(folder).sae.cfg
    meta = {"model_id": cfg.model_id, "layer": cfg.layer}
    add_ood_to_bundle(folder, OODSuite.fit(scorers, summary, meta=meta))
    return folder


def _manifest_field(change: Callable[[dict], None]) -> Callable[[Path], Path]:
    def apply(folder: Path) -> Path:
        update_manifest(folder, change)
        return folder

    return apply


def _raw_manifest(change: Callable[[dict], None]) -> Callable[[Path], Path]:
    def apply(folder: Path) -> Path:
        _edit_json(folder / "bundle.json", change)
        return folder

    return apply


def _truncate(folder: Path) -> Path:
    path = folder / "exemplars" / "exemplars.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return folder


def _flip_bit(folder: Path) -> Path:
    path = folder / "sae" / "sae.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    return folder


def _grid(folder: Path) -> Path:
    _edit_json(folder / "exemplars" / "exemplars.json", lambda m: m.update(grid=[8, 8]))
    return _rechecksum(folder)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CASES: list[tuple[str, Callable, str]] = [
    ("missing folder", lambda f: f.parent / "no" / "such" / "bundle", "neither a folder nor a Hub"),
    (
        "folder without a manifest",
        lambda f: f / "sae",
        r"is not a saescope bundle: no bundle\.json",
    ),
    ("a file, not a folder", lambda f: f / "thumbnails.json", "is a file; a bundle is a folder"),
    ("truncated file", _truncate, r"truncated or wrong size: exemplars/exemplars\.safetensors"),
    ("wrong checksum", _flip_bit, r"checksum mismatch: sae/sae\.safetensors"),
    (
        "swapped SAE of another width",
        lambda f: _swap_sae(f, d_sae=64),
        r"exemplars cover 128 features but the SAE has 64 "
        r"\(exemplars/exemplars\.safetensors vs sae/config\.json\)",
    ),
    (
        "swapped SAE of another input width",
        lambda f: _swap_sae(f, d_in=48),
        r"the feature index holds 32-d vectors but the SAE reads 48-d activations "
        r"\(indices/features\.faiss\.json vs sae/config\.json\)",
    ),
    (
        "swapped SAE of another layer",
        lambda f: _swap_sae(f, layer=1),
        r"exemplars were built on layer 0 but the SAE reads layer 1 "
        r"\(exemplars/exemplars\.json vs sae/config\.json\)",
    ),
    (
        "swapped SAE of another model",
        lambda f: _swap_sae(f, model_id="facebook/dinov2-small"),
        r"exemplars were built on '.*' but the SAE was trained on 'facebook/dinov2-small'",
    ),
    (
        "exemplars of another width",
        "other_exemplars",
        r"exemplars cover 64 features but the SAE has 128 "
        r"\(exemplars/exemplars\.safetensors vs sae/config\.json\)",
    ),
    (
        "statistics of another width",
        _other_width_stats,
        r"feature statistics cover 64 features but the exemplars 128 "
        r"\(exemplars/feature_stats\.safetensors vs exemplars/exemplars\.safetensors\)",
    ),
    (
        "maps that do not fit the grid",
        _grid,
        r"exemplar maps have 256 patches but the grid 8x8 has 64",
    ),
    (
        "feature index of another width",
        _feature_index_64,
        r"the feature index holds 64 decoder directions but the SAE has 128 "
        r"\(indices/features\.faiss\.json vs sae/config\.json\)",
    ),
    (
        "patch index of another input width",
        _patch_index_48,
        r"the patch index holds 48-d vectors but the SAE reads 32-d activations",
    ),
    (
        "matches of another width",
        _matches_64,
        r"the matches with other cover 64 features but the SAE has 128 "
        r"\(matches/other\.safetensors vs sae/config\.json\)",
    ),
    (
        "probe head of another width",
        _probe_48,
        r"probe 'p' reads 48-d tokens but the SAE reads 32-d activations "
        r"\(probes/p\.json vs sae/config\.json\)",
    ),
    (
        "OOD calibration of another width",
        lambda f: _ood(f, 64, D_IN),
        r"OOD scorer 'sae_rare' counts 64 features but the SAE has 128 "
        r"\(ood/ood\.safetensors vs sae/config\.json\)",
    ),
    (
        "OOD calibration of another input width",
        lambda f: _ood(f, D_SAE, 48),
        r"OOD scorer 'raw_maha_layer' is 48-d but the SAE reads 32-d activations",
    ),
    (
        "manifest model block of another width",
        _manifest_field(lambda i: i["model"].update(d_model=64)),
        r"the manifest's model has d_model=64 but the SAE reads 32-d activations "
        r"\(bundle\.json vs sae/config\.json\)",
    ),
    (
        "manifest sae block of another width",
        _manifest_field(lambda i: i["sae"].update(d_sae=4096)),
        r"the manifest's sae block says 4096 features but the SAE has 128",
    ),
    (
        "component pointing to a missing file",
        _manifest_field(lambda i: i["components"].update(feature_index="indices/gone.faiss")),
        r"component 'feature_index' points to indices/gone\.faiss, which is missing",
    ),
    (
        "component pointing outside the bundle",
        _manifest_field(lambda i: i["components"].update(sae="../tiny-model")),
        r"field components\.sae points outside the bundle folder: '\.\./tiny-model'",
    ),
    (
        "non-integer format_version",
        _raw_manifest(lambda m: m.update(format_version="1.x")),
        r"field format_version must be an integer, got '1\.x'",
    ),
    (
        "fractional format_version",
        _raw_manifest(lambda m: m.update(format_version=1.5)),
        r"field format_version must be an integer, got 1\.5",
    ),
    (
        "newer format_version",
        _raw_manifest(lambda m: m.update(format_version=formats.BUNDLE.version + 1)),
        r"unknown bundle format version 2, newer than this saescope reads \(1\); upgrade",
    ),
    (
        "files of the wrong type",
        _raw_manifest(lambda m: m.update(files=["sae/config.json"])),
        r"field '?files'? must be an object",
    ),
]


@pytest.mark.parametrize("name, breaks, message", CASES, ids=[c[0] for c in CASES])
def test_bad_bundle_is_one_error_naming_the_part(
    name: str, breaks, message: str, copy: Path, build_test_bundle, synthetic_items
) -> None:
    if breaks == "other_exemplars":
        target = _other_width_exemplars(copy, build_test_bundle, synthetic_items)
    else:
        target = breaks(copy)
    with pytest.raises(BundleError, match=message) as err:
        b = Bundle.load(target)
        check_bundle(b)
        check_bundle(b)  # the lead calls it inside Bundle.load too: twice must be harmless
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_good_bundle_passes_twice_and_works(copy: Path) -> None:
    b = Bundle.load(_ood(copy, D_SAE, D_IN))
    check_bundle(b)
    check_bundle(b)
    check_backbone(b, b.backbone)
    assert b.sae.cfg.d_sae == b.exemplars.n_features == D_SAE
    assert b.feature_index.n == D_SAE and len(b.stats(0)["histogram"]) > 0
    assert b.load_head("p").d_in == D_IN and len(b.thumbnails) > 0
    assert b.has("ood") and b.components["matches"] == {"other": "matches/other.safetensors"}


def test_backbone_of_another_width_is_refused(copy: Path) -> None:
    """Without any other width-bearing part, the backbone itself catches a swapped SAE."""

    def strip(info: dict) -> None:
        for name in ("feature_index", "patch_index", "probes"):
            info["components"].pop(name)
        info["model"].pop("d_model")

    update_manifest(copy, strip)
    _swap_sae(copy, d_in=48)
    b = Bundle.load(copy)
    check_bundle(b)  # nothing in the bundle itself says 32
    with pytest.raises(
        BundleError,
        match=r"the backbone .* gives 32-d tokens but the SAE reads "
        r"48-d activations \(backbone vs sae/config\.json\)",
    ):
        check_backbone(b, b.backbone)


def test_format_version_messages_name_the_file_and_field(copy: Path) -> None:
    path = copy / "bundle.json"
    for raw, shown in (("1.x", "'1.x'"), (True, "True"), (None, "None"), ([1], r"\[1\]")):
        _edit_json(path, lambda m, raw=raw: m.update(format_version=raw))
        with pytest.raises(
            BundleError,
            match=rf"bundle\.json: field format_version must be an "
            rf"integer, got {shown}$",
        ):
            load_manifest(path)
    _edit_json(path, lambda m: m.update(format_version="1"))
    assert load_manifest(path)["format_version"] == "1"  # safetensors-style string versions
    assert formats.as_version(2.0) == 2 and formats.as_version("+3") == 3
    assert formats.as_version(float("nan")) is None and formats.as_version("1e3") is None
    assert formats.as_version("\uff12") is None  # a full-width digit is no version


def test_head_files_of_a_newer_or_odd_version_are_refused(copy: Path) -> None:
    """Heads wrote a format_version that no reader checked; a newer head is now refused."""
    from saescope.core.heads import HeadError
    from saescope.core.heads.base import read_head_meta

    assert read_head_meta(copy / "probes", "p")["config"]["d_in"] == D_IN
    for raw, message in ((2, "newer than this saescope"), ("2.x", "must be an integer")):
        _edit_json(copy / "probes" / "p.json", lambda m, raw=raw: m.update(format_version=raw))
        with pytest.raises(HeadError, match=rf"p\.json: .*{message}"):
            read_head_meta(copy / "probes", "p")


def test_manifest_fields_refuse_hostile_paths_and_types(copy: Path) -> None:
    m = json.loads((copy / "bundle.json").read_text())
    path = copy / "bundle.json"
    bad = {
        "files": {"/etc/passwd": {"bytes": 1, "sha256": "0" * 64}},
        "components": {"sae": "C:\\sae"},
        "name": ["not", "a", "name"],
        "model": "dinov2",
        "layer": True,
    }
    for key, value in bad.items():
        with pytest.raises(BundleError, match=rf"field {key}"):
            check_manifest_fields({**m, key: value}, path)
    with pytest.raises(BundleError, match="a JSON list instead of an object"):
        check_manifest_fields([m], path)
    path.write_text("[" * 100_000)
    with pytest.raises(BundleError, match="nests too deeply"):
        load_manifest(path)
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(BundleError, match="not UTF-8"):
        load_manifest(path)


def test_exemplar_file_names_agree_with_core_exemplars() -> None:
    """bundle_parts repeats these names to keep torch out of the check; they must not drift."""
    assert bundle_parts.META_FILE == exemplars.META_FILE
    assert bundle_parts.EXEMPLARS_FILE == exemplars.EXEMPLARS_FILE
    assert bundle_parts.STATS_FILE == exemplars.STATS_FILE
    assert bundle_parts.MAP_DTYPES == exemplars.MAP_DTYPES


# ------------------------------------------------------------------------------ cost
def _sparse_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """A valid safetensors file whose data is a hole (no disk used): only the header is real."""
    sizes = {"F16": 2, "F32": 4, "I64": 8, "U8": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        fh.truncate(8 + len(text) + offset)
    return 8 + len(text) + offset


def test_check_reads_headers_only_on_a_10_gb_bundle(tmp_path: Path) -> None:
    """24,576 features x 128 exemplars (the reference scale): the check stays in milliseconds,
    so it never reads the arrays (reading 10 GB takes seconds even from holes)."""
    f, k, d, p = 24_576, 128, 384, 256
    root = tmp_path / "big"
    cfg = SAEConfig(d_in=d, d_sae=f, k=32, model_id="facebook/dinov2-small", layer=10)
    _write(root / "sae" / "config.json", json.dumps(cfg.to_dict()))
    total = _sparse_safetensors(
        root / "sae" / "sae.safetensors",
        {"W_enc": ("F32", (d, f)), "W_dec": ("F32", (f, d)), "b_enc": ("F32", (f,))},
    )
    total += _sparse_safetensors(
        root / "exemplars" / "exemplars.safetensors",
        {"indices": ("I64", (f, k)), "values": ("F32", (f, k)), "maps": ("F16", (f, k, p))},
    )
    stats = {s: ("F32", (f,)) for s in ("frequency", "mean", "mean_active", "max")}
    stats.update(histogram=("I64", (f, 60)), bin_edges=("F32", (61,)))
    total += _sparse_safetensors(root / "exemplars" / "feature_stats.safetensors", stats)
    n_thumbs = 1_000_000
    total += _sparse_safetensors(
        root / "thumbnails.safetensors",
        {
            "data": ("U8", (9_000_000_000,)),
            "offsets": ("I64", (n_thumbs + 1,)),
            "image_index": ("I64", (n_thumbs,)),
        },
    )
    meta = {
        **formats.EXEMPLARS.header(),
        **{"k": k, "n_features": f, "grid": [16, 16], "n_patches": p, "map_dtype": "float16"},
        **{"model_id": cfg.model_id, "layer": 10},
        "images": {"index": [0], "id": ["a"], "source_index": [0]},
    }
    _write(root / "exemplars" / "exemplars.json", json.dumps(meta))
    manifest = {
        **formats.BUNDLE.header(),
        "name": "big",
        "model": {"model_id": cfg.model_id, "d_model": d},
        "layer": 10,
        "sae": {"d_sae": f},
        "components": {"sae": "sae", "exemplars": "exemplars", "thumbnails": THUMBS},
    }
    _write(root / "bundle.json", json.dumps(manifest))  # lists no files: nothing is hashed
    assert total > 10e9
    b = Bundle.load(root)
    t0 = time.perf_counter()
    check_bundle(b)
    seconds = time.perf_counter() - t0
    print(f"check_bundle: {seconds * 1e3:.1f} ms on a {total / 1e9:.1f} GB bundle")
    assert seconds < 0.5, f"check_bundle took {seconds:.2f} s on a {total / 1e9:.0f} GB bundle"


def test_hub_bundle_parts_are_checked_once_downloaded(good: Path, tmp_path: Path) -> None:
    """A Hub bundle fetches components on first use: parts not downloaded yet are skipped (no
    download forced, no false alarm) and checked when present (``Bundle.fetch`` calls again)."""
    from saescope.core.bundle import HubFiles

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    shutil.copy(good / "bundle.json", snapshot)
    manifest = json.loads((snapshot / "bundle.json").read_text())
    b = Bundle(snapshot, manifest, hub=HubFiles("someone/tiny", "0" * 40))
    check_bundle(b)  # only bundle.json is here
    shutil.copytree(good / "sae", snapshot / "sae")
    shutil.copytree(good / "exemplars", snapshot / "exemplars")
    check_bundle(b)
    _matches(64, D_SAE).save(snapshot / "matches" / "other.safetensors")
    with pytest.raises(BundleError, match="the matches with other cover 64 features"):
        check_bundle(b)
    del manifest["files"]["indices/features.faiss"]  # listed nowhere: missing, not "not fetched"
    with pytest.raises(BundleError, match="component 'feature_index' points to"):
        check_bundle(b)
