"""Hugging Face Hub failures as one line that says what to do.

Why: transformers, huggingface_hub and datasets report an uncached model, an unreachable Hub or a
misspelt repo id as a chain of three to five exceptions (``OSError`` from
``LocalEntryNotFoundError`` from ``ConnectError`` ...), which the command line would print as a
traceback. Every place that
fetches something from the Hub by id (a backbone, an ``hf:`` data set, an SAE, a bundle) wraps the
call in :func:`hub_access`; the result is a :class:`HubAccessError` (a ``ValueError``) naming the
thing, why it could not be had, and the command that fixes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "on", "yes", "true"}
# the repo a Hub URL names: .../api/models/<id>/revision/..., .../datasets/<id>/resolve/...
_URL_REPO = re.compile(
    r"huggingface\.co/(?:api/)?(?P<kind>models/|datasets/|spaces/)?"
    r"(?P<id>[\w.-]+(?:/[\w.-]+)?)/(?:resolve|revision|tree|paths-info)/"
)


class HubAccessError(ValueError):
    """Something named by a Hub id could not be fetched; the message says what to do."""


def offline_variable() -> str | None:
    """The offline switch that is on (``HF_HUB_OFFLINE=1`` ...), or None when online."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return name
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:  # read once at import time; the environment may differ now
            return "HF_HUB_OFFLINE"
    except ImportError:
        pass
    return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _names(err: BaseException) -> set[str]:
    return {type(e).__name__ for e in _chain(err)}


def _text(err: BaseException) -> str:
    return " | ".join(str(e) for e in _chain(err))


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path (Hub ids are ``name`` or ``owner/name``)."""
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:[\\/]", name))
    )


def classify(err: BaseException) -> str | None:
    """What a Hub-related exception chain means: ``offline``, ``unreachable``, ``not_found``,
    ``gated``, ``revision``, ``invalid_id``, or None when it is not a Hub access failure."""
    names, text = _names(err), _text(err)
    if "GatedRepoError" in names:
        return "gated"
    if "RevisionNotFoundError" in names or "is not a valid git identifier" in text:
        return "revision"
    if names & {"RepositoryNotFoundError", "DatasetNotFoundError"}:
        return "not_found"
    if "HFValidationError" in names:
        return "invalid_id"
    if "OfflineModeIsEnabled" in names or "OfflineModeIsEnabled" in text:
        return "offline"
    network = names & {"ConnectError", "ConnectTimeout", "gaierror", "ReadTimeout", "ProxyError"}
    local_miss = "LocalEntryNotFoundError" in names
    transformers_miss = "couldn't connect to 'https://huggingface.co'" in text
    datasets_miss = "Couldn't reach" in text and "on the Hub" in text
    if network or local_miss or transformers_miss or datasets_miss:
        return "offline" if offline_variable() else "unreachable"
    return None


def repo_from_error(err: BaseException) -> tuple[str | None, str | None]:
    """(kind, repo id) named by a Hub URL in the exception chain, if any ("Hub repo" for a model
    repo, which may hold a model, an SAE or a bundle; "Hub data set")."""
    for e in _chain(err):
        m = _URL_REPO.search(str(e))
        if m:
            kinds = {"datasets/": "Hub data set", "spaces/": "Hub Space"}
            kind = kinds.get(m.group("kind") or "", "Hub repo")
            return kind, m.group("id")
    return None, None


def hub_message(
    err: BaseException,
    what: str | None = None,
    name: str | None = None,
    revision: str | None = None,
) -> str | None:
    """The one-line message for a Hub access failure ``err``, or None if it is not one.

    ``what`` is the kind of thing (``model``, ``data set``, ``SAE``, ``bundle``) and ``name`` its
    id; both are read from the error's URL when not given.
    """
    reason = classify(err)
    if reason is None:
        return None
    if name is None or what is None:
        kind, repo = repo_from_error(err)
        what, name = what or kind or "the requested files", name or repo
    thing = f"{what} {name!r}" if name else what
    if what.endswith("data set"):
        # datasets caches its own prepared copy; a save_to_disk folder works anywhere
        fetch = (
            "save it where there is a network with datasets' `load_dataset(...).save_to_disk"
            "(FOLDER)` and give FOLDER instead"
        )
    else:
        rev = f" --revision {revision}" if revision else ""
        fetch = f"download it with `hf download {name or '<repo id>'}{rev}`"
    if reason == "offline":
        switch = offline_variable() or "HF_HUB_OFFLINE"
        return (
            f"{thing} is not in the local Hugging Face cache and {switch}=1 is set; "
            f"run once online or {fetch}"
        )
    if reason == "unreachable":
        return (
            f"cannot reach the Hugging Face Hub to fetch {thing}, and it is not in the local "
            f"cache; check the network connection (or proxy), or {fetch}"
        )
    if reason == "gated":
        return (
            f"{thing} is gated on the Hugging Face Hub: accept its terms on its Hub page, then "
            "log in with `hf auth login` (or set HF_TOKEN)"
        )
    if reason == "revision":
        return f"{thing} has no revision {revision!r} on the Hub; check the commit, branch or tag"
    if reason == "invalid_id" and name and looks_like_path(name):
        return f"{thing}: no such folder or file"
    if reason == "invalid_id":
        return f"{thing} is neither a local path nor a valid Hub id (expected owner/name)"
    return (
        f"{thing} is neither a local path nor a repo on the Hugging Face Hub; check the spelling "
        "(a private repo needs `hf auth login` or HF_TOKEN)"
    )


def hub_error(
    err: BaseException, what: str, name: str | None, revision: str | None = None
) -> HubAccessError | None:
    """``err`` as a :class:`HubAccessError` about ``what`` ``name``, or None if unrelated.

    With ``name`` None the repo id is read from the error (when the id given is not the Hub repo,
    as for ``open_clip:<arch>/<pretrained>``)."""
    if isinstance(err, HubAccessError):
        return err
    msg = hub_message(err, what, name, revision)
    return HubAccessError(msg) if msg else None


@contextmanager
def hub_access(
    what: str, name: str | os.PathLike | None, revision: str | None = None
) -> Iterator[None]:
    """Turn a Hub access failure raised inside the block into a :class:`HubAccessError`.

    Other exceptions pass through unchanged, so a genuine bug still has its traceback.
    """
    try:
        yield
    except HubAccessError:
        raise
    except Exception as err:
        mapped = hub_error(err, what, None if name is None else str(name), revision)
        if mapped is None:
            raise
        raise mapped from err


def missing_local(what: str, name: str) -> FileNotFoundError | None:
    """A :class:`FileNotFoundError` when ``name`` can only be a local path and does not exist."""
    if looks_like_path(name) and not Path(name).expanduser().exists():
        return FileNotFoundError(f"{what} {name!r}: no such folder or file")
    return None


__all__ = [
    "HubAccessError",
    "OFFLINE_VARIABLES",
    "classify",
    "hub_access",
    "hub_error",
    "hub_message",
    "missing_local",
    "offline_variable",
    "repo_from_error",
    "looks_like_path",
]
