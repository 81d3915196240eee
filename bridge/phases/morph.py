"""Three-phase morph (noise -> structure -> detail): progress, phase id, smooth cross-fade
weights and per-phase accumulated maps. Progress maths is plain Python floats (no device sync)."""

from __future__ import annotations

from torch import Tensor

from bridge.protocol import PHASE_NAMES  # one list of names, shared with every receiver


def smoothstep(x: float) -> float:
    """Hermite smoothstep ``3x^2 - 2x^3`` on x clamped to [0, 1]; C1-continuous, slope <= 1.5."""
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


def run_progress(step: int, total_steps: int) -> float:
    """Fraction of the run completed after 0-based ``step``: ``(step + 1) / total_steps``.

    With boundaries 0.2/0.6 over 50 steps this puts steps 1-10, 11-30, 31-50 (1-based) in
    the three phases, as the visual design says.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps - 1}] (0-based) for total_steps={total_steps}, got {step}")
    return (step + 1) / total_steps


def phase_index(progress: float, boundaries: tuple[float, float]) -> int:
    """Hard phase id: 0 if progress <= b1, 1 if progress <= b2, else 2."""
    b1, b2 = boundaries
    return 0 if progress <= b1 else (1 if progress <= b2 else 2)


def phase_progress(progress: float, boundaries: tuple[float, float]) -> float:
    """Progress within the current phase, in [0, 1] (1 at the phase's last step)."""
    b1, b2 = boundaries
    lo, hi = ((0.0, b1), (b1, b2), (b2, 1.0))[phase_index(progress, boundaries)]
    return min(1.0, max(0.0, (progress - lo) / (hi - lo)))


def _ramp(progress: float, boundary: float, width: float) -> float:
    """0 before the cross-fade window centred on ``boundary``, 1 after, smoothstep inside."""
    if width <= 0.0:
        return 1.0 if progress > boundary else 0.0
    return smoothstep((progress - boundary) / width + 0.5)


def phase_weights(progress: float, boundaries: tuple[float, float], width: float) -> tuple[float, float, float]:
    """Cross-fade weights (noise, structure, detail): non-negative, sum to 1, continuous in
    progress when ``width > 0`` (Lipschitz 1.5 / width), 0.5/0.5 exactly at a boundary.

    ``w = (1 - r1, r1 - r2, r2)`` with ``r_i`` a smoothstep ramp of ``width`` centred on ``b_i``;
    r1 >= r2 always because b1 < b2, so the middle weight is never negative.
    """
    b1, b2 = boundaries
    r1 = _ramp(progress, b1, width)
    r2 = _ramp(progress, b2, width)
    return (1.0 - r1, max(0.0, r1 - r2), r2)


def accumulate_phases(acc: Tensor, weight_sums: list[float], textures: Tensor, weights: tuple[float, float, float]) -> None:
    """Add this step's textures into each phase's accumulator, weighted by that phase's
    weight (in place). acc: ``[3, N, H, W]``; textures: ``[N, H, W]``; weight_sums: 3 floats."""
    for p, w in enumerate(weights):
        if w > 0.0:
            acc[p].add_(textures, alpha=w)
            weight_sums[p] += w


def phase_maps(acc: Tensor, weight_sums: list[float]) -> Tensor:
    """Per-phase accumulated maps: the phase-weighted mean of the textures seen in each
    phase so far (zeros for a phase not reached yet). ``[3, N, H, W]`` in [0, 1]."""
    out = acc.clone()  # [3, N, H, W]
    for p, s in enumerate(weight_sums):
        out[p].mul_(1.0 / s if s > 0.0 else 0.0)
    return out.clamp_(0.0, 1.0)


def blend_phase_maps(acc: Tensor, weight_sums: list[float], weights: tuple[float, float, float]) -> Tensor:
    """Morph map: the per-phase accumulated maps mixed by the current phase weights.
    acc: ``[3, N, H, W]`` -> ``[N, H, W]`` in [0, 1]."""
    out = acc.new_zeros(acc.shape[1:])  # [N, H, W]
    for p, (w, s) in enumerate(zip(weights, weight_sums)):
        if w > 0.0 and s > 0.0:
            out.add_(acc[p], alpha=w / s)
    return out.clamp_(0.0, 1.0)
