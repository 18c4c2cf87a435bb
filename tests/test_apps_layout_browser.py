"""Real-browser layout tests of the apps (issue 12): what a visitor sees at 1440x1000 in Debian's
headless Chromium. Cards never show another feature's images, captions and labels fit, a bad
upload warns once, and the subtitles name each model once. Screenshots (PNG) go under
``$SAESCOPE_SCREENSHOTS`` (default ``runs/screenshots``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install -r requirements-apps.txt)",
)


def photo_file(tmp_path: Path, index: int = 1) -> Path:
    from saescope.core.sources import open_source

    path = tmp_path / f"photo{index}.jpg"
    open_source("builtin:photos?views=1").load(index).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def compare_app(app_bundle, serve):
    from saescope.apps.compare import build_app

    left = app_bundle(6)
    right = app_bundle(-2)
    served = serve(build_app(str(left), str(right)))
    yield served
    served.close()


@pytest.fixture(scope="module")
def browser_app(app_bundle, serve):
    from saescope.apps.browser import build_app

    served = serve(build_app(str(app_bundle(-2)), warm_up=True))
    yield served
    served.close()


# every 20 ms, what each card of the comparison shows: [side, caption, loaded image or ""]
WATCH_CARDS = """() => { window.__cards = []; window.__watch = setInterval(() => {
  const frame = [];
  for (const side of ['left-top', 'right-top'])
    for (const item of document.querySelectorAll('#' + side + ' .thumbnail-item')) {
      const img = item.querySelector('img'), cap = item.querySelector('.caption-label');
      const shown = img && img.naturalWidth > 0 ? img.currentSrc : '';  // old one while loading
      frame.push([side, cap ? cap.innerText : '', shown]);
    }
  window.__cards.push(frame); }, 20); }"""


def card_ids(page, side: str) -> list[str]:
    return [t.split()[0] for t in page.locator(f"#{side} .caption-label").all_inner_texts()]


def assert_whole(page, selector: str) -> None:
    """Every element of ``selector`` shows its whole text (nothing cut off or ellipsised)."""
    cut = page.locator(selector).evaluate_all(
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1"
        " || e.scrollHeight > e.clientHeight + 1).map(e => e.innerText)"
    )
    assert page.locator(selector).count() > 0 and not cut, f"cut captions: {cut}"


def assert_label_above(page, block: str) -> None:
    """The block's label does not cover its image (it sits above it, or beside it)."""
    a = page.locator(f"{block} label[data-testid=block-label]").bounding_box()
    b = page.locator(f"{block} img").first.bounding_box()
    apart = (
        a["y"] + a["height"] <= b["y"] + 1
        or a["x"] + a["width"] <= b["x"] + 1
        or b["x"] + b["width"] <= a["x"] + 1
    )
    assert apart, (block, a, b)


def test_compare_cards_never_show_another_features_images(compare_app, page, ui, tmp_path):
    """A new selection: no card ever shows the image of another feature under its caption, not
    even while the new images load (served slowly here), and the cards end up matching."""
    from playwright.sync_api import expect

    page.goto(compare_app.url)
    ui.upload(photo_file(tmp_path, 2))
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    page.wait_for_function("document.querySelectorAll('#left-top img').length == 6")
    new_cards = (
        "old => { const caps = [...document.querySelectorAll('#left-top .caption-label')]"
        ".map(e => e.innerText.split('·')[0].trim());"
        " const imgs = [...document.querySelectorAll('#left-top img, #right-top img')];"
        " return caps.length == 6 && caps.join('|') !== old.join('|')"
        " && imgs.length == 12 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )
    on_upload = card_ids(page, "left-top")
    ui.drag("#picker .pp-grid", (0.2, 0.2), (0.5, 0.6))
    expect(page.locator("#sel-info")).to_contain_text("On the right model's grid")
    page.wait_for_function(new_cards, arg=on_upload)
    first = card_ids(page, "left-top")

    def slow(route):  # the new cards' images arrive late, as on a busy server
        time.sleep(0.25)
        route.continue_()

    page.route("**/gradio_api/file=**", slow)
    page.evaluate(WATCH_CARDS)
    page.get_by_role("button", name="Select all").click()
    page.wait_for_function(new_cards, arg=first)
    page.wait_for_timeout(300)
    frames = page.evaluate("() => { clearInterval(window.__watch); return window.__cards; }")
    page.unroute("**/gradio_api/file=**")
    second = [cap.split()[0] for side, cap, _ in frames[-1] if side == "left-top"]
    assert second != first and len(frames) > 10
    # each image belongs to one feature (the same card image is served from the same file):
    # the final cards and the ones before the new selection say which
    owner = {}
    for _side, cap, src in frames[0] + frames[-1]:
        if src:
            owner[src] = cap.split()[0]
    stale = [
        (side, cap, owner[src])
        for frame in frames
        for side, cap, src in frame
        if src and src in owner and owner[src] != cap.split()[0]
    ]
    assert not stale, f"cards showing another feature's image: {stale[:5]}"
    # the final cards: caption ids and image files change together, one file per feature
    final = {cap.split()[0]: src for _, cap, src in frames[-1] if src}
    assert len(set(final.values())) == len(final)
    # a click on a card opens the feature its caption names
    expect(page.locator("#left-top .caption-label")).to_have_count(6)
    third = card_ids(page, "left-top")[2]
    page.locator("#left-top .thumbnail-item").nth(2).click()
    expect(page.locator("#left-feature input")).to_have_value(third.lstrip("#"))
    assert_whole(page, "#left-top .caption-label, #right-top .caption-label")
    ui.shot("compare-cards-new-selection")


def test_compare_header_upload_warning_and_labels(compare_app, page, ui, awkward_files, tmp_path):
    """The subtitle names the shared model once; a corrupt upload shows one warning; the upload
    box's label sits above the image."""
    from playwright.sync_api import expect

    page.goto(compare_app.url)
    sub = page.locator(".sae-header .sae-sub").inner_text()
    assert sub.count("DINOv2-S") == 1 and "layer 6" in sub and "layer 10" in sub, sub
    for side in page.locator(".cmp-side").all_inner_texts():
        assert side.count("DINOv2-S") == 1 and side.count("layer") == 1, side

    files = awkward_files(tmp_path / "bad")
    ui.upload(files["corrupt.png"])
    expect(page.locator("#status .sae-error")).to_contain_text("corrupt")
    page.wait_for_timeout(1500)  # a toast would be up by now
    expect(page.get_by_text("the image data is corrupt")).to_have_count(1)
    expect(page.locator(".toast-body")).to_have_count(0)
    ui.shot("compare-bad-upload")

    ui.upload(photo_file(tmp_path, 1))
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    expect(page.locator("#status .sae-error")).to_have_count(0)
    assert_label_above(page, "#upload")


def test_browser_subtitle_captions_and_labels(browser_app, page, ui, tmp_path) -> None:
    """Feature browser: the model named once under the title; the top features' captions are
    whole; image labels sit above their images."""
    from playwright.sync_api import expect

    page.goto(browser_app.url)
    sub = page.locator(".sae-header .sae-sub").inner_text()
    assert sub.count("DINOv2-S") == 1 and sub.count("layer 10") == 1, sub
    assert "fine-tuned for saliency" in sub and "SAE with" in sub, sub
    # the test bundle's manifest names no dataset: the data part is then left out
    ds = browser_app.demo.engine.bundle.manifest.get("dataset") or {}
    assert ("fitted on" in sub) == bool(ds.get("source")), sub
    ui.upload(photo_file(tmp_path, 1))
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    page.wait_for_function("document.querySelectorAll('#top-features img').length > 0")
    ui.drag("#picker .pp-grid", (0.3, 0.3), (0.7, 0.7))
    expect(page.locator("#sel-info")).to_contain_text("patches selected")
    assert_whole(page, "#top-features .caption-label")
    assert_label_above(page, "#upload")
    top = page.locator("#top-features .caption-label").first.inner_text().split()[0]
    page.locator("#top-features .thumbnail-item").first.click()
    expect(page.locator("#feature-stats h3")).to_contain_text(f"Feature {top.lstrip('#')}")
    page.wait_for_function("document.querySelectorAll('#heat-before img').length > 0")
    expect(page.locator(".progress-text")).to_have_count(0)
    assert_label_above(page, "#heat-before")
    ui.shot("browser-layout")
