"""Token timelines: per-step spatial measures of each word's raw map, and the run summary
(peak, emergence, stabilisation, AUC) that answers "when does each word's object emerge?"."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .measures import area_under_curve, emergence_steps, peak_steps, stabilisation_steps

#: Per-step series, in the row order of :func:`step_measures`.
SERIES = ("mass", "share", "entropy", "centroid_x", "centroid_y", "spread", "change")


def spatial_distribution(maps: Tensor) -> Tensor:
    """Each map as a probability distribution over pixels (uniform where a map is all zero).

    maps: ``[N, H, W]`` non-negative -> ``[N, H*W]`` rows summing to 1. Scale-invariant.
    """
    flat = maps.flatten(1)  # [N, H*W]
    total = flat.sum(dim=1, keepdim=True)  # [N, 1]
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > 0, flat / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def distribution_change(dist: Tensor, previous: Tensor | None) -> Tensor:
    """Total-variation distance ``0.5 * sum |p_t - p_{t-1}|`` per word, in [0, 1].

    dist, previous: ``[N, H*W]``. Without a previous step there is no change to measure: NaN ``[N]``.
    """
    if previous is None:
        return torch.full(dist.shape[:1], float("nan"), dtype=dist.dtype, device=dist.device)
    return 0.5 * (dist - previous).abs().sum(dim=1)


_TINY = torch.finfo(torch.float32).tiny


def pixel_centres(h: int, w: int, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``xs`` ``[W]`` = (j+0.5)/W and ``ys`` ``[H]`` = (i+0.5)/H (a run constant)."""
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    return xs, ys


def measures_of(mass: Tensor, dist: Tensor, change: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Live timeline values of one step, stacked ``[7, N]`` in :data:`SERIES` order: the one
    definition the fused step (phases/fused.py) and :func:`step_measures` share.

    mass ``[N]``: mean raw attention per pixel; share: mass / sum of the words' masses;
    entropy: Shannon entropy of the spatial distribution / log(H*W) (0 focused, 1 uniform;
    0 log 0 = 0); centroid_x/y: attention-weighted centre, pixel centres from
    :func:`pixel_centres`, y from the top; spread: sqrt of the weighted variance of the
    distance from the centroid (image units); change ``[N]``: :func:`distribution_change`.
    dist ``[N, H*W]`` from :func:`spatial_distribution`; xs ``[W]``, ys ``[H]``.
    """
    n, (h, w) = mass.shape[0], (ys.shape[0], xs.shape[0])
    hw = h * w
    total = mass.sum()
    share = mass / torch.where(total > 0, total, torch.ones_like(total))  # [N]
    # p log p with 0 log 0 = 0 (clamping to the smallest normal float only changes terms below 1e-36;
    # log + mul is about twice as fast as xlogy on CPU)
    entropy = -(dist.clamp_min(_TINY).log_().mul_(dist)).sum(dim=1) / math.log(hw) if hw > 1 else torch.zeros_like(mass)
    grid = dist.view(n, h, w)  # [N, H, W]
    px, py = grid.sum(dim=1), grid.sum(dim=2)  # [N, W], [N, H] marginals
    cx, cy = px @ xs, py @ ys  # [N]
    var = (px * (xs - cx[:, None]).square()).sum(dim=1) + (py * (ys - cy[:, None]).square()).sum(dim=1)
    spread = var.clamp_min(0.0).sqrt()  # [N]
    return torch.stack([mass, share, entropy, cx, cy, spread, change])  # [7, N]


def step_measures(maps: Tensor, dist: Tensor, change: Tensor) -> Tensor:
    """:func:`measures_of` from a step's raw maps ``[N, H, W]``, dist ``[N, H*W]``, change ``[N]``."""
    _, h, w = maps.shape
    return measures_of(maps.flatten(1).mean(dim=1), dist, change, *pixel_centres(h, w, maps.device, maps.dtype))


@dataclass
class TimelineSummary:
    """The run's token timelines: per-step series ``[T, N]`` and per-word measures ``[N]``."""

    words: list[str]
    steps: np.ndarray  # [T] int64, 0-based step indices recorded
    total_steps: int | None
    series: dict[str, np.ndarray]  # name -> [T, N] float32, names from SERIES
    peak_step: np.ndarray  # [N] int64
    peak_mass: np.ndarray  # [N] float64
    emergence_step: np.ndarray  # [N] int64
    stabilisation_step: np.ndarray  # [N] int64
    auc: np.ndarray  # [N] float64
    settings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_history(
        cls,
        words: list[str],
        steps: list[int],
        history: np.ndarray,
        total_steps: int | None,
        stable_threshold: float,
        emergence_fraction: float,
    ) -> "TimelineSummary":
        """Build from stacked live measures ``history`` ``[T, 7, N]`` (SERIES order)."""
        steps_arr = np.asarray(steps, dtype=np.int64)  # [T]
        history = history.reshape(len(steps), len(SERIES), len(words))  # [T, 7, N]
        series = {name: history[:, i, :].astype(np.float32) for i, name in enumerate(SERIES)}
        mass = history[:, 0, :].astype(np.float64)  # [T, N]
        return cls(
            words=list(words),
            steps=steps_arr,
            total_steps=total_steps,
            series=series,
            peak_step=peak_steps(mass, steps_arr),
            peak_mass=mass.max(axis=0) if len(steps) else np.zeros(len(words)),
            emergence_step=emergence_steps(mass, steps_arr, emergence_fraction),
            stabilisation_step=stabilisation_steps(history[:, 6, :].astype(np.float64), steps_arr, stable_threshold),
            auc=area_under_curve(mass),
            settings={"stable_threshold": float(stable_threshold), "emergence_fraction": float(emergence_fraction)},
        )

    def emergence_order(self) -> list[str]:
        """Words sorted by emergence step, then peak step (words that never emerge last)."""
        big = np.iinfo(np.int64).max
        keys = [(big if e < 0 else int(e), int(p), i) for i, (e, p) in enumerate(zip(self.emergence_step, self.peak_step))]
        return [self.words[i] for _, _, i in sorted(keys)]

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-step series ``[T, N]`` float32 plus ``steps`` ``[T]`` int64, for a ``timeline`` packet."""
        return {"steps": self.steps.copy(), **{k: v.copy() for k, v in self.series.items()}}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: per-word measures as lists ``[N]``, per-step series (SERIES names)
        as lists of lists ``[T][N]``; NaN (the change at the first step) becomes None."""

        def clean(values: np.ndarray) -> list[Any]:
            return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values.tolist()]

        return {
            "words": list(self.words),
            "steps": self.steps.tolist(),
            "total_steps": self.total_steps,
            "peak_step": self.peak_step.tolist(),
            "peak_mass": clean(self.peak_mass),
            "emergence_step": self.emergence_step.tolist(),
            "stabilisation_step": self.stabilisation_step.tolist(),
            "auc": clean(self.auc),
            "emergence_order": self.emergence_order(),
            "settings": dict(self.settings),
            # per-step series [T][N] at the top level, so a consumer can move every
            # list-of-lists into packet arrays and keep the rest as the header
            **{k: [clean(row) for row in v.astype(np.float64)] for k, v in self.series.items()},
        }
