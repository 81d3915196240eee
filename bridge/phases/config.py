"""PhaseConfig: every tunable of the phases stage in one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

#: Normalisation modes for the per-word textures (see docs/PHASES.md).
Normalisation = Literal["running_max", "minmax", "share"]
NORMALISATIONS: tuple[str, ...] = get_args(Normalisation)
#: How the global view is built from the word textures.
GlobalView = Literal["max", "mean"]
GLOBAL_VIEWS: tuple[str, ...] = get_args(GlobalView)


def _check_triple(name: str, value: tuple[float, float, float]) -> tuple[float, float, float]:
    """Return ``value`` as a tuple of three finite floats, or raise naming the field."""
    try:
        triple = tuple(float(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"PhaseConfig.{name} must be three numbers (noise, structure, detail), got {value!r}") from exc
    if len(triple) != 3:
        raise ValueError(f"PhaseConfig.{name} must be three numbers (noise, structure, detail), got {value!r}")
    return triple  # type: ignore[return-value]


@dataclass(frozen=True)
class PhaseConfig:
    """Settings of the phases stage; defaults are what docs/PHASES.md argues for.

    normalisation: ``running_max`` (default), ``minmax`` or ``share``.
    boundaries: ends of the noise and structure phases, as fractions of the run (0 < b1 < b2 < 1).
    crossfade: width of each cross-fade around a boundary, as a fraction of the run (0 = hard cut).
    settle_rate: EMA rate of the per-pixel change that drives the ``settled`` map (0 < rate <= 1).
    settle_scale: change level (texture units per step) at which ``settled`` = exp(-1) ~ 0.37.
    wind / attraction: force gains per phase (noise, structure, detail), blended by phase weights.
    stable_threshold: total-variation change per step below which a word's map counts as stable.
    emergence_fraction: fraction of its peak mass at which a word counts as emerged.
    global_view: ``max`` (default) or ``mean`` over the word textures.
    """

    normalisation: Normalisation = "running_max"
    boundaries: tuple[float, float] = (0.2, 0.6)
    crossfade: float = 0.1
    settle_rate: float = 0.3
    settle_scale: float = 0.05
    wind: tuple[float, float, float] = (1.0, 0.5, 0.1)
    attraction: tuple[float, float, float] = (0.1, 0.6, 1.0)
    stable_threshold: float = 0.02
    emergence_fraction: float = 0.5
    global_view: GlobalView = "max"

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"PhaseConfig.normalisation {self.normalisation!r} is unknown; expected one of {', '.join(NORMALISATIONS)}"
            )
        if self.global_view not in GLOBAL_VIEWS:
            raise ValueError(f"PhaseConfig.global_view {self.global_view!r} is unknown; expected one of {', '.join(GLOBAL_VIEWS)}")
        try:
            b1, b2 = (float(b) for b in self.boundaries)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"PhaseConfig.boundaries must be two fractions (b1, b2), got {self.boundaries!r}") from exc
        if not 0.0 < b1 < b2 < 1.0:
            raise ValueError(f"PhaseConfig.boundaries must satisfy 0 < b1 < b2 < 1, got {self.boundaries!r} (default (0.2, 0.6))")
        object.__setattr__(self, "boundaries", (b1, b2))
        if not 0.0 <= self.crossfade <= 1.0:
            raise ValueError(f"PhaseConfig.crossfade must be in [0, 1] (fraction of the run), got {self.crossfade!r}")
        if not 0.0 < self.settle_rate <= 1.0:
            raise ValueError(f"PhaseConfig.settle_rate must be in (0, 1], got {self.settle_rate!r}")
        if not self.settle_scale > 0.0:
            raise ValueError(f"PhaseConfig.settle_scale must be > 0, got {self.settle_scale!r}")
        if not self.stable_threshold > 0.0:
            raise ValueError(f"PhaseConfig.stable_threshold must be > 0, got {self.stable_threshold!r}")
        if not 0.0 < self.emergence_fraction <= 1.0:
            raise ValueError(f"PhaseConfig.emergence_fraction must be in (0, 1], got {self.emergence_fraction!r}")
        object.__setattr__(self, "wind", _check_triple("wind", self.wind))
        object.__setattr__(self, "attraction", _check_triple("attraction", self.attraction))
