"""saescope training pipeline: activation extraction, SAE training, evaluation, Hub upload.

Run ``saescope --help`` for the command-line steps.
"""
