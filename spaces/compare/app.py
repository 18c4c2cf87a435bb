"""Hugging Face Space: compare two SAEs side by side (CLIP ViT-B/16 vs DINOv2 ViT-B/14 by default).

Bundles come from the environment (Hub ids or local folders):

    SAESCOPE_LEFT_BUNDLE=you/clip-b16-bundle SAESCOPE_RIGHT_BUNDLE=you/dinov2-b14-bundle python app.py

Without them the Space tries the online defaults and falls back to two layers of the offline
DINOv2-S (saliency fine-tune); set ``SAESCOPE_OFFLINE=1`` to go straight to the offline pair. The
app code lives in ``apps/compare.py`` of the saescope package; this file only wires it up.
"""

import os
import sys
from pathlib import Path

_repo = Path(__file__).resolve().parents[2]
if (_repo / "apps" / "compare.py").is_file() and str(_repo) not in sys.path:
    sys.path.insert(0, str(_repo))  # running from a saescope checkout

from apps.compare import build_app  # noqa: E402
from apps.common import launch  # noqa: E402

demo = build_app(os.environ.get("SAESCOPE_LEFT_BUNDLE") or None,
                 os.environ.get("SAESCOPE_RIGHT_BUNDLE") or None,
                 offline=os.environ.get("SAESCOPE_OFFLINE", "0") not in ("0", ""),
                 warm_up=os.environ.get("SAESCOPE_WARM_UP", "1") != "0")

if __name__ == "__main__":
    launch(demo, name="comparison")
