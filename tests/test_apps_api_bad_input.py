"""Every app's API under careless and hostile calls, through ``gradio_client`` (issue 14, defect 7).

Table-driven: for each app's endpoints that take a feature id, a scale, slot ids, a seed or an
image, bad values (not a number, 1.5, negative, huge, None, a string, a list, a boolean; images
that are not images, corrupt or empty files, a plain path string, a number, a bare URL) must be
answered with the app's own one-line message (never Gradio's generic "the upstream app raised an
exception", never a silent rounding), and the server must still answer a good request afterwards.

One app per kind is launched per module (tiny random bundles, seconds) and one client per app
keeps its session, so the endpoints that need an analysed image have one.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

GENERIC = "upstream Gradio app has raised an exception"
SCOPE = "selected patches"
MODE = "scale the feature (× slider)"
N_SLOTS = 5


def whole(what: str, hi: int, lo: int = 0) -> str:
    return rf"{what} must be a whole number between {lo} and {hi}, got "


def number(what: str, lo: float, hi: float) -> str:
    return rf"{what} must be a number between {lo:g} and {hi:g}, got "


# bad feature ids and what the message quotes back ("got ..."); d_sae of the tiny bundles: 128
BAD_IDS = [
    ("abc", "'abc'"),
    (1.5, "'1.5'"),
    (-1, "'-1'"),
    (10**9, "'1000000000'"),
    (None, "nothing"),
    ("", "nothing"),
    ([3], r"'\[3\]'"),
    (True, "'True'"),
    ("nan", "'nan'"),
]
BAD_IDS_SHORT = [BAD_IDS[0], BAD_IDS[1], BAD_IDS[2], BAD_IDS[4]]  # other endpoints: a sample
BAD_SCALES = [("abc", "'abc'"), (-0.5, "'-0.5'"), (99, "'99'"), (None, "nothing")]


def client_for(served, tmp_path_factory):
    from gradio_client import Client

    return Client(
        served.url,
        verbose=False,
        download_files=str(tmp_path_factory.mktemp("downloads")),
        httpx_kwargs={"timeout": 120},
    )


def refused(client, args, api_name: str, pattern: str) -> str:
    """Call ``api_name`` with ``args``; it must fail with the app's own message ``pattern``."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(*args, api_name=api_name)
    msg = str(info.value.message if hasattr(info.value, "message") else info.value)
    assert GENERIC not in msg and "Traceback" not in msg, msg
    assert re.search(pattern, msg), (api_name, args, msg)
    assert "\n" not in msg.strip()  # one line
    return msg


@pytest.fixture(scope="module")
def files(tmp_path_factory, awkward_files) -> dict[str, Path]:
    return awkward_files(tmp_path_factory.mktemp("uploads"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (180, 240, 3), np.uint8)).save(path)
    return path


# bad image payloads: (name, payload builder, what the answer must say)
def _image_cases(files: dict[str, Path]) -> list:
    from gradio_client import handle_file

    return [
        ("plain path string", lambda: "/does/not/exist.png", "must be sent as an uploaded file"),
        ("a number", lambda: 42, "must be sent as an uploaded file"),
        ("not an image", lambda: handle_file(str(files["not_an_image.png"])), "not an image"),
        ("corrupt bytes", lambda: handle_file(str(files["corrupt.png"])), "corrupt"),
        ("truncated file", lambda: handle_file(str(files["truncated.jpg"])), "truncated"),
        ("empty file", lambda: handle_file(str(files["empty.jpg"])), "empty"),
    ]


def check_image_case(
    client, name: str, make, words: str, args_after: list, api_name="/analyse"
) -> None:
    """A bad image: either an error with the app's message, or the app's status line saying
    why (the upload box is cleared); never the generic message."""
    from gradio_client.exceptions import AppError

    try:
        out = client.predict(make(), *args_after, api_name=api_name)
    except AppError as err:
        msg = str(err.message if hasattr(err, "message") else err)
        assert GENERIC not in msg and words in msg.lower(), (name, msg)
        return
    status = next(o for o in out if isinstance(o, str) and "sae-error" in o)
    assert words in status.lower() and "Traceback" not in status, (name, status)


# ------------------------------------------------------------------------------ feature browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory, tiny_bundle, serve, photo):
    from gradio_client import handle_file

    from saescope.apps.browser import build_app

    served = serve(build_app(str(tiny_bundle(tmp_path_factory.mktemp("b"))), examples=False))
    client = client_for(served, tmp_path_factory)
    out = client.predict(handle_file(str(photo)), 0, api_name="/analyse")  # the session's image
    assert "explains" in out[1]
    yield client
    served.close()


def _browser_good(client) -> None:
    shown = client.predict(3, "", SCOPE, api_name="/feature")
    assert shown[0] == 3 and "Feature 3" in shown[1]


@pytest.mark.parametrize("value,got", BAD_IDS, ids=[repr(v) for v, _ in BAD_IDS])
def test_browser_feature_ids(browser, value, got) -> None:
    refused(browser, [value, "", SCOPE], "/feature", whole("feature id", 127) + got)
    _browser_good(browser)


@pytest.mark.parametrize("value,got", BAD_IDS_SHORT, ids=[repr(v) for v, _ in BAD_IDS_SHORT])
def test_browser_ids_on_every_endpoint(browser, value, got) -> None:
    pattern = whole("feature id", 127) + got
    refused(browser, ["1,1", value, SCOPE], "/select", pattern)
    refused(browser, ["1,1", value, False, 1.0, SCOPE], "/toggle", pattern)
    refused(browser, ["1,1", value, SCOPE], "/reset", pattern)
    if value is not None:  # /analyse takes the id box as it is (empty: keep it)
        refused(browser, [None, value], "/analyse", pattern)
    _browser_good(browser)


@pytest.mark.parametrize("value,got", BAD_SCALES, ids=[repr(v) for v, _ in BAD_SCALES])
def test_browser_scales(browser, value, got) -> None:
    refused(browser, ["1,1", 3, True, value, SCOPE], "/toggle", number("scale", 0, 5) + got)
    res = browser.predict("1,1", 3, True, 2.5, SCOPE, api_name="/toggle")
    assert "× 2.5" in res[0]


def test_browser_bad_images(browser, files) -> None:
    for name, make, words in _image_cases(files):
        check_image_case(browser, name, make, words, [0])
    _browser_good(browser)


def test_browser_rounds_nothing(browser) -> None:
    """1.5 used to become feature 2 silently; a whole float (2.0) and a numeric string are
    still the id they spell."""
    assert browser.predict(2.0, "", SCOPE, api_name="/feature")[0] == 2
    assert browser.predict("7", "", SCOPE, api_name="/feature")[0] == 7


# ------------------------------------------------------------------------------ comparison
@pytest.fixture(scope="module")
def compare(tmp_path_factory, tiny_bundle, serve):
    from saescope.apps.compare import build_app

    root = tmp_path_factory.mktemp("cmp")
    left = tiny_bundle(root, "left", layer=0)
    right = tiny_bundle(root, "right", layer=1, seed=1)
    served = serve(build_app(str(left), str(right), examples=False))
    yield client_for(served, tmp_path_factory)
    served.close()


@pytest.mark.parametrize("value,got", BAD_IDS, ids=[repr(v) for v, _ in BAD_IDS])
def test_compare_feature_ids(compare, value, got) -> None:
    refused(compare, [value, ""], "/feature_left", whole("left feature id", 127) + got)
    refused(compare, [value, ""], "/feature_right", whole("right feature id", 127) + got)
    assert compare.predict(4, "", api_name="/feature_right")[0] == 4


def test_compare_bad_images(compare, files, photo) -> None:
    from gradio_client import handle_file

    for name, make, words in _image_cases(files):
        check_image_case(compare, name, make, words, [])
    out = compare.predict(handle_file(str(photo)), api_name="/analyse")
    assert "Left SAE explains" in out[1]


# ------------------------------------------------------------------------------ steering apps
def slots(ids=(None,) * N_SLOTS, vals=(1.0,) * N_SLOTS) -> list:
    return [*ids, *vals]


@pytest.fixture(scope="module", params=["segment", "classify"])
def steer(request, tiny_probe_bundle, serve, tmp_path_factory, photo):
    from gradio_client import handle_file

    if request.param == "segment":
        from saescope.apps.segment import build_app
    else:
        from saescope.apps.classify import build_app
    demo = build_app(str(tiny_probe_bundle), examples=False)
    served = serve(demo)
    client = client_for(served, tmp_path_factory)
    head = demo.default_head
    out = client.predict(handle_file(str(photo)), head, MODE, SCOPE, *slots(), api_name="/analyse")
    ids = [u["value"] for u in out[10 : 10 + N_SLOTS]]  # after OOD line, cards, attribution
    assert all(isinstance(f, int) for f in ids)
    yield client, head, ids
    served.close()


@pytest.mark.parametrize("value,got", BAD_IDS, ids=[repr(v) for v, _ in BAD_IDS])
def test_steer_slot_ids(steer, value, got) -> None:
    client, head, ids = steer
    if value is None or value == "":
        # an empty slot is a valid slot: no edit there
        out = client.predict(head, "", MODE, SCOPE, *slots([value] * 5), api_name="/steer")
        assert "No edits" in out[-3]
        return
    bad = slots([ids[0], ids[1], value, None, None])
    pattern = whole("slot 3 feature id", 127) + got
    for api in ("/steer", "/select", "/reset", "/head"):
        refused(client, [head, "", MODE, SCOPE, *bad], api, pattern)
    out = client.predict(head, "", MODE, SCOPE, *slots(ids, (0.0,) * 5), api_name="/steer")
    assert "Active edits" in out[-3]


@pytest.mark.parametrize("value,got", BAD_SCALES, ids=[repr(v) for v, _ in BAD_SCALES])
def test_steer_sliders(steer, value, got) -> None:
    client, head, ids = steer
    bad = slots(ids, (1.0, value, 1.0, 1.0, 1.0))
    refused(client, [head, "", MODE, SCOPE, *bad], "/steer", number("slot 2 slider", 0, 5) + got)


def test_steer_bad_images_and_heads(steer, files, photo) -> None:
    from gradio_client import handle_file

    client, head, ids = steer
    refused(client, ["no-such-head", "", MODE, SCOPE, *slots(ids)], "/steer", "not in the list")
    for name, make, words in _image_cases(files):
        check_image_case(client, name, make, words, [head, MODE, SCOPE, *slots()])
    # a refused upload clears the session's image; a good one is analysed as before
    out = client.predict(handle_file(str(photo)), head, MODE, SCOPE, *slots(), api_name="/analyse")
    assert "patches" in out[1]
    out = client.predict(head, "", MODE, SCOPE, *slots(ids), api_name="/steer")
    assert "No edits" in out[-3]


# ------------------------------------------------------------------------------ diffusion
@pytest.fixture(scope="module")
def diffusion(tmp_path_factory, serve):
    import torch

    from saescope.apps.diffusion import build_app, demo_artefact

    mp = pytest.MonkeyPatch()
    mp.setenv("SAESCOPE_CACHE", str(tmp_path_factory.mktemp("diffusion-cache")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster on a busy small machine
    try:
        demo = build_app(demo_artefact())
        served = serve(demo)
        art = demo.steerer.art
        first = sorted(art.names)[0]
        yield client_for(served, tmp_path_factory), f"#{first}", art.sae.cfg.d_sae
        served.close()
    finally:
        torch.set_num_threads(threads)
        mp.undo()


def test_diffusion_generate_inputs(diffusion) -> None:
    """The app answers a bad value in its error box (and a warning), images left empty."""
    client, feature, d_sae = diffusion
    good = {"seed": 3, "steps": 1, "guidance": 5.0, "feature": feature, "strength": 8.0}
    cases = [
        ("seed", 1.5, whole("seed", 2**32 - 1) + "'1.5'"),
        ("seed", -1, whole("seed", 2**32 - 1) + "'-1'"),
        ("seed", "abc", whole("seed", 2**32 - 1) + "'abc'"),
        ("seed", 10**30, whole("seed", 2**32 - 1)),
        ("seed", None, whole("seed", 2**32 - 1) + "nothing"),
        ("steps", 2.5, whole("steps", 50, 1) + "'2.5'"),
        ("steps", 0, whole("steps", 50, 1) + "'0'"),
        ("steps", "many", whole("steps", 50, 1) + "'many'"),
        ("guidance", "x", number("guidance", 0, 15) + "'x'"),
        ("guidance", 99, number("guidance", 0, 15) + "'99'"),
        ("strength", None, number("strength", -20, 20) + "nothing"),
        ("strength", 1e6, number("strength", -20, 20)),
        ("feature", 1.5, "unknown feature 1.5"),
        ("feature", d_sae, f"unknown feature {d_sae}"),
        ("feature", None, "pick a feature first"),
    ]
    for name, value, pattern in cases:
        args = {**good, name: value}
        out = client.predict(
            "a photo of a cat",
            "",
            args["seed"],
            args["steps"],
            args["guidance"],
            args["feature"],
            args["strength"],
            api_name="/generate",
        )
        before, after, scores, err = out
        err = html.unescape(err)
        assert before is None and after is None and scores == "", (name, value)
        assert "sae-error" in err and re.search(pattern, err), (name, value, err)
    before, after, scores, err = client.predict(
        "a photo of a cat", "", 3, 1, 5.0, feature, 8.0, api_name="/generate"
    )
    assert err == "" and Path(before).is_file() and Path(after).is_file()
