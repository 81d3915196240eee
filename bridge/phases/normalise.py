"""Normalisation of raw attention maps into [0, 1] textures, and the global view.

Raw cross-attention is a probability over *all* text tokens (start token included), so a
word's values are small and their scale drifts over the run; textures need a fixed range.
"""

from __future__ import annotations

from collections.abc import Callable

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
    lo, hi = torch.aminmax(flat, dim=1)  # [N] each, one pass
    span = (hi - lo)[:, None, None]  # [N, 1, 1]
    out = (maps - lo[:, None, None]) / _safe(span) * (span > 0)  # [N, H, W]
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


# --- The one table of formulas -------------------------------------------------------------
# Each normaliser maps (maps [N, H, W] >= 0, running max [N], zeros before the first step) to
# (textures [N, H, W] in [0, 1], running max [N] after this step). The fused step
# (bridge/phases/fused.py, compiled or eager) and the step-at-a-time reference (normalise())
# both look the formula up here, so a new mode is one function and one Literal entry
# (phases/config.py). Zeros are an exact "no previous step": maps are >= 0, so
# max(0, step max) is the step max.


def _running_max_mode(maps: Tensor, running_max: Tensor) -> tuple[Tensor, Tensor]:
    running_max = update_running_max(running_max, maps)  # [N]
    return running_max_normalise(maps, running_max), running_max


def _minmax_mode(maps: Tensor, running_max: Tensor) -> tuple[Tensor, Tensor]:
    return minmax_normalise(maps), running_max


def _share_mode(maps: Tensor, running_max: Tensor) -> tuple[Tensor, Tensor]:
    return share_normalise(maps), running_max


#: normalisation mode -> (maps, running_max) -> (textures, running_max); keys = config.NORMALISATIONS.
NORMALISERS: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "running_max": _running_max_mode,
    "minmax": _minmax_mode,
    "share": _share_mode,
}

#: global view -> textures [N, H, W] -> [H, W]; keys = config.GLOBAL_VIEWS.
GLOBAL_VIEWS: dict[str, Callable[[Tensor], Tensor]] = {
    "max": lambda textures: textures.amax(dim=0),  # union: where any word attends
    "mean": lambda textures: textures.mean(dim=0),  # average: dims as the prompt grows
}


def normalise(maps: Tensor, mode: str, running_max: Tensor | None = None) -> Tensor:
    """The step-at-a-time reference: one mode from :data:`NORMALISERS`; ``running_max`` ([N],
    after :func:`update_running_max` for this step) is needed for ``running_max``."""
    if mode not in NORMALISERS:
        raise ValueError(f"unknown normalisation {mode!r}; expected {', '.join(NORMALISERS)}")
    if mode == "running_max" and running_max is None:
        raise ValueError("running_max normalisation needs the running maximum ([N]); see update_running_max")
    state = running_max if running_max is not None else torch.zeros(maps.shape[:1], dtype=maps.dtype, device=maps.device)
    return NORMALISERS[mode](maps, state)[0]


def global_view(textures: Tensor, mode: str = "max") -> Tensor:
    """One map for the whole prompt from the word textures ``[N, H, W]`` -> ``[H, W]``.

    ``max``: where *any* word attends (union; keeps a lone object as bright as it is alone).
    ``mean``: average over words (dims as the prompt grows).
    """
    if mode not in GLOBAL_VIEWS:
        raise ValueError(f"unknown global view {mode!r}; expected {', '.join(GLOBAL_VIEWS)}")
    return GLOBAL_VIEWS[mode](textures)
