"""What a request will cost before it starts: memory and time per step, and a refusal with the
reason when the machine cannot give it.

Why per step: the daemon cancels a run (a new prompt, ``cancel``, SIGTERM) between steps, so a
step that takes minutes makes the whole daemon deaf for minutes. A request is refused when its
predicted step time is over ``max_step_seconds`` or its predicted memory is over what the device
has free. Both predictions are deliberately simple, and said here so they can be checked:

* memory: the denoiser's activations at its widest level, ``tokens × width × batch × bytes × 8``
  (8 live tensors: the hidden state, its residual, q, k, v, the attention output and the
  feed-forward's 2 halves), with tokens the latent pixels (over patch² for a transformer). It is
  a lower bound: weights are already loaded, and attention scores are not counted (SDPA does not
  build them), so a refusal on memory is never a false alarm;
* time: the measured seconds per step of the latest run on this runner, scaled by the ratio of
  latent tokens to the power 1.5 (convolutions grow with the tokens, self-attention with their
  square; 1.5 sits between). With no run yet, one forward of the denoiser at a 64×64 latent is
  timed once (only when a request is over 4× that size: normal requests never pay for it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

#: default longest predicted step a request may have (seconds): a cancel answers within one step
MAX_STEP_SECONDS = 30.0
#: the tokens-ratio exponent of the time prediction (see the module docstring)
TIME_EXPONENT = 1.5
_LIVE_TENSORS = 8
_PROBE_SIDE = 64  # latent pixels per side of the timing probe


class BudgetError(ValueError):
    """A request the machine cannot serve; the message says what it would need and what there is."""


@dataclass(frozen=True)
class StepRate:
    """A measured step: ``seconds`` per step at ``tokens`` latent tokens."""

    tokens: int
    seconds: float


def latent_tokens(pipe: Any, width: int | None, height: int | None) -> int:
    """Latent tokens of one image (latent pixels, over patch² for a transformer)."""
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    cfg = getattr(model, "config", None)
    default = getattr(pipe, "default_sample_size", None) or getattr(cfg, "sample_size", None) or 64
    default = default[0] if isinstance(default, (tuple, list)) else default
    h = (height // scale) if height else int(default)
    w = (width // scale) if width else int(default)
    patch = int(getattr(cfg, "patch_size", 1) or 1) if getattr(pipe, "unet", None) is None else 1
    return max(1, (h // patch) * (w // patch))


def model_width(pipe: Any) -> int:
    """Channels at the denoiser's widest-resolution level (UNet) or its hidden size (transformer)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return int(unet.config.block_out_channels[0])
    cfg = pipe.transformer.config
    return int(cfg.num_attention_heads * cfg.attention_head_dim)


def memory_bytes(pipe: Any, tokens: int, guidance: float) -> int:
    """The lower-bound activation memory of one step (module docstring)."""
    from bridge.runner import denoiser  # noqa: PLC0415

    param = next(denoiser(pipe).parameters())
    batch = 2 if guidance > 1 else 1
    return tokens * model_width(pipe) * batch * param.element_size() * _LIVE_TENSORS


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still give (CUDA: free memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def predict_step_seconds(rate: StepRate, tokens: int) -> float:
    return rate.seconds * (tokens / rate.tokens) ** TIME_EXPONENT


def probe_rate(pipe: Any) -> StepRate:
    """Time one guided forward of the denoiser at a 64×64 latent (random inputs)."""
    from bridge.runner import denoiser  # noqa: PLC0415

    model = denoiser(pipe)
    param = next(model.parameters())
    unet = getattr(pipe, "unet", None)
    if unet is None:  # a transformer's inputs differ per family: time the UNet-free path from history only
        raise BudgetError("no timing probe for transformer pipelines")
    latent = torch.randn(2, unet.config.in_channels, _PROBE_SIDE, _PROBE_SIDE, device=param.device, dtype=param.dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=param.device, dtype=param.dtype)
    kwargs: dict[str, Any] = {}
    if getattr(unet.config, "addition_embed_type", None) == "text_time":  # SDXL's extra conditioning
        proj = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, proj, device=param.device, dtype=param.dtype),
                                       "time_ids": torch.zeros(2, 6, device=param.device, dtype=param.dtype)}
    with torch.inference_mode():
        t0 = time.perf_counter()
        unet(latent, torch.tensor(500, device=param.device), text, **kwargs)
        if param.device.type == "cuda":
            torch.cuda.synchronize(param.device)
        seconds = time.perf_counter() - t0
    return StepRate(_PROBE_SIDE * _PROBE_SIDE, seconds)


class Budget:
    """Checks requests against the device; learns the step rate from every finished run."""

    def __init__(self, pipe: Any, max_step_seconds: float = MAX_STEP_SECONDS) -> None:
        self.pipe = pipe
        self.max_step_seconds = max_step_seconds
        self.rate: StepRate | None = None

    def learn(self, tokens: int, seconds_per_step: float) -> None:
        if seconds_per_step > 0:
            self.rate = StepRate(tokens, seconds_per_step)

    def check(self, width: int | None, height: int | None, guidance: float, probe: bool = True) -> None:
        """Raise :class:`BudgetError` with the reason if the request cannot be served here.
        ``probe``: may time one forward of the model when no run has been measured yet (only on
        the thread that owns the model: never beside a run)."""
        from bridge.runner import denoiser  # noqa: PLC0415

        tokens = latent_tokens(self.pipe, width, height)
        device = next(denoiser(self.pipe).parameters()).device
        need, free = memory_bytes(self.pipe, tokens, guidance), free_memory(device)
        size = f"{width or 'default'}×{height or 'default'}"
        if free is not None and need > free:
            raise BudgetError(f"refused: a {size} image needs at least {need / 2**30:.1f} GiB for the model's "
                              f"activations; {device.type} has {free / 2**30:.1f} GiB free")
        rate = self.rate
        if rate is None and probe and tokens > 4 * _PROBE_SIDE * _PROBE_SIDE:
            try:
                rate = self.rate = probe_rate(self.pipe)
            except BudgetError:
                rate = None
        if rate is not None and tokens > rate.tokens:
            step = predict_step_seconds(rate, tokens)
            if step > self.max_step_seconds:
                raise BudgetError(f"refused: a {size} image would take about {step:.0f} s per step here (measured "
                                  f"{rate.seconds:.2f} s at {rate.tokens} latent tokens; this one has {tokens}); the "
                                  f"limit is {self.max_step_seconds:.0f} s per step so that a cancel answers within a "
                                  f"step (serve --max-step-seconds)")
