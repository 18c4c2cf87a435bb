"""Hugging Face Space: saescope diffusion steering.

The artefact comes from the environment (a Hub id or a local folder):

    SAESCOPE_DIFFUSION_ARTEFACT=you/sd-turbo-text-sae python app.py

Without it the Space builds a tiny random offline demo once (and says so on the page: its images
are noise). The app code lives in ``apps/diffusion.py`` of the saescope package; this file only
wires it up (``demo`` is what ``gradio app.py`` reloads).
"""

import os

from saescope.apps.diffusion import build_app
from saescope.apps.launch import launch

demo = build_app(
    os.environ.get("SAESCOPE_DIFFUSION_ARTEFACT") or None,
    device=os.environ.get("SAESCOPE_DEVICE", "cpu"),
)

if __name__ == "__main__":
    launch(demo, name="diffusion steering")
