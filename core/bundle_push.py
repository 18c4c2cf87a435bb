"""Publishing a bundle to the Hugging Face Hub: part by part, resumable, manifest last.

Why not one ``upload_folder``: an ImageNet bundle is several GB (``bench/RESULTS.md``); one commit
of everything restarts from zero when the connection drops, and a repo whose upload stopped half
way would still show the previous ``bundle.json`` over new, mismatched files. Here:

1. the repo's ``bundle.json`` (if any) is deleted first, so no reader takes a repo in the middle of
   an upload for a complete bundle (it is "not a saescope bundle: no bundle.json" until step 3);
2. each part (top-level folder or file: ``sae/``, ``exemplars/``, ``indices/``, the thumbnails,
   ...) is one commit; a ledger in the user cache records the files each finished commit held,
   with their sha256, so a re-run after an interruption skips what is already on the Hub;
3. ``bundle.json`` and the card go last, in the commit that makes the bundle complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saescope.core.bundle_files import MANIFEST, MARKER, verify_bundle
from saescope.core.fileio import atomic_write_json
from saescope.core.paths import cache_dir

LAST = (MANIFEST, "README.md")  # uploaded in the final commit, in this order of importance


def upload_parts(manifest: dict) -> dict[str, list[str]]:
    """The manifest's files grouped by top-level folder or file (one commit each), in order."""
    parts: dict[str, list[str]] = {}
    for rel in sorted(manifest["files"]):
        if rel in LAST:
            continue
        parts.setdefault(rel.split("/", 1)[0], []).append(rel)
    return parts


def ledger_path(folder: Path, repo_id: str, revision: str | None) -> Path:
    """Where the resume ledger of uploading ``folder`` to ``repo_id`` lives (user cache)."""
    key = f"{folder.resolve()}\n{repo_id}\n{revision or 'main'}"
    return cache_dir("uploads") / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_ledger(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        return {str(k): str(v) for k, v in data.get("uploaded", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}  # no ledger (or a damaged one): upload everything again, which is safe


def _stderr(msg: str) -> None:
    print(f"[push] {msg}", file=sys.stderr, flush=True)


def push_bundle(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    api: Any = None,
    revision: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> str:
    """Verify (every file re-hashed), then upload a bundle part by part, ``bundle.json`` last.

    Re-running after an interruption resumes: parts whose files went up in a finished commit
    (same sha256) are skipped. Returns the repo URL.
    """
    folder = Path(folder)
    manifest = verify_bundle(folder, trust_marker=False)
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    say = log or (
        (lambda m: print(f"[push] {m}", file=sys.stderr, flush=True)) if progress else None
    )
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    ledger_file = ledger_path(folder, repo_id, revision)
    done = _read_ledger(ledger_file)
    files = manifest["files"]
    if api.file_exists(repo_id, MANIFEST, repo_type="model", revision=revision):
        api.delete_file(
            MANIFEST,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message="saescope: upload in progress (bundle.json comes back last)",
        )
    parts = upload_parts(manifest)
    for n, (part, rels) in enumerate(parts.items(), 1):
        todo = [r for r in rels if done.get(r) != files[r]["sha256"]]
        size = sum(files[r]["bytes"] for r in todo)
        if not todo:
            if say:
                say(f"{n}/{len(parts)} {part}: already on the Hub")
            continue
        if say:
            say(f"{n}/{len(parts)} {part}: {len(todo)} files, {size / 1e6:.1f} MB")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            path_in_repo=None,
            commit_message=f"saescope bundle part {part}",
            repo_type="model",
            revision=revision,
            allow_patterns=todo,
            ignore_patterns=[MARKER, "*.tmp"],
        )
        done.update({r: files[r]["sha256"] for r in todo})
        atomic_write_json(
            ledger_file, {"repo_id": repo_id, "folder": str(folder), "uploaded": done}, fsync=False
        )
    last = [r for r in LAST[::-1] if (folder / r).is_file()]  # card first, manifest at the end
    for rel in last:
        api.upload_file(
            path_or_fileobj=str(folder / rel),
            path_in_repo=rel,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=f"saescope bundle {folder.name}: {rel}"
            + (" (bundle complete)" if rel == MANIFEST else ""),
        )
    ledger_file.unlink(missing_ok=True)
    if say:
        say(f"bundle {folder.name} complete on {repo_id}")
    return f"https://huggingface.co/{repo_id}"


__all__ = ["LAST", "ledger_path", "push_bundle", "upload_parts"]
