"""Scheduler-side helpers: patching methods exactly and reading a step's outputs."""

from __future__ import annotations

from typing import Any, Callable

import torch

_MISSING = object()


def patch_method(obj: Any, name: str, replacement: Callable) -> Callable[[], None]:
    """Shadow ``obj.name`` with an instance attribute; the returned callable restores it exactly."""
    before = obj.__dict__.get(name, _MISSING)
    obj.__dict__[name] = replacement

    def restore() -> None:
        if obj.__dict__.get(name) is replacement:
            if before is _MISSING:
                del obj.__dict__[name]
            else:
                obj.__dict__[name] = before

    return restore


def step_outputs(out: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(prev_sample, pred_original_sample)`` from a scheduler step's output, tuple or dataclass."""
    if isinstance(out, tuple):
        return (out[0] if out else None), (out[1] if len(out) > 1 and torch.is_tensor(out[1]) else None)
    return getattr(out, "prev_sample", None), getattr(out, "pred_original_sample", None)


def estimate_x0(sched: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor | None:
    """Predicted clean latents for ᾱ-parameterised schedulers that do not return them (e.g. DPM-Solver).

    x0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t for ε-prediction; x0 = √ᾱ_t x_t − √(1−ᾱ_t) v for v-prediction.
    Returns None where the scheduler's parameterisation is not known (then only the final image is shown).
    ``cache`` keeps ᾱ on the sample's device between steps (a host→device copy per step would wait).
    """
    if getattr(sched, "sigmas", None) is not None and "Euler" in type(sched).__name__:
        return None  # sigma-space samples: Euler-type schedulers return x0 themselves
    alphas = getattr(sched, "alphas_cumprod", None)
    kind = getattr(getattr(sched, "config", None), "prediction_type", "epsilon")
    if alphas is None or kind not in ("epsilon", "v_prediction") or model_output.shape != sample.shape:
        return None
    if torch.is_tensor(timestep):  # indexed on the device: int(timestep) would wait for the GPU
        t = timestep.flatten()[0].long().clamp(0, len(alphas) - 1)
        key = (id(alphas), str(sample.device))
        on_device = (cache or {}).get(key)
        if on_device is None:
            on_device = alphas.to(sample.device, torch.float32)
            if cache is not None:
                cache.clear()
                cache[key] = on_device
        a = on_device[t.to(sample.device)]
    else:
        if not 0 <= int(timestep) < len(alphas):
            return None
        a = alphas[int(timestep)].to(sample.device, torch.float32)
    x, e = sample.float(), model_output.float()
    x0 = (x - (1 - a).sqrt() * e) / a.sqrt() if kind == "epsilon" else a.sqrt() * x - (1 - a).sqrt() * e
    return x0.to(sample.dtype)
