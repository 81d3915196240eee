"""Per-step, per-word numbers of the maps as recorded (pure numpy).

Definitions match the live stream (bridge.phases.measures.word_measures, the same as the
phases' timelines): mass = mean value, entropy = Shannon entropy of the map as a distribution
/ log(H*W), centroid in [0, 1] with y = 0 at the top. Added here: peak (max value) and its
position, and the AUC so far (running sum of mass / number of steps, so the last step's value
is the run's AUC as bridge.phases.area_under_curve defines it).
"""

from __future__ import annotations

import numpy as np

from bridge.phases.measures import word_measures

MEASURES = ("mass", "entropy", "peak", "peak_x", "peak_y", "centroid_x", "centroid_y", "auc_so_far")


def auc_so_far(mass: np.ndarray) -> np.ndarray:
    """``mass [T, N]`` -> ``[T, N]``: cumulative sum of mass / T (last row = run AUC)."""
    mass = np.asarray(mass, dtype=np.float64)
    return np.cumsum(mass, axis=0) / max(mass.shape[0], 1)


def step_table(maps: np.ndarray) -> dict[str, np.ndarray]:
    """``maps [T, N, H, W]`` -> each name in MEASURES -> ``[T, N]`` float64."""
    t, n, h, w = maps.shape
    per = [word_measures(maps[i]) for i in range(t)]
    out = {"mass": np.array([p["mass"] for p in per], np.float64).reshape(t, n),
           "entropy": np.array([p["entropy"] for p in per], np.float64).reshape(t, n),
           "centroid_x": np.array([p["cx"] for p in per], np.float64).reshape(t, n),
           "centroid_y": np.array([p["cy"] for p in per], np.float64).reshape(t, n)}
    flat = np.asarray(maps, dtype=np.float64).reshape(t, n, h * w)
    arg = flat.argmax(axis=2)  # [T, N]
    out["peak"] = flat.max(axis=2)
    out["peak_x"] = ((arg % w) + 0.5) / w
    out["peak_y"] = ((arg // w) + 0.5) / h
    out["auc_so_far"] = auc_so_far(out["mass"])
    return {k: out[k] for k in MEASURES}
