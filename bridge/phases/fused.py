"""One step of the phases maths as a single pure function of tensors, for ``torch.compile``.

:func:`phase_step` computes what :class:`~bridge.phases.engine.PhaseEngine` needs from one
step's raw maps and the run's state, with no Python branches on the data and no ``None``
state: the first step is handled by zero-initialised state (:func:`initial_state`) and by the
per-step scalars in ``scal`` (:func:`step_scalars`). The engine calls it as is (eager, the
reference) or through ``torch.compile``; the maths is the same as composing
the pure functions of ``normalise``, ``masks``, ``morph`` and ``timeline`` (tested).

Why the zero state is exact: maps are clamped to >= 0, so ``max(0, step max)`` is the step
max; at the first step the change EMA rate is 0 (ema stays 0) and ``settled`` is multiplied
by ``seen = 0``; at the second step the rate is 1, so ``ema = 0 + 1 * (d - 0) = d`` seeds it;
the distribution change is NaN while ``seen = 0``; a phase weight of 0 adds ``0 * tex = 0``.

Pure except for one thing: run eagerly (not under ``torch.compile``) it adds into ``state.acc``
in place, as the engine did before (the state belongs to the caller, who replaces it with the
returned one anyway); compiled, it is functional.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .measures import update_stable_since
from .normalise import GLOBAL_VIEWS, NORMALISERS
from .timeline import measures_of

#: Layout of the per-step scalars vector ``scal`` (float32, on the engine's device).
SCALARS = (
    "w0", "w1", "w2",  # phase weights of this step
    "c0", "c1", "c2",  # blend coefficients w_p / S_p (0 where w_p = 0 or S_p = 0), S_p after this step
    "i0", "i1", "i2",  # 1 / S_p (0 where S_p = 0): per-phase mean
    "rate",  # change-EMA rate: 0 at the first step, 1 at the second, settle_rate after
    "seen",  # 1 if a previous step exists in this run, else 0
    "scale",  # settle_scale
    "step",  # this step's 0-based index (for stable_since)
    "threshold",  # stable_threshold: change below which a word's map counts as stable
)


class StepState(NamedTuple):
    """The run's tensor state between steps (all on the engine's device, float32)."""

    running_max: Tensor  # [N]
    prev_textures: Tensor  # [N+1, H, W]
    change_ema: Tensor  # [N+1, H, W]
    prev_dist: Tensor  # [N, H*W]
    acc: Tensor  # [3, N+1, H, W] weighted sums of the textures per phase
    stable_since: Tensor  # [N] first step of the current below-threshold streak, -1 if none


class StepOut(NamedTuple):
    """What one step produced (all device tensors)."""

    state: StepState
    textures: Tensor  # [N+1, H, W]
    settled: Tensor  # [N+1, H, W]
    accumulated: Tensor  # [N+1, H, W]
    phase_maps: Tensor  # [3, H, W] the global view's
    measures: Tensor  # [7, N] SERIES order
    live: Tensor  # [7N + 2(N+1) + N]: measures, settled means, texture means, stable_since


def initial_state(n: int, h: int, w: int, device: torch.device) -> StepState:
    """Zero state for a new run (see the module docstring for why zeros are exact); no word
    stable yet (``stable_since`` = -1)."""
    z = lambda *shape: torch.zeros(shape, dtype=torch.float32, device=device)
    return StepState(z(n), z(n + 1, h, w), z(n + 1, h, w), z(n, h * w), z(3, n + 1, h, w), z(n) - 1.0)


def step_scalars(
    weights: tuple[float, float, float], weight_sums: list[float], seen_steps: int, settle_rate: float, settle_scale: float,
    step: int = 0, stable_threshold: float = 0.02,
) -> list[float]:
    """The ``scal`` values (SCALARS order) of one step, from host bookkeeping.

    weights: this step's phase weights; weight_sums: per-phase sums of the weights INCLUDING
    this step; seen_steps: how many steps of the run came before this one.
    """
    coef = [w / s if (w > 0.0 and s > 0.0) else 0.0 for w, s in zip(weights, weight_sums)]
    inv = [1.0 / s if s > 0.0 else 0.0 for s in weight_sums]
    rate = 0.0 if seen_steps == 0 else (1.0 if seen_steps == 1 else settle_rate)
    return [*weights, *coef, *inv, rate, 1.0 if seen_steps > 0 else 0.0, settle_scale, float(step), float(stable_threshold)]


def phase_step(
    maps: Tensor,
    state: StepState,
    scal: Tensor,
    xs: Tensor,
    ys: Tensor,
    normalisation: str,
    global_view: str,
) -> StepOut:
    """One step of the phases maths. maps: ``[N, H, W]`` float32 raw attention (clamped here);
    state: :class:`StepState`; scal: ``[len(SCALARS)]`` from :func:`step_scalars`; xs/ys from
    :func:`pixel_centres`; ``normalisation`` / ``global_view`` as in PhaseConfig (static)."""
    n, h, w = maps.shape
    hw = h * w
    maps = maps.clamp_min(0.0)
    flat = maps.reshape(n, hw)  # [N, H*W]
    total = flat.sum(dim=1, keepdim=True)  # [N, 1], shared by the distribution and the mass

    # Textures: words then the global view, from the one table of formulas (normalise.py).
    words_tex, running_max = NORMALISERS[normalisation](maps, state.running_max)  # [N, H, W], [N]
    gview = GLOBAL_VIEWS[global_view](words_tex)  # [H, W]
    textures = torch.cat([words_tex, gview[None]])  # [N+1, H, W]

    # Temporal settledness: ema += rate * (|tex - prev| - ema); settled = seen * exp(-ema / scale).
    rate, seen, scale = scal[9], scal[10], scal[11]
    ema = torch.lerp(state.change_ema, (textures - state.prev_textures).abs(), rate)
    settled = ema.clamp_min(0.0).neg_().div_(scale).exp_().mul_(seen)  # exp(-x / scale) * seen, on one new map

    # Three-phase morph: acc_p += w_p tex; accumulated = sum_p (w_p / S_p) acc_p; per-phase mean = acc_p / S_p.
    if torch.compiler.is_compiling():  # functional; the size-3 reduction fuses into the pointwise kernels
        acc = torch.addcmul(state.acc, scal[0:3].view(3, 1, 1, 1), textures[None])  # [3, N+1, H, W]
        accumulated = (acc * scal[3:6].view(3, 1, 1, 1)).sum(dim=0).clamp_(0.0, 1.0)
    else:  # eager: the state's accumulator in place (no new 3x map per step), one matrix-vector product
        acc = state.acc.addcmul_(scal[0:3].view(3, 1, 1, 1), textures[None])
        accumulated = (scal[3:6] @ acc.view(3, -1)).view(n + 1, h, w).clamp_(0.0, 1.0)
    global_phase_maps = (acc[:, -1] * scal[6:9].view(3, 1, 1)).clamp_(0.0, 1.0)  # [3, H, W]

    # Timelines from the raw maps.
    positive = total > 0  # [N, 1]
    dist = torch.where(positive, flat / torch.where(positive, total, 1.0), 1.0 / hw)  # [N, H*W], uniform where all zero
    change = torch.where(seen > 0, 0.5 * (dist - state.prev_dist).abs().sum(dim=1), math.nan)  # [N]
    measures = measures_of(total[:, 0] / hw, dist, change, xs, ys)  # [7, N], the one definition (timeline.py)

    stable_since = update_stable_since(state.stable_since, change, scal[12], scal[13])  # [N]

    live = torch.cat([measures.reshape(-1), settled.mean(dim=(1, 2)), textures.mean(dim=(1, 2)), stable_since])
    return StepOut(
        StepState(running_max, textures, ema, dist, acc, stable_since), textures, settled, accumulated, global_phase_maps, measures, live
    )
