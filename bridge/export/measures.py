"""Per-step, per-word numbers of a recorded run (pure numpy), by the one definition of each
name (bridge.phases.measures and bridge.phases.timeline.measures_of, docs/TIMELINES.md).

The series (mass, share, entropy, centroid, spread, change) are the ones the step packets
carried, computed in the phases step from the *raw* attention maps; a trace whose step packets
lack them (older recordings) gets the same formulas applied to its textures, and the export
says so (``measures_from``). Added here from the textures: peak (max value) and its position;
and from the series: the AUC so far (running sum of mass / number of steps, so the last step's
value is the run's AUC) and the agreement of each step's layout with the final one.
"""

from __future__ import annotations

import numpy as np
import torch

from bridge.phases.measures import agreement_with_final, area_under_curve, peak_steps, stabilisation_steps, emergence_steps
from bridge.phases.timeline import SERIES, distribution_change, spatial_distribution, step_measures

MEASURES = (*SERIES, "peak", "peak_x", "peak_y", "auc_so_far", "agreement")
SUMMARY = ("auc", "peak_mass", "peak_step", "emergence_step", "stabilisation_step", "mean_entropy")


def auc_so_far(mass: np.ndarray) -> np.ndarray:
    """``mass [T, N]`` -> ``[T, N]``: cumulative sum of mass / T (last row = run AUC)."""
    mass = np.asarray(mass, dtype=np.float64)
    return np.cumsum(mass, axis=0) / max(mass.shape[0], 1)


def texture_series(maps: np.ndarray) -> dict[str, np.ndarray]:
    """The SERIES formulas applied to textures ``[T, N, H, W]`` (for traces without raw series)."""
    out, prev = [], None
    for m in torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).clamp_min(0.0):
        dist = spatial_distribution(m)
        out.append(step_measures(m, dist, distribution_change(dist, prev)).numpy())
        prev = dist
    stacked = np.asarray(out, dtype=np.float64).reshape(len(maps), len(SERIES), maps.shape[1])  # [T, 7, N]
    return {name: stacked[:, i] for i, name in enumerate(SERIES)}


def step_table(maps: np.ndarray, series: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``maps [T, N, H, W]`` (+ the run's SERIES ``[T, N]`` if recorded) -> each name in MEASURES -> ``[T, N]`` float64."""
    t, n, h, w = maps.shape
    out = {k: np.asarray(v, np.float64) for k, v in (series or texture_series(maps)).items()}
    flat = np.asarray(maps, dtype=np.float64).reshape(t, n, h * w)
    arg = flat.argmax(axis=2)  # [T, N]
    out["peak"] = flat.max(axis=2)
    out["peak_x"] = ((arg % w) + 0.5) / w
    out["peak_y"] = ((arg // w) + 0.5) / h
    out["auc_so_far"] = auc_so_far(out["mass"])
    total = flat.sum(axis=2, keepdims=True)
    dist = np.where(total > 0, flat / np.where(total > 0, total, 1.0), 1.0 / (h * w))  # [T, N, H*W]
    out["agreement"] = agreement_with_final(dist)
    return {k: out[k] for k in MEASURES}


def run_summary(table: dict[str, np.ndarray], steps: np.ndarray, stable_threshold: float = 0.02,
                emergence_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """Per-word summary ``[N]`` of a :func:`step_table`, by the phases' definitions (the same
    numbers the timeline packet carries for the same series and settings)."""
    mass = table["mass"]
    return {"auc": area_under_curve(mass), "peak_mass": mass.max(axis=0), "peak_step": peak_steps(mass, steps),
            "emergence_step": emergence_steps(mass, steps, emergence_fraction),
            "stabilisation_step": stabilisation_steps(table["change"], steps, stable_threshold),
            "mean_entropy": table["entropy"].mean(axis=0)}
