"""Each Hugging Face Space folder is deployable: Space front matter, requirements, and an app.py
that builds and serves the app with a local bundle taken from the environment (no copied code)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SPACES = {"browser": "saescope.apps.browser", "compare": "saescope.apps.compare"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bundle) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spaces")
    return tiny_bundle(root, "tiny-a", layer=0), tiny_bundle(root, "tiny-b", layer=1, seed=1)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_space_folder_is_complete(space, front_matter) -> None:
    folder = ROOT / "spaces" / space
    meta = front_matter(folder / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert re.match(r"^6\.\d+\.\d+$", meta["sdk_version"])
    assert meta["title"] and meta.get("license")
    assert (folder / meta["app_file"]).is_file()
    reqs = [
        line.split("#")[0].strip()
        for line in (folder / "requirements.txt").read_text().splitlines()
    ]
    reqs = [r for r in reqs if r]
    names = [re.split(r"[<>=@\[ ]", r)[0].lower() for r in reqs]
    assert {"gradio", "saescope", "torch"} <= set(names) and "torchvision" not in names
    app = (folder / "app.py").read_text()
    # the Space imports the app; it never carries a copy of its code
    assert f"from {SPACES[space]} import build_app" in app
    assert "gr.Blocks" not in app and len(app.splitlines()) < 60
    assert "SAESCOPE_" in app and "SAESCOPE_" in (folder / "README.md").read_text()


def test_browser_space_builds_and_serves(bundles, load_space, serve, tmp_path) -> None:
    from gradio_client import Client

    demo = load_space("browser", {"SAESCOPE_BUNDLE": str(bundles[0])})
    assert str(demo.engine.bundle.path) == str(bundles[0])
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert "/analyse" in names and "/toggle" in names
        shown = client.predict(3, "", "selected patches", api_name="/feature")
        assert "Feature 3" in shown[1]
    finally:
        served.close()


def test_compare_space_builds_and_serves(bundles, load_space, serve, tmp_path) -> None:
    from gradio_client import Client, handle_file

    demo = load_space(
        "compare",
        {"SAESCOPE_LEFT_BUNDLE": str(bundles[0]), "SAESCOPE_RIGHT_BUNDLE": str(bundles[1])},
    )
    left, right = demo.engines
    assert left.layer == 0 and right.layer == 1
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        img = tmp_path / "x.png"
        from PIL import Image

        Image.new("RGB", (64, 48), (200, 30, 30)).save(img)
        out = client.predict(handle_file(str(img)), api_name="/analyse")
        assert "Left SAE explains" in out[1]
        f = client.predict(2, "", api_name="/feature_left")
        assert "Feature 2" in f[1] and "Best matches on the right" in f[4]
    finally:
        served.close()


@pytest.mark.slow
def test_space_runs_as_a_script(bundles, free_port, tmp_path) -> None:
    """``python app.py`` (what a Space runs) serves on GRADIO_SERVER_PORT and prints the URL."""
    import os
    import urllib.request

    port = free_port()
    env = {
        **os.environ,
        "SAESCOPE_BUNDLE": str(bundles[0]),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "SAESCOPE_WARM_UP": "0",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "spaces" / "browser" / "app.py")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = None
        deadline = time.time() + 240
        lines = []
        while time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            lines.append(line)
            if "running at" in line:
                url = line.split("running at", 1)[1].split()[0]
                break
        assert url, "".join(lines)
        assert f":{port}" in url
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and b"gradio" in r.read().lower()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
