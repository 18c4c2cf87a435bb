"""Real-browser tests of both apps: Debian's headless Chromium driven by Playwright against the
app served on localhost, on bundles of the real offline DINOv2-S (saliency fine-tune).

Each test uploads an image, selects patches by clicking and dragging on the patch grid, opens or
toggles a feature, asserts that what is displayed changes, and saves a screenshot (PNG) under
``$SAESCOPE_SCREENSHOTS`` (default ``runs/screenshots``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Debian's chromium: the `chromium` fixture (tests/fixtures_browser.py) skips these tests if absent.
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


# ------------------------------------------------------------------------------ feature browser
@pytest.fixture(scope="module")
def browser_app(app_bundle, serve):
    from saescope.apps.browser import build_app

    served = serve(build_app(str(app_bundle(-2)), warm_up=True))
    yield served
    served.close()


def test_browser_upload_select_toggle(browser_app, page, ui, tmp_path) -> None:
    from playwright.sync_api import expect

    page.goto(browser_app.url)
    expect(page.locator("#picker .pp-empty")).to_be_visible()
    # the feature panel is filled on load (feature 0) before any upload
    expect(page.locator("#feature-stats")).to_contain_text("Feature 0")

    ui.upload(photo_file(tmp_path, 1))
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    expect(page.locator("#status")).to_contain_text("explains")
    expect(page.locator("#sel-info")).to_contain_text("No patches selected")
    page.wait_for_function("document.querySelectorAll('#top-features img').length > 0")
    captions_all = page.locator("#top-features .caption-label").all_inner_texts()

    # click one patch, then drag over a block: the selection and the top features change
    ui.click_cell("#picker .pp-grid", (0.05, 0.05))
    expect(page.locator("#sel-info")).to_contain_text("1 of 256 patches selected")
    ui.drag("#picker .pp-grid", (0.3, 0.3), (0.7, 0.7))
    expect(page.locator("#sel-info")).not_to_contain_text("1 of 256")
    n_sel = page.locator("#picker .pp-cell.on").count()
    assert n_sel > 20
    expect(page.locator("#sel-info")).to_contain_text(f"{n_sel} of 256 patches selected")
    page.wait_for_function(
        "old => JSON.stringify([...document.querySelectorAll('#top-features .caption-label')]"
        ".map(e => e.innerText)) !== old",
        arg=__import__("json").dumps(captions_all),
    )

    # open the strongest feature of the selection by clicking its card
    top_caption = page.locator("#top-features .caption-label").first.inner_text()
    page.locator("#top-features .thumbnail-item").first.click()
    top_id = top_caption.split()[0].lstrip("#")
    expect(page.locator("#feature-stats h3")).to_have_text(re.compile(rf"^Feature {top_id}\b"))
    page.wait_for_function("document.querySelectorAll('#exemplars img').length > 0")
    heat_before = ui.image_bytes("#heat-before img")
    after_before_toggle = ui.image_bytes("#heat-after img")
    head_after_src = ui.srcs("#head-after img")
    expect(page.locator("#edits")).to_contain_text("No edits")

    # switch the feature off on the selection: the displayed maps and the head change
    page.locator("#feature-on input").click()
    expect(page.locator("#edits")).to_contain_text("off")
    expect(page.locator("#effect")).to_contain_text("Edits moved")
    page.wait_for_function(
        "old => { const i = document.querySelector('#head-after img');"
        " return i && (i.currentSrc || i.src) !== old; }",
        arg=head_after_src[0] if head_after_src else "",
    )
    after = ui.image_bytes("#heat-after img")
    assert after != after_before_toggle and after != heat_before
    assert ui.image_bytes("#head-diff img")
    ui.shot("browser")

    # reset: after equals before again
    page.locator("#reset").click()
    expect(page.locator("#edits")).to_contain_text("No edits")
    expect(page.locator("#feature-on input")).to_be_checked()


def test_browser_bad_uploads_show_a_message(browser_app, page, ui, awkward_files, tmp_path) -> None:
    from playwright.sync_api import expect

    files = awkward_files(tmp_path / "bad")
    page.goto(browser_app.url)
    expect(page.locator("#picker .pp-empty")).to_be_visible()
    for name, words in [("not_an_image.png", "not an image"), ("bomb.png", "decompression bomb")]:
        ui.upload(files[name])
        expect(page.locator("#status .sae-error")).to_contain_text(words)
        expect(page.locator(".toast-body")).to_have_count(0)  # one message: no toast as well
        expect(page.locator("#upload input[type=file]")).to_have_count(1)  # box cleared
    assert "Traceback" not in page.content()
    ui.shot("browser-bad-upload")
    # a grey-scale image then works, and the error goes away
    ui.upload(files["grey.png"])
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    expect(page.locator("#status")).to_contain_text("explains")


def test_browser_feature_search_and_related(browser_app, page) -> None:
    from playwright.sync_api import expect

    page.goto(browser_app.url)
    expect(page.locator("#feature-stats")).to_contain_text("Feature 0")
    page.locator("#feature-id input").fill("7")
    page.locator("#feature-id input").press("Enter")
    expect(page.locator("#feature-stats")).to_contain_text("Feature 7")
    page.wait_for_function("document.querySelectorAll('#related img').length > 0")
    first_related = page.locator("#related .caption-label").first.inner_text().split()[0]
    page.locator("#related .thumbnail-item").first.click()
    expect(page.locator("#feature-stats")).to_contain_text(f"Feature {first_related.lstrip('#')}")
    page.locator("#random").click()
    expect(page.locator("#feature-stats")).not_to_contain_text(
        f"Feature {first_related.lstrip('#')}"
    )
    page.locator("#feature-id input").fill("100000")
    page.locator("#feature-id input").press("Enter")
    expect(page.locator("#feature-msg")).to_contain_text("There is no feature 100000")


def test_browser_bad_feature_id_is_a_note_by_the_box(browser_app, page, ui, tmp_path) -> None:
    """An id out of range, negative or not whole: a note next to the box with the valid range,
    the last feature stays on screen, no Error badge; a valid id then opens at once."""
    from playwright.sync_api import expect

    page.goto(browser_app.url)
    box, msg = page.locator("#feature-id input"), page.locator("#feature-msg")
    expect(page.locator("#feature-stats")).to_contain_text("Feature 0")
    box.fill("5")
    box.press("Enter")
    expect(page.locator("#feature-stats h3")).to_have_text(re.compile(r"^Feature 5\b"))
    page.wait_for_function("document.querySelectorAll('#exemplars img').length > 0")
    last = browser_app.demo.engine.d_sae - 1
    for bad, words in [
        ("99999", "There is no feature 99999"),
        ("-3", "There is no feature -3"),
        ("2.5", "2.5 is not a whole number"),
    ]:
        box.fill(bad)
        box.press("Enter")
        expect(msg).to_contain_text(words)
        expect(msg).to_contain_text(f"ids run from 0 to {last}. Still showing feature 5")
        expect(box).to_have_value("5")  # the id shown goes back in the box
        expect(page.locator("#feature-stats h3")).to_have_text(re.compile(r"^Feature 5\b"))
        expect(page.locator(".error")).to_have_count(0)
        expect(page.locator(".toast-body")).to_have_count(0)
    ui.shot("browser-bad-feature-id")
    box.fill("99999")
    page.get_by_role("button", name="Show", exact=True).click()  # Show checks it the same way
    expect(msg).to_contain_text("There is no feature 99999")
    expect(page.locator(".error")).to_have_count(0)
    # nothing is blocked: a valid id opens and the note goes
    box.fill("9")
    box.press("Enter")
    expect(page.locator("#feature-stats h3")).to_have_text(re.compile(r"^Feature 9\b"))
    expect(msg).not_to_contain_text("no feature")
    page.locator("#related .thumbnail-item").first.click()
    expect(page.locator("#feature-stats h3")).not_to_have_text(re.compile(r"^Feature 9\b"))

    # the edit scale's number box applies on Enter, with no click elsewhere
    ui.upload(photo_file(tmp_path, 1))
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    ui.drag("#picker .pp-grid", (0.3, 0.3), (0.6, 0.6))
    expect(page.locator("#sel-info")).to_contain_text("patches selected")
    expect(page.locator("#edits")).to_contain_text("No edits")
    scale = page.locator("#scale input[type=number]")
    scale.fill("2.5")
    scale.press("Enter")
    expect(page.locator("#edits")).to_contain_text("× 2.5")
    expect(page.locator("#effect")).to_contain_text("Edits moved")
    expect(page.locator(".error")).to_have_count(0)
    ui.shot("browser-scale-enter")


def test_browser_share_links(browser_app, page) -> None:
    """``?feature=7`` opens feature 7 (with its label where the bundle has labels); "Copy link"
    copies and shows the link to the feature shown; the address bar follows the feature; a
    bad ``?feature=`` opens the page normally with a note by the feature box."""
    from playwright.sync_api import expect

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(browser_app.url + "?feature=7")
    stats = page.locator("#feature-stats h3")
    expect(stats).to_have_text(re.compile(r"^Feature 7\b"))
    name = browser_app.demo.engine.bundle.feature_name(7)
    assert name  # the test bundles are labelled (app_bundle runs `saescope labels`)
    expect(stats).to_contain_text(name)
    expect(page.locator("#feature-id input")).to_have_value("7")
    page.wait_for_function("window.location.search.includes('feature=7')")
    page.locator("#copy-link").click()
    expect(page.locator("#share-link")).to_contain_text("link copied")
    expect(page.locator("#share-link")).to_contain_text("?feature=7")
    assert page.evaluate("navigator.clipboard.readText()").endswith("?feature=7")
    box = page.locator("#feature-id input")
    box.fill("5")
    box.press("Enter")
    expect(stats).to_have_text(re.compile(r"^Feature 5\b"))
    page.wait_for_function("window.location.search.includes('feature=5')")

    for bad in ("abc", "99999"):
        page.goto(browser_app.url + f"?feature={bad}")
        expect(page.locator("#feature-msg")).to_contain_text("feature id must be a whole number")
        expect(page.locator("#feature-msg")).to_contain_text(f"got '{bad}'")
        expect(stats).to_have_text(re.compile(r"^Feature 0\b"))
        expect(page.locator(".error")).to_have_count(0)


# ------------------------------------------------------------------------------ comparison
@pytest.fixture(scope="module")
def compare_app(app_bundle, serve):
    from saescope.apps.compare import build_app

    left = app_bundle(6)
    right = app_bundle(-2)
    served = serve(build_app(str(left), str(right)))
    yield served
    served.close()


def test_compare_side_by_side_and_matches(compare_app, page, ui, tmp_path) -> None:
    from playwright.sync_api import expect

    page.goto(compare_app.url)
    header = page.locator(".sae-header").inner_text()
    assert "layer 6" in header and "layer 10" in header and "CLIP" not in header
    ui.upload(photo_file(tmp_path, 2))
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    page.wait_for_function(
        "document.querySelectorAll('#left-top img').length > 0 && "
        "document.querySelectorAll('#right-top img').length > 0"
    )
    before = page.locator("#right-top .caption-label").all_inner_texts()
    ui.drag("#picker .pp-grid", (0.2, 0.2), (0.5, 0.6))
    expect(page.locator("#sel-info")).to_contain_text("On the right model's grid")
    page.wait_for_function(
        "old => JSON.stringify([...document.querySelectorAll('#right-top .caption-label')]"
        ".map(e => e.innerText)) !== old",
        arg=__import__("json").dumps(before),
    )

    # the strongest feature of each side was opened on upload; open another one on the left
    card = page.locator("#left-top .thumbnail-item").nth(1)
    left_id = page.locator("#left-top .caption-label").nth(1).inner_text().split()[0]
    card.click()
    expect(page.get_by_text(f"for left {left_id}")).to_be_visible()
    expect(page.locator("#left-feature input")).to_have_value(left_id.lstrip("#"))
    page.wait_for_function("document.querySelectorAll('#left-matches img').length > 0")
    first_match = page.locator("#left-matches .caption-label").first.inner_text().split()[0]
    page.locator("#left-matches .thumbnail-item").first.click()
    expect(page.locator("#right-feature input")).to_have_value(first_match.strip().lstrip("#"))
    page.wait_for_function("document.querySelectorAll('#right-exemplars img').length > 0")
    ui.shot("compare")


def test_compare_right_cards_and_matches(compare_app, page, ui, tmp_path) -> None:
    """The right side's advertised clicks: a top card opens it on the right, a match on the left."""
    from playwright.sync_api import expect

    page.goto(compare_app.url)
    ui.upload(photo_file(tmp_path, 3))
    expect(page.locator("#picker .pp-cell")).to_have_count(256)
    page.wait_for_function("document.querySelectorAll('#right-top img').length > 2")
    right_id = page.locator("#right-top .caption-label").nth(2).inner_text().split()[0]
    page.locator("#right-top .thumbnail-item").nth(2).click()
    expect(page.locator("#right-feature input")).to_have_value(right_id.lstrip("#"))
    expect(page.get_by_text(f"for right {right_id}")).to_be_visible()
    page.wait_for_function("document.querySelectorAll('#right-exemplars img').length > 0")
    page.wait_for_function("document.querySelectorAll('#right-matches img').length > 0")
    match = page.locator("#right-matches .caption-label").first.inner_text().split()[0]
    page.locator("#right-matches .thumbnail-item").first.click()
    expect(page.locator("#left-feature input")).to_have_value(match.strip().lstrip("#"))
    page.wait_for_function("document.querySelectorAll('#left-exemplars img').length > 0")
    assert "Error" not in page.locator("#left-feature").inner_text()
    expect(page.locator(".toast-body")).to_have_count(0)
    ui.shot("compare-right-clicks")
