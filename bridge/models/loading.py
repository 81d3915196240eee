"""Model loading: the embedded default, a diffusers folder or hub id, or a single-file checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda, then mps, then cpu; otherwise the named device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``None``/``auto`` → float16 on cuda, float32 elsewhere."""
    if name in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(sorted(DTYPES))} or auto")
    return DTYPES[name]


def load_pipeline(model: str | None = None, device: str = "auto", dtype: str | None = None, arch: str = "auto") -> tuple[Any, str]:
    """Load a text-to-image pipeline; returns ``(pipe, name)``.

    model: None or ``shapes`` → the embedded shapes model (package data, no network);
    ``tiny`` → a random-weight test pipeline; a folder → ``DiffusionPipeline.from_pretrained``;
    a ``.safetensors``/``.ckpt`` file → ``from_single_file`` (``arch`` sd, sdxl or auto by size);
    anything else → a hub id, loaded from the local cache when offline (HF_HUB_OFFLINE=1).
    """
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    quiet_libraries()
    if model in (None, "", "shapes"):
        from bridge.models.shapes import load_shapes_pipeline

        pipe, name = load_shapes_pipeline(device=dev, dtype=dt), "stepx-shapes"
    elif model == "tiny":
        from bridge.models.tiny import tiny_sd_pipeline

        pipe, name = tiny_sd_pipeline().to(dev, dt), "tiny-random-sd"
    else:
        pipe, name = _load_external(model, dt, arch), model
        pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded %s on %s (%s)", name, dev, str(dt).replace("torch.", ""))
    return pipe, name


def _load_external(model: str, dtype: torch.dtype, arch: str) -> Any:
    import diffusers

    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise ValueError(f"{path}: a single-file checkpoint must be .safetensors or .ckpt")
        if arch == "auto":
            arch = "sdxl" if path.stat().st_size > 5_000_000_000 else "sd"
        cls = {"sd": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline}.get(arch)
        if cls is None:
            raise ValueError(f"unknown --arch {arch!r} for a single-file checkpoint; choose sd or sdxl")
        return cls.from_single_file(str(path), torch_dtype=dtype)
    if path.is_dir():
        return diffusers.DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return diffusers.DiffusionPipeline.from_pretrained(model, torch_dtype=dtype, local_files_only=offline)
    except Exception as exc:
        raise RuntimeError(
            f"could not load model {model!r}: it is not a local folder or file, and loading it as a hub id failed ({exc}). "
            "Pass a diffusers folder, a .safetensors file, or nothing for the embedded shapes model."
        ) from exc


def quiet_libraries() -> None:
    """Silence diffusers/transformers progress bars and advice; our own logging says what matters."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
