"""Smooth three-phase morph of the phase weights between steps (pure, stdlib only).

Why: a step arrives every fraction of a second and its phase weights jump (noise -> structure
-> detail); the particles must morph, never cut. The receiver eases the weights it hands to the
shaders towards each new step's target with time constant ``tau`` seconds, the same exponential
the preview uses (bridge/preview/renderer.py, ``smoothing``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Channels of the phase CHOP the piece's shaders read, with the values used before any step.
PHASE_DEFAULTS = {"w_noise": 1.0, "w_structure": 0.0, "w_detail": 0.0, "wind": 1.0, "attraction": 1.0,
                  "has_image": 0.0}
WEIGHTS = ("w_noise", "w_structure", "w_detail")


class PhaseMorph:
    """Eases (noise, structure, detail) weights towards a target; the first target is taken as is."""

    def __init__(self) -> None:
        self.current: list[float] | None = None
        self.target: list[float] = [1.0, 0.0, 0.0]

    def set_target(self, weights: Sequence[float]) -> None:
        w = [max(0.0, float(x)) if x is not None and math.isfinite(float(x)) else 0.0 for x in weights][:3]
        w += [0.0] * (3 - len(w))
        total = sum(w)
        self.target = [x / total for x in w] if total > 0 else [1.0, 0.0, 0.0]
        if self.current is None:
            self.current = list(self.target)

    def advance(self, dt: float, tau: float) -> list[float]:
        """Move ``dt`` seconds towards the target (``tau`` <= 0: jump); returns the weights."""
        if self.current is None:
            self.current = list(self.target)
        k = 1.0 if tau <= 0 else 1.0 - math.exp(-max(dt, 0.0) / tau)
        self.current = [c + (t - c) * k for c, t in zip(self.current, self.target)]
        return list(self.current)

    @property
    def settled(self) -> bool:
        return self.current is not None and max(abs(c - t) for c, t in zip(self.current, self.target)) < 1e-4
