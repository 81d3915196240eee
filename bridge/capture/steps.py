"""Scheduler-side helpers: patching methods exactly and reading a step's outputs."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
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
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is None:
        x0 = getattr(out, "denoised", None)  # LCMScheduler's name for its (boundary-scaled) x0
    return getattr(out, "prev_sample", None), x0


def estimate_x0(sched: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor | None:
    """Predicted clean latents for ᾱ-parameterised schedulers that do not return them (e.g. DPM-Solver).

    x0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t for ε-prediction; x0 = √ᾱ_t x_t − √(1−ᾱ_t) v for v-prediction.
    Returns None where the scheduler's parameterisation is not known (then only the final image is shown).
    ``cache`` keeps the per-timestep coefficients on the sample's device between steps (a host→device
    copy per step would wait); the timestep is looked up there without reading it on the host.
    """
    if getattr(sched, "sigmas", None) is not None and "Euler" in type(sched).__name__:
        return None  # sigma-space samples: Euler-type schedulers return x0 themselves
    alphas = getattr(sched, "alphas_cumprod", None)
    kind = getattr(getattr(sched, "config", None), "prediction_type", "epsilon")
    if alphas is None or kind not in ("epsilon", "v_prediction") or model_output.shape != sample.shape:
        return None
    if torch.is_tensor(timestep) and timestep.device == sample.device:  # looked up where it is: int(t) would wait for the GPU
        key = (id(alphas), kind, str(sample.device))
        coef = cache.get(key) if cache is not None and cache.get("alphas") is alphas else None
        if coef is None:
            coef = _x0_coefficients(alphas, kind).to(sample.device, torch.float32)  # [T, 2]
            if cache is not None:
                cache.clear()
                cache.update({key: coef, "alphas": alphas})  # held: its id cannot be reused while cached
        # a [1] index tensor: indexing with a 0-d tensor (coef[t]) would call .item(), a host sync
        t = timestep.reshape(-1)[:1].long().clamp(0, len(alphas) - 1)
        c = coef.index_select(0, t)[0]  # [2]
        x0 = torch.addcmul(sample.float() * c[0], model_output.float(), c[1], value=-1)
        return x0.to(sample.dtype)
    if not 0 <= int(timestep) < len(alphas):  # a host number (or a CPU tensor: no wait)
        return None
    cx, ce = _x0_coefficients(alphas[int(timestep)].reshape(1), kind)[0].tolist()
    return torch.add(sample.float() * cx, model_output.float(), alpha=-ce).to(sample.dtype)


def _x0_coefficients(alphas: torch.Tensor, kind: str) -> torch.Tensor:
    """``[T, 2]`` float64 ``(c_x, c_e)`` per timestep with x0 = c_x·x_t − c_e·ε (or v)."""
    a = alphas.detach().double().cpu().numpy()
    c = np.stack([1 / np.sqrt(a), np.sqrt(1 - a) / np.sqrt(a)] if kind == "epsilon" else [np.sqrt(a), np.sqrt(1 - a)], 1)
    return torch.from_numpy(c)
