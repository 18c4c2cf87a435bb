"""saescope core: sparse autoencoders, vision backbones behind one interface, steering.

Conventions shared by every module (see ../shared/DESIGN.md):
- layer L is the output of transformer block L counted from 0 (``hidden_states[L + 1]``);
  negative L counts from the end and is resolved by :func:`core.layers.resolve_layer` only;
- tokens are CLS, register or patch tokens, described by :class:`core.tokens.TokenLayout`;
- activation normalisation lives inside the SAE checkpoint.
"""
