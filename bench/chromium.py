"""Debian's headless Chromium for the latency benchmarks (one launch recipe for all of them).

The networking flags keep Chromium from flooding the closed network with refused connections.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def available() -> bool:
    """Chromium and Playwright are both installed (browser timings are skipped otherwise)."""
    if not Path(CHROMIUM).exists():
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def new_page(p, profile: str, timeout_ms: int = 120_000):
    """A page in a fresh persistent context (``p``: a started sync Playwright)."""
    ctx = p.chromium.launch_persistent_context(
        profile,
        executable_path=CHROMIUM,
        headless=True,
        args=ARGS,
        viewport={"width": 1440, "height": 1000},
    )
    ctx.set_default_timeout(timeout_ms)
    return ctx.new_page()
