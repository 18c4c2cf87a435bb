"""The diffusion-steering app and its Space, on the tiny offline demo (random pipeline + SAE).

The demo artefact is built through the app's own no-artefact path (``demo_artefact``, under a
temporary ``SAESCOPE_CACHE``). The Space is served and called through the API; the app is driven
in Debian's headless Chromium with Playwright: pick a feature by searching its name, generate,
see the unsteered and steered images differ, strength 0 reproduce the unsteered image, and an
empty prompt give a message. Screenshots go to ``$SAESCOPE_SCREENSHOTS`` (default
``runs/screenshots``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("SAESCOPE_SCREENSHOTS") or ROOT / "runs" / "screenshots")
TIMEOUT = 120_000  # ms: a busy 2-core CI machine is slow, a real hang still fails


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    """A private saescope cache holding the tiny demo artefact (built by the app's own code)."""
    from saescope.apps.diffusion import demo_artefact

    mp = pytest.MonkeyPatch()
    mp.setenv("SAESCOPE_CACHE", str(tmp_path_factory.mktemp("diffusion-app-cache")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is 10x faster on a busy 2-core machine
    try:
        yield demo_artefact()
    finally:
        torch.set_num_threads(threads)
        mp.undo()


def test_space_folder_is_complete(front_matter) -> None:
    folder = ROOT / "spaces" / "diffusion"
    meta = front_matter(folder / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta.get("license")
    assert re.match(r"^6\.\d+\.\d+$", meta["sdk_version"])
    reqs = [
        ln.split("#")[0].strip() for ln in (folder / "requirements.txt").read_text().splitlines()
    ]
    names = {re.split(r"[<>=@\[ ]", r)[0].lower() for r in reqs if r}
    assert {"gradio", "saescope", "torch", "diffusers"} <= names and "torchvision" not in names
    app = (folder / "app.py").read_text()
    assert "from saescope.apps.diffusion import build_app" in app and "gr.Blocks" not in app
    assert (
        "SAESCOPE_DIFFUSION_ARTEFACT" in app
        and "SAESCOPE_DIFFUSION_ARTEFACT" in (folder / "README.md").read_text()
    )


def test_space_serves_the_artefact_from_the_environment(
    demo_cache, serve, monkeypatch, tmp_path
) -> None:
    from gradio_client import Client

    from saescope.apps.diffusion import feature_choices
    from saescope.core import diffusion as D

    monkeypatch.setenv("SAESCOPE_DIFFUSION_ARTEFACT", str(demo_cache))
    spec = importlib.util.spec_from_file_location(
        "space_diffusion_app", ROOT / "spaces" / "diffusion" / "app.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    demo = module.demo
    art = demo.steerer.art
    assert art.path == demo_cache and art.tiny and art.names
    choices = feature_choices(art)
    fid = min(art.names)
    first = f"#{fid} · {art.names[fid]['name']}"
    assert choices[0] == first and len(choices) == len(D.alive_features(art.stats))
    assert first in feature_choices(art, art.names[fid]["name"].upper())
    assert feature_choices(art, f"#{fid}")[0] == first
    assert all(art.names[fid]["name"] in c for c in feature_choices(art, art.names[fid]["name"]))
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        before, after, scores, err = client.predict(
            "a photo of a castle", "", 3, 2, 5.0, first, 8.0, api_name="/generate"
        )
        assert err == "" and Path(before).is_file() and Path(after).is_file()
        assert Path(before).read_bytes() != Path(after).read_bytes()
        assert "CLIP score of" in scores and "relative to the vocabulary" in scores
        *_, err = client.predict("", "", 3, 2, 5.0, first, 8.0, api_name="/generate")
        assert "empty prompt" in err
        *_, err = client.predict("a cat", "", 3, 2, 5.0, "#100000", 8.0, api_name="/generate")
        assert "unknown feature 100000" in err
    finally:
        served.close()


@pytest.mark.slow
@pytest.mark.browser
def test_app_in_a_real_browser(demo_cache, chromium, serve, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from saescope.apps.diffusion import build_app

    served = serve(build_app(None))  # no artefact: the tiny offline demo (cached above)
    art = served.demo.steerer.art
    f, info = sorted(art.names.items())[1]
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, **chromium, viewport={"width": 1280, "height": 1000}
            )
            ctx.set_default_timeout(TIMEOUT)
            sync_api.expect.set_options(timeout=TIMEOUT)
            page = ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(served.url)
            expect = sync_api.expect
            expect(page.locator("#tiny-note")).to_contain_text("tiny random test model")
            expect(page.locator("#tiny-note")).to_contain_text("noise")

            # search the feature by its id: the picker jumps to it
            page.locator("#feature-search textarea, #feature-search input").first.fill(f"#{f}")
            expect(page.locator("#feature input")).to_have_value(f"#{f} · {info['name']}")
            page.locator("#prompt textarea").fill("a photo of a castle")
            page.locator("#generate").click()
            before, after = page.locator("#img-before img"), page.locator("#img-after img")
            expect(before).to_have_count(1)
            expect(after).to_have_count(1)
            expect(page.locator("#scores")).to_contain_text(f"CLIP score of {info['name']}")

            def img(loc) -> bytes:
                return page.request.get(loc.evaluate("e => e.currentSrc || e.src")).body()

            b1, a1 = img(before), img(after)
            assert b1 != a1, "steering did not change the image"
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "diffusion-steered.png"), full_page=True)

            # strength 0: the steered image is the unsteered one, pixel for pixel
            num = page.locator("#strength input[type=number]")
            num.fill("0")
            num.press("Enter")
            old_src = after.evaluate("e => e.src")
            page.locator("#generate").click()
            page.wait_for_function(
                "old => { const i = document.querySelector('#img-after img');"
                " return i && i.src !== old; }",
                arg=old_src,
            )
            expect(page.locator("#scores")).to_contain_text("strength +0")
            assert img(page.locator("#img-after img")) == img(page.locator("#img-before img"))

            # an empty prompt: a message on the page, no images
            page.locator("#prompt textarea").fill("")
            page.locator("#generate").click()
            expect(page.locator("#error")).to_contain_text("empty prompt")
            page.screenshot(path=str(SHOTS / "diffusion-empty-prompt.png"), full_page=True)
            ctx.close()
    finally:
        served.close()
        shutil.rmtree(profile, ignore_errors=True)
    assert not errors, f"JavaScript errors in the page: {errors}"
