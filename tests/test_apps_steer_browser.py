"""Real-browser tests of the segmentation and classification steering apps: Debian's headless
Chromium driven by Playwright against the apps served on localhost, on the offline default bundle
(real DINOv2-S, layer 10) with its digit-scenes segmentation probe and digits classification probe.

Each test picks an example (or uploads a file), selects patches by dragging on the patch grid,
moves feature sliders, asserts that the edited output on the page changes, and saves a
screenshot (PNG) under ``$SAESCOPE_SCREENSHOTS`` (default ``runs/screenshots``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Debian's chromium: the `chromium` fixture (tests/fixtures_browser.py) skips these tests if absent.
pytestmark = [pytest.mark.slow, pytest.mark.browser]

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def probe_bundle() -> Path:
    """The offline default bundle (layer 10 of the real DINOv2-S saliency fine-tune) with its
    digit probes: what the apps show by default. Built once per machine and cached (the probes
    test builds it too); fitting probes on a fresh bundle here would cost minutes on 2 cores."""
    from saescope.train.default_bundle import ensure_default_bundle

    return Path(ensure_default_bundle(progress=False))


def set_slider(page, slot: int, value: float) -> None:
    """Move a feature slider the way a visitor's drag ends: the range input gets a new value."""
    page.locator(f"#slot-{slot} input[type=range]").fill(str(value))


def pick_example(page, caption_start: str) -> None:
    page.locator("#examples button").filter(has_text=caption_start).first.click()


# ------------------------------------------------------------------------------ segmentation
@pytest.fixture(scope="module")
def segment_app(probe_bundle, serve):
    from saescope.apps.segment import build_app

    served = serve(build_app(str(probe_bundle), warm_up=True))
    yield served
    served.close()


def test_segment_example_select_slide(segment_app, page, ui, wait_for) -> None:
    from playwright.sync_api import expect

    page.goto(segment_app.url)
    expect(page.locator("#picker .pp-empty")).to_be_visible()
    expect(page.locator("#head-info")).to_contain_text("held-out pixel accuracy")
    pick_example(page, "contains")  # a held-out digit scene
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    expect(page.locator("#legend-before")).to_contain_text("background")
    expect(page.locator("#edits")).to_contain_text("No edits")
    expect(page.locator("#effect")).to_contain_text("0.0% of pixels changed class")
    expect(page.locator("#slot-0-feature input")).not_to_have_value("")
    page.wait_for_function("document.querySelectorAll('#candidates img').length >= 5")

    # select a block of patches by dragging; the candidates follow the selection
    ui.drag("#picker .pp-grid", (0.2, 0.2), (0.8, 0.8))
    n_sel = page.locator("#picker .pp-cell.on").count()
    assert n_sel > 50
    expect(page.locator("#sel-info")).to_contain_text(f"{n_sel} of 256 patches selected")
    after_before = ui.image_bytes("#seg-after img")

    # amplify the two strongest candidates on all patches: the segmentation changes
    page.locator("#scope label").filter(has_text="all patches").click()
    set_slider(page, 0, 5)
    expect(page.locator("#edits")).to_contain_text("Active edits on all patches")
    set_slider(page, 1, 5)
    expect(page.locator("#edits")).to_contain_text(
        "× 5",
    )
    expect(page.locator("#edits")).to_contain_text(", #")  # two features edited at once
    expect(page.locator("#effect")).not_to_contain_text("0.0% of pixels changed class")
    assert wait_for(lambda: ui.image_bytes("#seg-after img") != after_before, timeout=60)
    assert ui.image_bytes("#seg-changed img")
    expect(page.locator("#timing")).to_contain_text("steering")
    ui.shot("segment")

    # reset: every slider back to 1, the output equals the original again
    page.locator("#reset").click()
    expect(page.locator("#edits")).to_contain_text("No edits")
    expect(page.locator("#effect")).to_contain_text("0.0% of pixels changed class")
    expect(page.locator("#slot-0 input[type=range]")).to_have_value("1")


def test_segment_bad_upload_then_photo(segment_app, page, ui, awkward_files, tmp_path) -> None:
    from playwright.sync_api import expect

    files = awkward_files(tmp_path / "bad")
    page.goto(segment_app.url)
    for name, words in [("corrupt.png", "corrupt"), ("huge.png", "above the limit")]:
        ui.upload(files[name])
        expect(page.locator(".toast-body").filter(has_text=words).first).to_be_visible()
        expect(page.locator("#status .sae-error")).to_contain_text(words)
    assert "Traceback" not in page.content()
    ui.shot("segment-bad-upload")
    pick_example(page, "photo")
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    expect(page.locator("#status")).to_contain_text("explains")
    ui.click_cell("#picker .pp-grid", (0.5, 0.5))
    expect(page.locator("#sel-info")).to_contain_text("1 of 256 patches selected")


# ------------------------------------------------------------------------------ classification
@pytest.fixture(scope="module")
def classify_app(probe_bundle, serve):
    from saescope.apps.classify import build_app

    served = serve(build_app(str(probe_bundle), warm_up=True))
    yield served
    served.close()


def test_classify_example_select_slide(classify_app, page, ui) -> None:
    from playwright.sync_api import expect

    page.goto(classify_app.url)
    expect(page.locator("#head-info")).to_contain_text("held-out accuracy")
    pick_example(page, "true class")  # a held-out digit
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    expect(page.locator("#pred-before")).to_contain_text("Predicted:")
    expect(page.locator("#pred-after")).to_contain_text("Prediction unchanged")
    expect(page.locator("#probs-table")).to_contain_text("before")
    table_before = page.locator("#probs-table").inner_text()

    ui.drag("#picker .pp-grid", (0.25, 0.1), (0.75, 0.9))
    n_sel = page.locator("#picker .pp-cell.on").count()
    expect(page.locator("#sel-info")).to_contain_text(f"{n_sel} of 256 patches selected")
    # the strongest candidates, amplified on every token the probe can see
    page.locator("#scope label").filter(has_text="CLS").click()
    for slot in range(3):
        set_slider(page, slot, 5)
    expect(page.locator("#edits")).to_contain_text("and the CLS token")
    expect(page.locator("#effect")).to_contain_text("total variation")
    page.wait_for_function(
        "old => document.querySelector('#probs-table').innerText !== old", arg=table_before
    )
    assert ui.image_bytes("#probs-after img")
    ui.shot("classify")
