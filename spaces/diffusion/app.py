"""Hugging Face Space: saescope diffusion steering.

The artefact comes from the environment (a Hub id or a local folder):

    SAESCOPE_DIFFUSION_ARTEFACT=you/sd-turbo-text-sae python app.py

Without it the Space builds a tiny random offline demo once (and says so on the page: its images
are noise). The app code lives in ``apps/diffusion.py`` of the saescope package; this file only
wires it up (``demo`` is what ``gradio app.py`` reloads).
"""

import os
import sys
from pathlib import Path

_repo = Path(__file__).resolve().parents[2]
if (_repo / "apps" / "diffusion.py").is_file() and str(_repo) not in sys.path:
    sys.path.insert(0, str(_repo))  # running from a saescope checkout

from apps.common import launch  # noqa: E402
from apps.diffusion import build_app  # noqa: E402

demo = build_app(os.environ.get("SAESCOPE_DIFFUSION_ARTEFACT") or None,
                 device=os.environ.get("SAESCOPE_DEVICE", "cpu"))

if __name__ == "__main__":
    launch(demo, name="diffusion steering")
