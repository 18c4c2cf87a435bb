"""The segmentation and classification Spaces are deployable: Space front matter, requirements,
and an app.py that builds and serves the app with the bundle (and head) from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SPACES = {"segment": "saescope.apps.segment", "classify": "saescope.apps.classify"}


@pytest.fixture(scope="module")
def bundle(tiny_probe_bundle) -> Path:
    return tiny_probe_bundle


@pytest.mark.parametrize("space", sorted(SPACES))
def test_space_folder_is_complete(space, front_matter) -> None:
    import re

    folder = ROOT / "spaces" / space
    meta = front_matter(folder / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert re.match(r"^6\.\d+\.\d+$", meta["sdk_version"])
    assert meta["title"] and meta.get("license") and len(meta["short_description"]) <= 60
    reqs = [
        line.split("#")[0].strip()
        for line in (folder / "requirements.txt").read_text().splitlines()
    ]
    names = [re.split(r"[<>=@\[ ]", r)[0].lower() for r in reqs if r]
    assert {"gradio", "saescope", "torch"} <= set(names) and "torchvision" not in names
    app = (folder / "app.py").read_text()
    assert f"from {SPACES[space]} import build_app" in app  # imported, never copied
    assert "gr.Blocks" not in app and len(app.splitlines()) < 60
    readme = (folder / "README.md").read_text()
    for var in ("SAESCOPE_BUNDLE", "SAESCOPE_HEAD", "SAESCOPE_WARM_UP"):
        assert var in app and var in readme


@pytest.mark.parametrize(
    "space,head,kind",
    [("segment", "digit-scenes", "segmentation"), ("classify", "digits", "classification")],
)
def test_steer_space_builds_and_serves(
    space, head, kind, bundle, load_space, serve, tmp_path
) -> None:
    from gradio_client import Client

    demo = load_space(space, {"SAESCOPE_BUNDLE": str(bundle), "SAESCOPE_HEAD": head})
    assert str(demo.engine.bundle.path) == str(bundle)
    assert demo.default_head == head and demo.task.kind == kind
    served = serve(demo)
    try:
        client = Client(served.url, verbose=False, download_files=str(tmp_path))
        names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/analyse", "/select", "/steer", "/reset", "/head"} <= set(names)
        md = client.predict(
            head,
            "",
            "scale the feature (× slider)",
            "selected patches",
            *([None] * 5),
            *([1.0] * 5),
            api_name="/head",
        )
        assert head in md[0] and "held-out" in md[0]
    finally:
        served.close()


def test_space_refuses_a_head_of_the_wrong_kind(bundle, load_space) -> None:
    from saescope.apps.adapter import AppSetupError

    with pytest.raises(AppSetupError, match="not a segmentation head"):
        load_space("segment", {"SAESCOPE_BUNDLE": str(bundle), "SAESCOPE_HEAD": "digits"})
