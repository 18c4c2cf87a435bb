"""Gradio apps: the feature browser, the comparison, the steering and diffusion apps (see README).

Gradio reports usage analytics unless told not to; the default is set here, before any app module
imports gradio, so an offline start never tries to reach the network.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
