"""saescope training pipeline: activation extraction, SAE training, evaluation, Hub upload.

Run ``python -m train --help`` for the command-line steps.
"""
