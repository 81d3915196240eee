"""Force parameters of the visual design: Chaos = Wind x ChaosMask, Stability = Attraction x
StabilityMask, with Wind and Attraction blended over time by the phase weights."""

from __future__ import annotations

from torch import Tensor


def blend(weights: tuple[float, float, float], per_phase: tuple[float, float, float]) -> float:
    """Phase-weighted mix of a per-phase value: ``sum_p weights[p] * per_phase[p]``."""
    return float(sum(w * v for w, v in zip(weights, per_phase)))


def force_gains(
    weights: tuple[float, float, float],
    wind: tuple[float, float, float],
    attraction: tuple[float, float, float],
) -> tuple[float, float]:
    """(wind, attraction) at this moment of the run, blended by the phase weights."""
    return blend(weights, wind), blend(weights, attraction)


def chaos_force(chaos: Tensor, wind: float) -> Tensor:
    """Chaos = Wind x ChaosMask (same shape as the mask)."""
    return chaos * wind


def stability_force(stability: Tensor, attraction: float) -> Tensor:
    """Stability = Attraction x StabilityMask (same shape as the mask)."""
    return stability * attraction
