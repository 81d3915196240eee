"""The embedded default model: a small text-to-image model of a shapes world.

``load_shapes_pipeline()`` returns a diffusers ``StableDiffusionPipeline`` loaded with
``from_pretrained`` from the package data in ``SHAPES_WEIGHTS`` (no network). See
docs/SHAPES.md for the world, the vocabulary, the recipe and the evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHAPES_WEIGHTS: Path = Path(__file__).resolve().parent / "weights"
IMAGE_SIZE = 128

__all__ = ["SHAPES_WEIGHTS", "IMAGE_SIZE", "load_shapes_pipeline"]


def load_shapes_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None):
    """Load the shapes StableDiffusionPipeline (128x128 output) onto ``device`` in ``dtype``.

    The weights are stored as fp16 safetensors and upcast to ``dtype`` on load. Generate with
    e.g. ``pipe("a red circle above a blue square", num_inference_steps=20, guidance_scale=4.0)``.
    """
    from diffusers import StableDiffusionPipeline

    root = Path(path) if path is not None else SHAPES_WEIGHTS
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no shapes model at {root}: expected a diffusers folder with model_index.json "
            "(train one with `stepx train-shapes`, or reinstall the package)"
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        str(root), dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    from .local_text import localise

    localise(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
