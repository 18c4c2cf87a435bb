"""Shared fixtures of the test suite. Tests take them as arguments; nothing is imported.

The fixtures live in themed modules next to this file, registered here as pytest plugins (pytest
imports them the way it imports this conftest: ``tests/`` has no ``__init__.py``, so it is on
``sys.path`` by then):

- ``fixtures_models``: ``one_torch_thread`` (opt in with
  ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``), ``tiny_dinov2`` (a random
  3-block DINOv2, width 32, loaded as a saescope backbone), ``make_tiny_model`` (a random DINOv2
  folder, optionally with registers, with its preprocessor), ``make_image_folder``,
  ``extract_worker``.
- ``fixtures_bundles``: ``synthetic_items``, ``build_test_bundle``, ``tiny_bundle`` (a random
  2-block DINOv2 + random TopK SAE bundle; about a second, no head), ``offline_bundle`` (the real
  offline DINOv2-S, saliency fine-tune, at one layer, with an SAE whose normalisation and decoder
  bias come from real activations, and the saliency head; tens of seconds), ``tiny_probe_bundle``
  (``tiny_bundle`` plus a segmentation and a classification probe, built once per session),
  ``local_hub``.
- ``fixtures_apps``: ``awkward_files``, ``serve`` (an app on a free localhost port),
  ``free_port``, ``wait_for``, ``front_matter``, ``load_space``.
- ``fixtures_browser``: ``chromium`` (launch settings; skips when Debian's chromium is missing),
  ``browser_page``, ``page``, ``ui``.

Fixtures that build things return factories (a test calls ``tiny_bundle(root, "name")``), so a
test keeps choosing where and how much to build, while the code lives in one place. Session-scoped
factories can be used from fixtures of any scope.
"""

pytest_plugins = ["fixtures_models", "fixtures_bundles", "fixtures_apps", "fixtures_browser"]
