"""Stability/chaos masks (the visual design's StabilityMask = attention, ChaosMask = 1 - attention)
and the temporal ``settled`` map (how much a pixel has stopped changing)."""

from __future__ import annotations

import torch
from torch import Tensor


def stability_mask(textures: Tensor) -> Tensor:
    """StabilityMask = attention texture, clamped to [0, 1]. Any shape."""
    return textures.clamp(0.0, 1.0)


def chaos_mask(textures: Tensor) -> Tensor:
    """ChaosMask = 1 - attention texture, in [0, 1]. Any shape."""
    return 1.0 - stability_mask(textures)


def update_change_ema(ema: Tensor | None, textures: Tensor, previous: Tensor | None, rate: float) -> Tensor | None:
    """Exponential average of the per-pixel step-to-step change ``|tex_t - tex_{t-1}|``.

    Returns None while there is no previous texture (first step); the first measured change
    seeds the average; afterwards ``ema + rate * (change - ema)``. Shapes match ``textures``.
    """
    if previous is None:
        return None
    change = (textures - previous).abs()  # [N, H, W]
    if ema is None:
        return change
    return ema + rate * (change - ema)


def settledness(ema: Tensor | None, scale: float, like: Tensor) -> Tensor:
    """``settled = exp(-ema / scale)`` in [0, 1]: 1 = stopped changing, 0 = changing fast.

    Before any change has been measured (first step) nothing counts as settled: zeros like ``like``.
    """
    if ema is None:
        return torch.zeros_like(like)
    return torch.exp(-ema.clamp_min(0.0) / scale)
