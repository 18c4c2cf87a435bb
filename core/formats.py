"""Every saescope artefact format, its name and version, in one table, with one manifest check.

Why one table: a reader must refuse a file written by a newer saescope (or a file of another
kind) with a clear message rather than misread it, and the rule for that is the same for every
artefact. Bump a format's version here when its files change incompatibly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Format:
    """A versioned artefact format: ``name`` goes in the manifest's ``format`` field."""

    name: str
    version: int
    kind: str  # in plain words, for error messages ("bundle", "activation-store", ...)

    def header(self) -> dict[str, Any]:
        """The ``format`` / ``format_version`` fields a writer puts in its manifest."""
        return {"format": self.name, "format_version": self.version}

    def check(
        self,
        info: Mapping[str, Any],
        where: Any,
        *,
        error: type[Exception] = ValueError,
        check_name: bool = True,
        default_version: int | None = None,
    ) -> int:
        """Refuse ``info`` if it is another format or from a newer saescope; return its version.

        ``where`` names the file or folder in the message. ``default_version`` is assumed when
        the manifest has no version field (formats that predate the field).
        """
        if not isinstance(info, Mapping):
            raise error(
                f"{where} is not a saescope {self.kind} manifest (a JSON "
                f"{type(info).__name__} instead of an object)"
            )
        if check_name and info.get("format") != self.name:
            raise error(
                f"{where} is not a saescope {self.kind} (format={info.get('format')!r}, "
                f"expected {self.name!r})"
            )
        if "format_version" not in info and default_version is None:
            raise error(f"{where}: field format_version is missing")
        raw = info.get("format_version", default_version)
        version = as_version(raw)
        if version is None:
            raise error(f"{where}: field format_version must be an integer, got {raw!r}")
        if version > self.version:
            raise error(
                f"{where}: unknown {self.kind} format version {version}, newer than this "
                f"saescope reads ({self.version}); upgrade saescope"
            )
        if version < 1:
            raise error(f"{where}: unknown {self.kind} format version {version}")
        return version


def as_version(raw: Any) -> int | None:
    """``raw`` as a format version, or None when it is not an integer.

    Why strict: ``int()`` would read ``1.5`` as 1 and ``True`` as 1, silently accepting a
    manifest no saescope wrote. Accepted: an int, a float with no fraction, or a string of digits
    (safetensors metadata holds strings only).
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,9}\s*", raw):
        return int(raw)
    return None


SAE = Format("saescope-sae", 1, "SAE")
BUNDLE = Format("saescope-bundle", 1, "bundle")
ACTIVATION_STORE = Format("saescope.activation_store", 1, "activation-store")
EXEMPLARS = Format("saescope.exemplars", 1, "exemplars")
VECTOR_INDEX = Format("saescope.vector_index", 1, "vector index")
FEATURE_MATCHES = Format("saescope.feature_matches", 1, "feature matches")
PATCH_IMAGES = Format("saescope.patch_images", 1, "patch-image table")
OOD = Format("saescope.ood", 1, "OOD calibration")
ONTOLOGY = Format("saescope.ontology", 1, "ontology report")
DIFFUSION_STEERING = Format("saescope.diffusion_steering", 1, "diffusion steering artefact")
OFFLINE_MODEL = Format("saescope.offline_model", 1, "converted offline model")
HEAD = Format("saescope.head", 1, "head")  # <stem>.json beside a head's weights
FEATURE_LABELS = Format("saescope.feature_labels", 1, "feature labels")

ALL = [
    SAE,
    BUNDLE,
    ACTIVATION_STORE,
    EXEMPLARS,
    VECTOR_INDEX,
    FEATURE_MATCHES,
    PATCH_IMAGES,
    OOD,
    ONTOLOGY,
    DIFFUSION_STEERING,
    OFFLINE_MODEL,
    HEAD,
    FEATURE_LABELS,
]

__all__ = ["Format", "ALL", "as_version", *[f for f in dir() if f.isupper() and f != "ALL"]]
