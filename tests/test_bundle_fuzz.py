"""Property-based fuzzing of bundle manifests (issue 14): a damaged or hostile ``bundle.json``
(fields removed, wrong types, sizes and checksums that disagree, components pointing to missing
paths or out of the folder, odd ``format_version`` values, nested garbage, broken bytes) ends in
one of the project's own errors, or loads and gives exactly the right components; never a
``KeyError``, ``TypeError``, ``AttributeError``, ``RecursionError``, never a hang.

The project's own errors a bundle may raise (all ValueError subclasses, one line each):
``BundleError`` (manifest, files, cross-checks), ``CheckpointError`` (the SAE folder),
``ExemplarError`` (exemplars), ``IndexFileError`` (a FAISS index and its sidecar) and
``HeadError`` (probe heads).

Each example rewrites only ``bundle.json`` of one copy of a real tiny bundle, then runs what
``Bundle.load`` will run once wired (``load_manifest``: parse + field checks), ``Bundle.load``,
``check_bundle`` and touches the components.
"""

from __future__ import annotations

import copy
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saescope.core.bundle import Bundle, BundleError, update_manifest
from saescope.core.bundle_check import check_bundle, load_manifest
from saescope.core.exemplars import ExemplarError
from saescope.core.heads import HeadError
from saescope.core.index import IndexFileError
from saescope.core.sae_io import CheckpointError

OWN_ERRORS = (BundleError, CheckpointError, ExemplarError, IndexFileError, HeadError)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
ODD_VERSIONS = st.one_of(
    st.sampled_from(["1.x", "1", " 1 ", "1.0", "", "01", "v1", "２", 1.0, 1.5, 0, -1, 2, 10**30]),
    st.text(max_size=6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
PATHS = st.sampled_from(
    [
        "missing/path",
        "../outside",
        "../../etc/passwd",
        "/etc",
        "C:/windows",
        "\\\\server\\share",
        "",
        " ",
        ".",
        "sae",
        "exemplars",
        "thumbnails.json",
        "indices/features.faiss",
        "sae/config.json",
        "a\x00b",
        "probes/p",
    ]
)
COMPONENTS = st.sampled_from(
    ["sae", "exemplars", "feature_index", "thumbnails", "patch_index", "ood", "matches", "probes"]
)
MUTATION = st.one_of(
    st.tuples(st.just("remove"), st.integers(0, 10**6)),
    st.tuples(st.just("replace"), st.integers(0, 10**6), JSON),
    st.tuples(st.just("version"), ODD_VERSIONS),
    st.tuples(st.just("bytes"), st.integers(0, 10**6), st.integers(-3, 3) | JSON),
    st.tuples(st.just("sha256"), st.integers(0, 10**6), st.sampled_from(["0" * 64, "F" * 64, ""])),
    st.tuples(st.just("file_key"), st.integers(0, 10**6), PATHS),
    st.tuples(st.just("component"), COMPONENTS, PATHS | JSON),
    st.tuples(
        st.just("table"), st.sampled_from(["matches", "probes"]), st.text(max_size=5), PATHS | JSON
    ),
)
RAW = st.one_of(
    st.none(),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
    st.tuples(st.just("deep"), st.integers(1_000, 200_000)),
    st.tuples(st.just("top"), JSON),
)


def _nodes(d: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON value (dict keys and list indices), parents before children."""
    out = []
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_nodes(v, (*prefix, k)))
    return out


def _parent(m: Any, path: tuple) -> Any:
    for k in path[:-1]:
        m = m[k]
    return m


def _mutate(manifest: dict, op: tuple) -> None:
    kind = op[0]
    files = sorted(manifest.get("files") or {})
    if kind in ("remove", "replace"):
        nodes = _nodes(manifest)
        path = nodes[op[1] % len(nodes)]
        parent = _parent(manifest, path)
        if kind == "remove":
            del parent[path[-1]]
        else:
            parent[path[-1]] = op[2]
    elif kind == "version":
        manifest["format_version"] = op[1]
    elif kind in ("bytes", "sha256") and files and isinstance(manifest.get("files"), dict):
        entry = manifest["files"][files[op[1] % len(files)]]
        if isinstance(entry, dict):
            old = entry.get("bytes")
            entry[kind] = (
                old + op[2]
                if kind == "bytes" and isinstance(op[2], int) and isinstance(old, int)
                else op[2]
            )
    elif kind == "file_key" and files and isinstance(manifest.get("files"), dict):
        manifest["files"][op[2]] = manifest["files"].pop(files[op[1] % len(files)])
    elif kind == "component" and isinstance(manifest.get("components"), dict):
        manifest["components"][op[1]] = op[2]
    elif kind == "table" and isinstance(manifest.get("components"), dict):
        table = manifest["components"].setdefault(op[1], {})
        if isinstance(table, dict):
            table[op[2]] = op[3]


def _serialise(manifest: dict, raw: tuple | None) -> bytes:
    text = json.dumps(manifest, allow_nan=True).encode()
    if raw is None:
        return text
    if raw[0] == "truncate":
        return text[: raw[1] % (len(text) + 1)]
    if raw[0] == "bytes":
        return raw[1]
    if raw[0] == "deep":
        return b"[" * raw[1] + b"]" * raw[1]
    return json.dumps(raw[1], allow_nan=True).encode()


def _open_and_touch(folder: Path) -> dict:
    """What an app does with a bundle: every step that can meet a damaged manifest."""
    load_manifest(folder / "bundle.json")  # the parse + field check Bundle.load will call
    b = Bundle.load(folder)
    check_bundle(b)
    assert isinstance(b.name, str) and isinstance(b.title, str)
    for name in b.probe_names:  # a table may gain or lose entries; each must still read
        assert isinstance(b.probe_info(name)["path"], str)
    return {
        "d_sae": b.sae.cfg.d_sae,
        "n_features": b.exemplars.n_features,
        "stats": b.stats(0),
        "thumbnails": len(b.thumbnails),
        "feature_index": b.feature_index.n,
    }


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory, tiny_bundle) -> tuple[Path, dict, dict]:
    """(working copy, its good manifest, what touching it gives) of a tiny bundle with a feature
    index and a probe besides its SAE, exemplars and thumbnails."""
    from saescope.core.probes import LinearProbe
    from saescope.train.indices import feature_index

    root = tmp_path_factory.mktemp("fuzz")
    good = tiny_bundle(root, "tiny")
    sae = Bundle.load(good).sae
    feature_index(sae).save(good / "indices" / "features.faiss")
    LinearProbe(sae.cfg.d_in, ["a", "b"], backbone_id=sae.cfg.model_id, name="p").save(
        good / "probes", "p"
    )

    def complete(info: dict) -> None:
        info["components"]["feature_index"] = "indices/features.faiss"
        info["components"]["probes"] = {"p": {"path": "probes/p", "kind": "classification"}}
        info["layer"] = sae.cfg.layer
        info["sae"] = {"d_sae": sae.cfg.d_sae}

    manifest = update_manifest(good, complete)
    work = Path(shutil.copytree(good, root / "work"))
    return work, manifest, _open_and_touch(work)


@pytest.mark.timeout(120)
@settings(
    max_examples=40,
    deadline=timedelta(seconds=10),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(MUTATION, min_size=1, max_size=3), raw=RAW)
def test_damaged_manifest_is_an_own_error_or_a_correct_bundle(fuzz_bundle, ops, raw) -> None:
    work, good, expected = fuzz_bundle
    manifest = copy.deepcopy(good)
    for op in ops:
        _mutate(manifest, op)
    (work / "bundle.json").write_bytes(_serialise(manifest, raw))
    try:
        got = _open_and_touch(work)
    except OWN_ERRORS as err:
        assert "\n" not in str(err), f"not one line: {err}"
        return
    assert got == expected, f"loaded a bundle that gives other answers: {ops} {raw}"


def test_fuzz_strategies_reach_every_mutation() -> None:
    """The mutation helpers touch what they claim (a broken helper would fuzz nothing)."""
    m = {
        "format": "x",
        "format_version": 1,
        "files": {"a": {"bytes": 3, "sha256": "s"}},
        "components": {"sae": "sae"},
    }
    for op in [
        ("remove", 0),
        ("replace", 0, None),
        ("version", "1.x"),
        ("bytes", 0, 2),
        ("file_key", 0, "../x"),
        ("component", "sae", "/etc"),
        ("table", "probes", "q", 5),
    ]:
        _mutate(m, op)
    assert m == {
        "format_version": "1.x",
        "files": {"../x": {"bytes": 5, "sha256": "s"}},
        "components": {"sae": "/etc", "probes": {"q": 5}},
    }
    assert (
        _serialise({}, ("deep", 3)) == b"[[[]]]" and _serialise({"a": 1}, ("truncate", 3)) == b'{"a'
    )
