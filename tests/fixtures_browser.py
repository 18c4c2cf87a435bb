"""Real-browser fixtures: Debian's headless Chromium through Playwright, one context per module, a
page that fails on JavaScript errors, and the actions tests do on it. Split out of
``tests/conftest.py`` (which registers this module in ``pytest_plugins``); tests take these as
arguments and never import this module."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
BROWSER_TIMEOUT = 120_000  # ms: a busy 2-core CI machine is slow, a real hang still fails
SCREENSHOTS = Path(os.environ.get("SAESCOPE_SCREENSHOTS") or ROOT / "runs" / "screenshots")


# ------------------------------------------------------------------------------ browser
@pytest.fixture(scope="session")
def chromium() -> dict[str, Any]:
    """Keyword arguments for Playwright's ``launch_persistent_context`` on Debian's headless
    Chromium (a test tool's own browser download cannot work offline); skips when it is missing.
    Session-scoped, so the skip comes before any module fixture builds a bundle."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) "
            "to run the real-browser app tests"
        )
    return {"executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def browser_page(chromium):
    """One browser context per module (a private profile, removed afterwards)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, **chromium, viewport={"width": 1440, "height": 1000}
        )
        ctx.set_default_timeout(BROWSER_TIMEOUT)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser_page):
    """A fresh page; the test fails if the page raised a JavaScript error."""
    from playwright.sync_api import expect

    expect.set_options(timeout=BROWSER_TIMEOUT)  # assertions wait as long as actions (busy CI)
    pg = browser_page.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


class PageActions:
    """What the browser tests do to a page: drag and click on a patch grid, upload, read images,
    save a screenshot (PNG) under ``$SAESCOPE_SCREENSHOTS`` (default ``runs/screenshots``)."""

    def __init__(self, page, shots: Path = SCREENSHOTS):
        self.page = page
        self.shots = shots

    def srcs(self, selector: str) -> list[str]:
        return self.page.locator(selector).evaluate_all(
            "els => els.map(e => e.currentSrc || e.src)"
        )

    def image_bytes(self, selector: str) -> bytes:
        src = self.page.locator(selector).first.evaluate("e => e.currentSrc || e.src")
        return self.page.request.get(src).body()

    def drag(
        self, grid_selector: str, start: tuple[float, float], end: tuple[float, float]
    ) -> None:
        """Press at ``start`` and release at ``end`` (fractions of the grid's box)."""
        box = self.page.locator(grid_selector).bounding_box()
        x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
        x1, y1 = box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1]
        self.page.mouse.move(x0, y0)
        self.page.mouse.down()
        self.page.mouse.move(x1, y1, steps=12)
        self.page.mouse.up()

    def click_cell(self, grid_selector: str, frac: tuple[float, float]) -> None:
        box = self.page.locator(grid_selector).bounding_box()
        self.page.mouse.click(box["x"] + box["width"] * frac[0], box["y"] + box["height"] * frac[1])

    def upload(self, path: Path) -> None:
        self.page.locator("#upload input[type=file]").set_input_files(str(path))

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        return path


@pytest.fixture()
def ui(page) -> PageActions:
    """:class:`PageActions` on the test's ``page``."""
    return PageActions(page)
