"""StepX Bridge: live per-step attention from diffusion models, for artists and researchers."""

__version__ = "0.1.0"
