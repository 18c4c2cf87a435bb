"""saescope: sparse autoencoders on the frozen activations of vision transformers.

One import root for the library. The sub-packages live in the repository's top-level folders
(``core/``, ``train/``, ``apps/``), mapped here by ``pyproject.toml``'s ``package-dir``:

- ``saescope.core``: artefact formats and their readers, SAE model, backbones, steering, scores;
- ``saescope.train``: pipeline steps that build artefacts (``saescope <step>``);
- ``saescope.apps``: Gradio apps that load bundles and present them.

Layers import one way only: core <- train <- apps (``tests/test_layers.py`` enforces it).
"""

__version__ = "0.1.0"
