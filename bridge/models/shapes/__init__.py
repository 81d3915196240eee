"""The embedded models: small text-to-image models of a shapes world.

``load_shapes_pipeline()`` returns a diffusers ``StableDiffusionPipeline`` loaded with
``from_pretrained`` from the package data in ``SHAPES_WEIGHTS`` (no network). See
docs/SHAPES.md for the world, the vocabulary, the recipe and the evaluation.

Two checkpoints ship: the default one (``weights/``, trained with a grounding loss on its
attention) and an ungrounded one (``weights_free/``, docs/RELEVANCE.md), whose attention was
never told where the objects are. ``weights_free/`` holds only what differs (its UNet and its
local text encoder); the VAE, tokenizer and scheduler are byte-identical to the default's and
are taken from ``weights/`` when the pipeline is assembled (an *overlay* folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SHAPES_WEIGHTS: Path = Path(__file__).resolve().parent / "weights"
#: the ungrounded checkpoint: an overlay of ``SHAPES_WEIGHTS`` (its own UNet and text encoder)
SHAPES_FREE_WEIGHTS: Path = Path(__file__).resolve().parent / "weights_free"
#: the embedded checkpoints by the names ``--model`` (and ``eval-shapes --weights``) take
CHECKPOINTS: dict[str, Path] = {"shapes": SHAPES_WEIGHTS, "shapes-free": SHAPES_FREE_WEIGHTS}
IMAGE_SIZE = 128

__all__ = ["SHAPES_WEIGHTS", "SHAPES_FREE_WEIGHTS", "CHECKPOINTS", "IMAGE_SIZE", "load_shapes_pipeline", "overlay_components"]


def _component_classes() -> dict[str, Any]:
    """The components an overlay folder may replace, and the classes that load them (``Any``:
    diffusers' and transformers' model classes share no typed ``from_pretrained``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {"unet": UNet2DConditionModel, "text_encoder": CLIPTextModel, "vae": AutoencoderKL}


def overlay_components(root: str | Path) -> list[str]:
    """The components (``unet``, ``text_encoder``, ``vae``) an overlay folder holds itself, in that
    order: those with a ``config.json``. Empty for a folder that is no overlay."""
    return [name for name in ("unet", "text_encoder", "vae") if (Path(root) / name / "config.json").is_file()]


def load_shapes_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None):
    """Load the shapes StableDiffusionPipeline (128x128 output) onto ``device`` in ``dtype``.

    ``path``: a diffusers folder (default ``SHAPES_WEIGHTS``), or an overlay folder without
    ``model_index.json`` holding some of ``unet/``, ``text_encoder/``, ``vae/`` (e.g.
    ``SHAPES_FREE_WEIGHTS``): those replace the default folder's, the rest are the default's.
    The weights are stored as fp16 safetensors and upcast to ``dtype`` on load. Generate with
    e.g. ``pipe("a red circle above a blue square", num_inference_steps=20, guidance_scale=4.0)``.
    """
    from diffusers import StableDiffusionPipeline

    root = Path(path) if path is not None else SHAPES_WEIGHTS
    own: dict[str, object] = {}
    if not (root / "model_index.json").is_file():
        names = overlay_components(root)
        if not names:
            raise FileNotFoundError(
                f"no shapes model at {root}: expected a diffusers folder with model_index.json, or an overlay "
                "folder with unet/, text_encoder/ or vae/ (train one with `stepx train-shapes`, or reinstall the package)"
            )
        classes = _component_classes()
        own = {n: classes[n].from_pretrained(str(root / n), dtype=dtype, local_files_only=True) for n in names}
        root = SHAPES_WEIGHTS
    pipe = StableDiffusionPipeline.from_pretrained(
        str(root), dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True, **own
    )
    from .local_text import localise

    localise(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
