"""Where saescope caches what it builds (converted offline model, default bundle, ...)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$SAESCOPE_CACHE`` (default ``~/.cache/saescope``) joined with ``parts``, created."""
    root = Path(os.environ.get("SAESCOPE_CACHE") or Path.home() / ".cache" / "saescope")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
