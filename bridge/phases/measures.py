"""Per-word measures: the one definition of each name, used by the timeline packet, OSC, the
export CSVs, the explorer and the study (docs/TIMELINES.md states the formulas).

Per step (raw attention maps ``[N, H, W]``, computed in the phases step, ``timeline.measures_of``):
mass, share, entropy, centroid, spread, change. Over a run (this module, ``[T, N]`` series in):
peak step, emergence step, stabilisation step (and its live form, ``stable_since``), AUC and
agreement with the final map. ``word_measures`` is for textures (the global view, which has no
raw map).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def word_measures(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-map mass, normalised entropy and centroid from ``maps [N, H, W]`` in [0, 1].

    mass = mean value; entropy = Shannon entropy of the map as a distribution / log(H*W)
    (0 = one hot pixel, 1 = flat); centroid (x, y) in [0, 1], y = 0 at the top row.
    """
    m = np.clip(np.asarray(maps, dtype=np.float32), 0.0, None)  # [N, H, W]
    n, h, w = m.shape
    total = m.reshape(n, -1).sum(1)  # [N]
    p = m.reshape(n, -1) / np.maximum(total, 1e-12)[:, None]
    ent = -(p * np.log(np.maximum(p, 1e-12))).sum(1) / np.log(max(h * w, 2))
    ys, xs = (np.arange(h, dtype=np.float32) + 0.5) / h, (np.arange(w, dtype=np.float32) + 0.5) / w
    pm = p.reshape(n, h, w)
    cx = (pm.sum(1) * xs).sum(1)
    cy = (pm.sum(2) * ys).sum(1)
    empty = total <= 1e-12
    ent[empty], cx[empty], cy[empty] = 0.0, 0.5, 0.5
    return {"mass": m.reshape(n, -1).mean(1), "entropy": ent, "cx": cx, "cy": cy}


def peak_steps(mass: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Step of each word's largest mass (first one on ties). mass: ``[T, N]``; steps: ``[T]``."""
    if mass.shape[0] == 0:
        return np.full(mass.shape[1], -1, dtype=np.int64)
    return steps[np.argmax(mass, axis=0)].astype(np.int64)


def emergence_steps(mass: np.ndarray, steps: np.ndarray, fraction: float) -> np.ndarray:
    """First step at which each word's mass reaches ``fraction`` of its peak mass (-1 if the
    word never has any mass). mass: ``[T, N]``; steps: ``[T]``. Scale-invariant."""
    if mass.shape[0] == 0:
        return np.full(mass.shape[1], -1, dtype=np.int64)
    peak = mass.max(axis=0)  # [N]
    reached = mass >= fraction * peak[None]  # [T, N]
    out = steps[np.argmax(reached, axis=0)].astype(np.int64)
    out[peak <= 0] = -1
    return out


def update_stable_since(previous: Tensor, change: Tensor, step: Tensor, threshold: Tensor) -> Tensor:
    """Live stabilisation: the first step of each word's current run of steps whose change is
    below ``threshold``, or -1 while the last change is at or above it (NaN, the first step's
    change, counts as above). previous, change: ``[N]``; step, threshold: scalars. At the
    run's last step this equals :func:`stabilisation_steps` (tested), so a patch that sees
    ``stable_since`` become >= 0 sees the step the summary will report unless the map moves again."""
    below = change < threshold  # NaN compares False
    return torch.where(below, torch.where(previous >= 0, previous, step), torch.full_like(previous, -1.0))


def stabilisation_steps(change: np.ndarray, steps: np.ndarray, threshold: float) -> np.ndarray:
    """First step from which each word's map changes less than ``threshold`` (total variation
    vs the previous step) at every later step of the run; -1 if the last change is still at or
    above it. Step 0 has no change (NaN) and never counts. change: ``[T, N]``; steps: ``[T]``."""
    t, n = change.shape
    out = np.full(n, -1, dtype=np.int64)
    if t == 0:
        return out
    below = np.nan_to_num(change, nan=np.inf) < threshold  # [T, N]
    stays = np.flip(np.logical_and.accumulate(np.flip(below, axis=0), axis=0), axis=0)  # [T, N]
    found = stays.any(axis=0)
    out[found] = steps[np.argmax(stays, axis=0)][found]
    return out


def area_under_curve(mass: np.ndarray) -> np.ndarray:
    """AUC: sum of the per-step mass over the recorded steps divided by their number (the
    mean mass over the run; rectangle rule, one step = width 1/T). mass: ``[T, N]`` -> ``[N]``."""
    if mass.shape[0] == 0:
        return np.zeros(mass.shape[1], dtype=np.float64)
    return mass.astype(np.float64).sum(axis=0) / mass.shape[0]


def agreement_with_final(dist: np.ndarray) -> np.ndarray:
    """Localisation over steps: ``1 - TV(p_t, p_T)``, the overlap of each step's spatial
    distribution with the run's last one, in [0, 1] (1 = the final layout already).
    dist: ``[T, N, H*W]`` rows summing to 1 -> ``[T, N]``."""
    dist = np.asarray(dist, dtype=np.float64)
    if dist.shape[0] == 0:
        return np.zeros(dist.shape[:2])
    return 1.0 - 0.5 * np.abs(dist - dist[-1:]).sum(axis=2)


def concentration(entropy: np.ndarray) -> np.ndarray:
    """Concentration = 1 - normalised entropy (0 uniform, 1 one pixel); any shape."""
    return 1.0 - np.asarray(entropy, dtype=np.float64)


def localisation_steps(agreement: np.ndarray, steps: np.ndarray, level: float = 0.9) -> np.ndarray:
    """First step from which each word's layout agrees with its final one at ``level`` or more
    (:func:`agreement_with_final`) at every later step: when the word's *place* is decided.
    agreement: ``[T, N]``; steps: ``[T]`` -> ``[N]`` (the last step at worst)."""
    t, n = agreement.shape
    if t == 0:
        return np.full(n, -1, dtype=np.int64)
    above = agreement >= level  # [T, N]; the last row is 1 (agreement with itself)
    stays = np.flip(np.logical_and.accumulate(np.flip(above, axis=0), axis=0), axis=0)
    return steps[np.argmax(stays, axis=0)].astype(np.int64)
