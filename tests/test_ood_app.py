"""The browser's OOD tab: unit tests of its pieces, and a real-browser test (headless Chromium via
Playwright, as in test_apps_browser.py) on a tiny random DINOv2 bundle with an ood/ component."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def add_ood_from_images(bundle_path: Path, items) -> None:
    """Fit and store the bundle's OOD scorers on images run through its backbone (no store)."""
    from saescope.core.bundle import Bundle
    from saescope.core.ood import OODSuite, default_scorers, summarize
    from saescope.train.ood_eval import add_ood_to_bundle

    b = Bundle.load(bundle_path, verify=False)
    bb, sae = b.backbone, b.sae.eval()
    layer = bb.resolve_layer(sae.cfg.layer)
    out = bb.forward_layers(bb.preprocess([im for _, im in items]), [layer])
    patches = out.layout.select(out.tokens[layer], "patch")
    suite = OODSuite.fit(
        default_scorers(("sae", "raw"), k=3, raw_fields=("raw_mean",)),
        summarize(sae, patches),
        meta={"source": "memory:synthetic"},
    )
    add_ood_to_bundle(bundle_path, suite)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bundle, synthetic_items):
    root = tmp_path_factory.mktemp("ood-app")
    plain = tiny_bundle(root, "plain")
    with_ood = tiny_bundle(root, "with-ood")
    add_ood_from_images(with_ood, synthetic_items(30, seed=5))
    return plain, with_ood


def test_load_ood_and_markdown(bundles) -> None:
    import torch

    from saescope.apps.browser import NO_OOD, load_ood, ood_markdown
    from saescope.core.bundle import Bundle
    from saescope.core.ood import SAE_COMBINED, score_tokens

    plain, with_ood = (Bundle.load(p) for p in bundles)
    assert load_ood(plain) == (None, NO_OOD) and "ood-fit" in NO_OOD
    suite, note = load_ood(with_ood)
    assert note == "" and suite.names[3] == SAE_COMBINED
    # the tokens of a very different image (uniform noise) through the bundle's model and SAE
    bb, sae = with_ood.backbone, with_ood.sae
    gen = torch.Generator().manual_seed(0)
    from PIL import Image

    noise = Image.fromarray((torch.rand(224, 224, 3, generator=gen) * 255).byte().numpy())
    layer = bb.resolve_layer(sae.cfg.layer)
    out = bb.forward_layers(bb.preprocess([noise]), [layer])
    reports, summary = score_tokens(suite, sae, out.layout.select(out.tokens[layer], "patch")[0])
    contribs = suite.explain(summary.code_mean[0], 6)
    md = ood_markdown(reports, suite, contribs)
    main = next(r for r in reports if r.name == SAE_COMBINED)
    assert ("Out of distribution" in md) == main.is_ood and f"**{main.percentile:.0f}%**" in md
    assert md.count("\n| ") == len(reports) + 1 and "memory:synthetic" in md
    assert all(c.contribution > 0 for c in contribs)
    assert ood_markdown([], suite, []).startswith("_No OOD score")


@pytest.mark.slow
@pytest.mark.browser
def test_browser_ood_tab(bundles, chromium, serve, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from saescope.apps.browser import build_app
    from saescope.core.sources import open_source

    plain, with_ood = bundles
    photo = tmp_path / "photo.jpg"
    open_source("builtin:photos?views=1").load(3).save(photo, "JPEG", quality=90)
    shots = Path(os.environ.get("SAESCOPE_SCREENSHOTS") or ROOT / "runs" / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    apps = [
        serve(build_app(str(with_ood), examples=False)),
        serve(build_app(str(plain), examples=False)),
    ]
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, **chromium, viewport={"width": 1440, "height": 1000}
            )
            ctx.set_default_timeout(120_000)
            sync_api.expect.set_options(timeout=120_000)
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            expect = sync_api.expect

            page.goto(apps[0].url)
            expect(page.locator("#ood-scores")).to_contain_text("Upload an image")
            page.locator("#upload input[type=file]").set_input_files(str(photo))
            expect(page.locator("#ood-scores")).to_contain_text("in-distribution percentile")
            expect(page.locator("#ood-scores")).to_contain_text("SAE combined")
            text = page.locator("#ood-scores").inner_text()
            assert ("Out of distribution" in text) or ("In distribution" in text)
            page.wait_for_function("document.querySelectorAll('#ood-features img').length > 0")
            caption = page.locator("#ood-features .caption-label").first.inner_text()
            fid = caption.split("·")[0].strip().lstrip("#")
            assert "+" in caption and fid.isdigit()
            page.locator("#ood-features .thumbnail-item").first.click()
            expect(page.locator("#feature-stats h3")).to_have_text(re.compile(rf"^Feature {fid}\b"))
            page.locator("#ood-tab").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "browser-ood.png"), full_page=True)
            assert (shots / "browser-ood.png").stat().st_size > 10_000

            # a bundle without ood/: a clear message instead of scores, also after an upload
            page.goto(apps[1].url)
            expect(page.locator("#ood-scores")).to_contain_text("has no ood/ component")
            page.locator("#upload input[type=file]").set_input_files(str(photo))
            expect(page.locator("#status")).to_contain_text("explains")
            expect(page.locator("#ood-scores")).to_contain_text("has no ood/ component")
            assert not errors, errors
            ctx.close()
    finally:
        for a in apps:
            a.close()
        shutil.rmtree(profile, ignore_errors=True)
