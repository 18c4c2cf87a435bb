"""Hugging Face Space: compare two SAEs side by side (CLIP ViT-B/16 vs DINOv2 ViT-B/14 by default).

Bundles come from the environment (Hub ids or local folders):

    export SAESCOPE_LEFT_BUNDLE=you/clip-b16-bundle
    export SAESCOPE_RIGHT_BUNDLE=you/dinov2-b14-bundle
    python app.py

Without them the Space tries the online defaults and falls back to two layers of the offline
DINOv2-S (saliency fine-tune); set ``SAESCOPE_OFFLINE=1`` to go straight to the offline pair. The
app code lives in ``apps/compare.py`` of the saescope package; this file only wires it up.
"""

import os

from saescope.apps.compare import build_app
from saescope.apps.launch import launch

demo = build_app(
    os.environ.get("SAESCOPE_LEFT_BUNDLE") or None,
    os.environ.get("SAESCOPE_RIGHT_BUNDLE") or None,
    offline=os.environ.get("SAESCOPE_OFFLINE", "0") not in ("0", ""),
    warm_up=os.environ.get("SAESCOPE_WARM_UP", "1") != "0",
)

if __name__ == "__main__":
    launch(demo, name="comparison")
