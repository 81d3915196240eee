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
    """``auto`` → cuda, then mps, then cpu; otherwise the named device, which must exist here
    (ValueError naming what is available, never a traceback from deep in torch)."""
    if name != "auto":
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"--device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                                 f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu or auto")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ValueError(f"--device {name}: MPS is not available here; use --device cpu or auto")
        return dev
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


SHAPES_MODEL_NAME = "stepx-shapes"
#: the ungrounded embedded checkpoint (docs/RELEVANCE.md): trained without the grounding loss
SHAPES_FREE_MODEL_NAME = "stepx-shapes-free"
#: ``--model`` values that name an embedded checkpoint → the model name ``load_pipeline`` returns
EMBEDDED_MODELS = {"shapes": SHAPES_MODEL_NAME, "shapes-free": SHAPES_FREE_MODEL_NAME}
#: the embedded model's guidance: what it is evaluated with (docs/SHAPES.md); other models get
#: the schema's default (7.5). One value for the CLI, control requests and the docs.
SHAPES_GUIDANCE = 4.0


def default_guidance(model_name: str) -> float:
    """The guidance a request gets when it names none, for the model ``load_pipeline`` named
    (or the ``--model`` value naming an embedded checkpoint)."""
    from bridge.request import DEFAULT_GUIDANCE

    embedded = model_name in EMBEDDED_MODELS or model_name in EMBEDDED_MODELS.values()
    return SHAPES_GUIDANCE if embedded else DEFAULT_GUIDANCE


def load_pipeline(
    model: str | None = None, device: str = "auto", dtype: str | None = None, arch: str = "auto", config: str | None = None
) -> tuple[Any, str]:
    """Load a text-to-image pipeline; returns ``(pipe, name)``.

    model: None or ``shapes`` → the embedded shapes model (package data, no network);
    ``shapes-free`` → the embedded ungrounded checkpoint (docs/RELEVANCE.md);
    ``tiny`` → a random-weight test pipeline; a folder → ``DiffusionPipeline.from_pretrained``;
    a ``.safetensors``/``.ckpt`` file → ``from_single_file`` (``arch`` sd, sdxl or auto by size),
    its component configs taken from ``config``, a diffusers folder (or hub id) of the same
    architecture (see :func:`single_file_config`);
    anything else → a hub id, loaded from the local cache when offline (HF_HUB_OFFLINE=1).
    """
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    quiet_libraries()
    if model in (None, "") or model in EMBEDDED_MODELS:
        from bridge.models.shapes import CHECKPOINTS, load_shapes_pipeline

        key = model or "shapes"
        pipe, name = load_shapes_pipeline(device=dev, dtype=dt, path=CHECKPOINTS[key]), EMBEDDED_MODELS[key]
    elif model == "tiny":
        from bridge.models.tiny import tiny_sd_pipeline

        pipe, name = tiny_sd_pipeline().to(dev, dt), "tiny-random-sd"
    else:
        pipe, name = _load_external(model, dt, arch, config), model
        pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded %s on %s (%s)", name, dev, str(dt).replace("torch.", ""))
    return pipe, name


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def single_file_config(path: Path, config: str | None, arch: str) -> str | None:
    """The ``config`` to give ``from_single_file`` for the checkpoint ``path``.

    A given folder must be a diffusers pipeline folder whose architecture matches the file
    (checked from the safetensors header, so a wrong one fails here and not as a shape error
    deep in diffusers). Without one: the embedded shapes folder when the file's UNet has the
    shapes model's architecture; else ``None`` online (diffusers fetches its default config from
    the hub); offline, an error saying to pass ``--model-config``.
    """
    from bridge.models.convert import UNET_PREFIX, architecture_mismatches

    if config:
        folder = Path(config).expanduser()
        if folder.is_dir():
            if not (folder / "model_index.json").is_file():
                raise ValueError(f"--model-config {folder}: not a diffusers pipeline folder (no model_index.json)")
            if path.suffix == ".safetensors" and arch == "sd":
                try:
                    problems = architecture_mismatches(path, folder)
                except (FileNotFoundError, KeyError, ValueError) as exc:
                    log.debug("could not compare %s with %s: %s", path, folder, exc)
                    problems = []
                if problems:
                    raise ValueError(
                        f"{path} does not have the architecture of --model-config {folder}: " + "; ".join(problems)
                        + ". Pass the diffusers folder of the model this checkpoint was made from."
                    )
            return str(folder)
        if is_offline() or config.startswith((".", "/", "~")):
            raise FileNotFoundError(f"--model-config {config}: no such folder (offline, it must be a local diffusers folder)")
        return config  # a hub id, fetched by diffusers
    if path.suffix == ".safetensors" and arch == "sd":
        from bridge.models.shapes import SHAPES_WEIGHTS

        try:
            if not architecture_mismatches(path, SHAPES_WEIGHTS, prefixes=(UNET_PREFIX,)):
                log.info("%s has the shapes model's UNet: using %s as its config", path, SHAPES_WEIGHTS)
                return str(SHAPES_WEIGHTS)
        except Exception as exc:  # an unreadable header: let diffusers report it below
            log.debug("could not compare %s with the shapes model: %s", path, exc)
    if is_offline():
        raise ValueError(
            f"{path}: loading a single-file checkpoint offline needs the configs of its components. "
            "Pass --model-config DIR (load_pipeline(config=DIR)) with a local diffusers folder of the same "
            "architecture (e.g. the base model it was fine-tuned from, saved with save_pretrained)."
        )
    return None


def _load_external(model: str, dtype: torch.dtype, arch: str, config: str | None = None) -> Any:
    import diffusers

    path = Path(model).expanduser()
    if path.suffix in SINGLE_FILE_SUFFIXES and not path.exists():
        raise FileNotFoundError(f"--model {model}: no such checkpoint file")
    if not path.exists() and model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"--model {model}: no such file or folder")
    if path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise ValueError(f"{path}: a single-file checkpoint must be .safetensors or .ckpt")
        if arch == "auto":
            arch = "sdxl" if path.stat().st_size > 5_000_000_000 else "sd"
        cls = {"sd": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline}.get(arch)
        if cls is None:
            raise ValueError(f"unknown --arch {arch!r} for a single-file checkpoint; choose sd or sdxl")
        cfg = single_file_config(path, config, arch)
        kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": is_offline()}
        if cfg is not None:
            kwargs["config"] = cfg
        return cls.from_single_file(str(path), **kwargs)
    if config:
        log.warning("--model-config is used for single-file checkpoints only; ignored for %s", model)
    if path.is_dir():
        from .shapes.local_text import localise

        pipe = diffusers.DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype)
        localise(pipe)  # a shapes checkpoint with a local text encoder (config local_window): its band mask
        return pipe
    offline = is_offline()
    try:
        return diffusers.DiffusionPipeline.from_pretrained(model, torch_dtype=dtype, local_files_only=offline)
    except Exception as exc:
        where = "it is not in the local hub cache and HF_HUB_OFFLINE=1 forbids downloading" if offline else "loading it as a hub id failed"
        raise RuntimeError(
            f"could not load model {model!r}: it is not a local folder or file, and {where} ({exc}). "
            "Pass a diffusers folder, a .safetensors file (with --model-config DIR offline), "
            "or nothing for the embedded shapes model."
        ) from exc


def quiet_libraries() -> None:
    """Silence diffusers/transformers progress bars and advice; our own logging says what matters."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
