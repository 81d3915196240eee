"""Normalisation of raw attention maps into [0, 1] textures, and the global view.

Raw cross-attention is a probability over *all* text tokens (start token included), so a
word's values are small and their scale drifts over the run; textures need a fixed range.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _safe(denominator: Tensor) -> Tensor:
    """Denominator with zeros replaced by ones (the numerator is zero there anyway)."""
    return torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def minmax_normalise(maps: Tensor) -> Tensor:
    """Stretch each map to [0, 1] on its own (per step, per word); a flat map becomes 0.

    maps: ``[N, H, W]`` non-negative. Returns ``[N, H, W]``.
    """
    flat = maps.flatten(1)  # [N, H*W]
    lo = flat.amin(dim=1)[:, None, None]  # [N, 1, 1]
    span = (flat.amax(dim=1) - flat.amin(dim=1))[:, None, None]  # [N, 1, 1]
    out = (maps - lo) / _safe(span) * (span > 0)  # [N, H, W]
    return out.clamp_(0.0, 1.0)


def update_running_max(running_max: Tensor | None, maps: Tensor) -> Tensor:
    """Per-map maximum over the run so far: ``max(running_max, max over pixels of maps)``.

    maps: ``[N, H, W]``; running_max: ``[N]`` or None at the first step. Returns ``[N]``.
    """
    step_max = maps.flatten(1).amax(dim=1)  # [N]
    return step_max if running_max is None else torch.maximum(running_max, step_max)


def running_max_normalise(maps: Tensor, running_max: Tensor) -> Tensor:
    """Divide each map by its running maximum (from :func:`update_running_max`), so a
    pixel's brightness means the same thing at every step of the run.

    maps: ``[N, H, W]``; running_max: ``[N]``. Returns ``[N, H, W]`` in [0, 1].
    """
    return (maps / _safe(running_max)[:, None, None]).clamp_(0.0, 1.0)


def share_normalise(maps: Tensor) -> Tensor:
    """Each word's share of the prompt words' attention at each pixel (sums to 1 over words
    where any word attends; 0 where none does).

    maps: ``[N, H, W]``. Returns ``[N, H, W]``.
    """
    total = maps.sum(dim=0, keepdim=True)  # [1, H, W]
    return (maps / _safe(total)).clamp_(0.0, 1.0)


def normalise(maps: Tensor, mode: str, running_max: Tensor | None = None) -> Tensor:
    """Dispatch to one normalisation mode; ``running_max`` ([N]) is needed for ``running_max``."""
    if mode == "minmax":
        return minmax_normalise(maps)
    if mode == "share":
        return share_normalise(maps)
    if mode == "running_max":
        if running_max is None:
            raise ValueError("running_max normalisation needs the running maximum ([N]); see update_running_max")
        return running_max_normalise(maps, running_max)
    raise ValueError(f"unknown normalisation {mode!r}; expected running_max, minmax or share")


def global_view(textures: Tensor, mode: str = "max") -> Tensor:
    """One map for the whole prompt from the word textures.

    ``max``: where *any* word attends (union; keeps a lone object as bright as it is alone).
    ``mean``: average over words (dims as the prompt grows). textures: ``[N, H, W]`` -> ``[H, W]``.
    """
    if mode == "max":
        return textures.amax(dim=0)
    if mode == "mean":
        return textures.mean(dim=0)
    raise ValueError(f"unknown global view {mode!r}; expected max or mean")
