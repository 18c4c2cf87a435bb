"""Every app's command line: the shared options, and a missing bundle is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ["browser", "compare", "segment", "classify"]


@pytest.mark.parametrize("app", APPS)
def test_app_cli_shared_options_and_missing_bundle(app: str, tmp_path: Path) -> None:
    from saescope.apps import browser, classify, compare, segment

    module = {"browser": browser, "compare": compare, "segment": segment, "classify": classify}[app]
    args = module.parse_args(["--host", "0.0.0.0", "--port", "7999", "--share", "--no-examples"])
    assert (args.host, args.port, args.share, args.examples) == ("0.0.0.0", 7999, True, False)
    missing = str(tmp_path / "no-such-bundle")
    args = ["--left", missing, "--right", missing] if app == "compare" else ["--bundle", missing]
    # the console script a user runs (pyproject [project.scripts])
    script = str(Path(sys.executable).parent / f"saescope-{app}")
    r = subprocess.run(
        [script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error:" in r.stderr and "no-such-bundle" in r.stderr and "Traceback" not in r.stderr
