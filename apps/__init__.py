"""Gradio apps: the feature browser and the CLIP-vs-DINOv2 comparison (see README)."""
