"""The phases step on the CPU with fewer passes over the maps, bit for bit
:func:`~bridge.phases.fused.phase_step`'s values: the sink process's path (PhaseEngine on the
CPU, uncompiled).

Why: in the sink process the step runs with cold caches (one step every ~27 ms beside the model's
process), where each pass over the ``[N+1, H, W]`` maps and each torch call costs two to three
times what it costs in a loop; the step is the larger part of the sink's CPU per step. Knowing
on the host what a GPU step cannot ask without a sync (this step's phase weights, whether a
previous step exists, whether a NaN has reached the accumulators), it leaves out work whose
result is known:

* the clamp of the maps when none is negative (nor NaN): the clamp is then the identity;
* the clamp of the change EMA (a lerp of non-negatives with a rate in [0, 1] rounds to >= 0 in
  both of torch.lerp's branches, so ``clamp_min(0)`` is the identity) and, after the first
  step, the multiplication by ``seen = 1``;
* the phases whose weight is 0 in the accumulators (``acc_p + 0 * tex`` is ``acc_p`` unless a
  texture held NaN), and whose coefficient is 0 in the blend (``0 * acc_p`` is 0 unless
  ``acc_p`` holds NaN): until a NaN has been seen, 1–2 of 3 passes over ``acc`` per step;
* the ``where`` of the distribution when every map has some attention, and the change at the
  first step (NaN);
* the default ``running_max`` / ``max`` textures written straight into the ``[N+1, H, W]``
  result (no ``cat``), and the measures' small ``[N]`` steps with fewer torch calls
  (:func:`host_measures`, :func:`_stable_since`).

Every value is the reference's operation on the same operands, so the results are identical
(tests/test_phases_host_step.py checks it bit for bit over runs in every mode with NaN, zero
and negative maps; tests/test_sink_bytes.py checks the wire bytes against a golden file). The
blend of the accumulators is torch's matrix-vector product in the reference: a multiply then an
add per phase where that product does not fuse them (probed once per process,
:func:`blend_is_multiply_add`); where it does, the product itself is kept.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .fused import StepOut, StepState
from .normalise import GLOBAL_VIEWS, NORMALISERS, running_max_normalise
from .timeline import _TINY


class HostHints(NamedTuple):
    """What the engine knows on the host about a step (free on the CPU, a sync on a GPU)."""

    weights: tuple[float, float, float]  # this step's phase weights (SCALARS w0..w2)
    coefs: tuple[float, float, float]  # this step's blend coefficients (SCALARS c0..c2)
    seen: bool  # a previous step of the run exists
    nan_seen: bool  # a NaN texture reached the accumulators at an earlier step


@functools.cache
def blend_is_multiply_add() -> bool:
    """Whether torch's ``coefs @ acc.view(3, -1)`` rounds as multiplying each phase and adding
    them in order (no fused multiply-add), on a sample: then skipping zero terms is exact."""
    g = torch.Generator().manual_seed(24)
    acc = torch.rand(3, 4099, generator=g)
    coefs = torch.rand(3, generator=g)
    want = coefs @ acc
    got = acc[0] * coefs[0]
    got.add_(acc[1] * coefs[1]).add_(acc[2] * coefs[2])
    return bool(torch.equal(got, want))


def _textures(maps: Tensor, flat: Tensor, running_max: Tensor, normalisation: str, global_view: str) -> tuple[Tensor, Tensor]:
    """The words' textures and the global view in one new ``[N+1, H, W]``, and the running max:
    the one table's formulas (normalise.py), with the default ``running_max`` / ``max`` written
    straight into place. There ``maps / running max`` is already in [0, 1] when every running max
    is finite and positive (each value is at most its map's max, at most the running max), so
    its clamp is the identity; a flat or NaN map keeps the clamp."""
    n, h, w = maps.shape
    if normalisation != "running_max" or global_view != "max":
        words_tex, running_max = NORMALISERS[normalisation](maps, running_max)  # [N, H, W], [N]
        return torch.cat([words_tex, GLOBAL_VIEWS[global_view](words_tex)[None]]), running_max
    running_max = torch.maximum(running_max, flat.amax(dim=1))  # update_running_max: [N]
    textures = torch.empty((n + 1, h, w), dtype=maps.dtype)
    words = textures[:n]
    if all(0.0 < v < math.inf for v in running_max.tolist()):
        torch.div(maps, running_max[:, None, None], out=words)
    else:
        words.copy_(running_max_normalise(maps, running_max))
    torch.amax(words, dim=0, out=textures[n])
    return textures, running_max


def host_measures(mass: Tensor, dist: Tensor, change: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """:func:`~bridge.phases.timeline.measures_of` on the CPU in fewer torch calls, the same values:
    the words' total read once on the host instead of a ``where`` on the device, the entropy's
    sign folded into its divisor (``-a / b == a / -b`` exactly), and the spread's clamp left out
    (a sum of non-negative terms: ``dist`` and the squares are >= 0, or NaN)."""
    n, (h, w) = mass.shape[0], (ys.shape[0], xs.shape[0])
    hw = h * w
    total = mass.sum()
    share = mass / total if float(total) > 0 else mass / torch.ones_like(total)  # [N]
    if hw > 1:
        entropy = dist.clamp_min(_TINY).log_().mul_(dist).sum(dim=1).div_(-math.log(hw))  # [N]
    else:
        entropy = torch.zeros_like(mass)
    grid = dist.view(n, h, w)  # [N, H, W]
    px, py = grid.sum(dim=1), grid.sum(dim=2)  # [N, W], [N, H] marginals
    cx, cy = px @ xs, py @ ys  # [N]
    var = (px * (xs - cx[:, None]).square_()).sum(dim=1).add_((py * (ys - cy[:, None]).square_()).sum(dim=1))
    return torch.stack([mass, share, entropy, cx, cy, var.sqrt_(), change])  # [7, N]


def _stable_since(previous: Tensor, change: Tensor, scal: Tensor) -> Tensor:
    """:func:`~bridge.phases.measures.update_stable_since` on the host's copies of the ``[N]``
    values (float32 values compare and copy exactly as Python floats; NaN compares False)."""
    step, threshold = scal[12].item(), scal[13].item()
    return torch.tensor([(p if p >= 0 else step) if c < threshold else -1.0
                         for p, c in zip(previous.tolist(), change.tolist())], dtype=torch.float32)


def host_phase_step(maps: Tensor, state: StepState, scal: Tensor, xs: Tensor, ys: Tensor, normalisation: str,
                    global_view: str, hints: HostHints) -> StepOut:
    """:func:`~bridge.phases.fused.phase_step` on CPU tensors with the passes that ``hints`` make
    unnecessary left out (module docstring); same arguments and the same values."""
    n, h, w = maps.shape
    hw = h * w
    if not bool(maps.min() >= 0.0):  # a negative value or a NaN (min is NaN then): clamp as the reference
        maps = maps.clamp_min(0.0)
    flat = maps.reshape(n, hw)  # [N, H*W]
    total = flat.sum(dim=1, keepdim=True)  # [N, 1]

    textures, running_max = _textures(maps, flat, state.running_max, normalisation, global_view)  # [N+1, H, W], [N]
    tex_mean = textures.mean(dim=(1, 2))  # [N+1], live's texture means
    nan_now = hints.nan_seen or any(map(math.isnan, tex_mean.tolist()))  # (textures <= 1: NaN is the only non-finite)

    rate, seen, scale = scal[9], scal[10], scal[11]
    ema = torch.lerp(state.change_ema, (textures - state.prev_textures).abs_(), rate)  # [N+1, H, W]
    settled = torch.div(ema, scale.neg()).exp_()  # exp(-ema / scale): ema >= 0, its clamp is the identity
    if not hints.seen:
        settled.mul_(seen)  # 0 at the first step (NaN stays NaN); x * 1 after

    acc = state.acc  # [3, N+1, H, W], in place as in the eager reference
    for p in range(3):
        if hints.weights[p] != 0.0 or nan_now:
            acc[p].addcmul_(scal[p], textures)  # the reference's addcmul_, phase by phase (same rounding)
    terms = [p for p in range(3) if hints.coefs[p] != 0.0 or nan_now]
    if terms and blend_is_multiply_add():
        accumulated = acc[terms[0]] * scal[3 + terms[0]]  # [N+1, H, W]
        for p in terms[1:]:
            accumulated.add_(acc[p] * scal[3 + p])
        accumulated.clamp_(0.0, 1.0)
    else:
        accumulated = (scal[3:6] @ acc.view(3, -1)).view(n + 1, h, w).clamp_(0.0, 1.0)
    global_phase_maps = (acc[:, -1] * scal[6:9].view(3, 1, 1)).clamp_(0.0, 1.0)  # [3, H, W]

    if all(v > 0.0 for v in total.view(-1).tolist()):
        dist = flat / total  # [N, H*W]
    else:
        positive = total > 0  # [N, 1]
        dist = torch.where(positive, flat / torch.where(positive, total, 1.0), 1.0 / hw)  # uniform where all zero
    if hints.seen:
        change = (dist - state.prev_dist).abs_().sum(dim=1).mul_(0.5)  # [N]
    else:
        change = torch.full((n,), math.nan, dtype=maps.dtype)
    measures = host_measures(total[:, 0] / hw, dist, change, xs, ys)  # [7, N]
    stable_since = _stable_since(state.stable_since, change, scal)  # [N]

    live = torch.cat([measures.reshape(-1), settled.mean(dim=(1, 2)), tex_mean, stable_since])
    return StepOut(
        StepState(running_max, textures, ema, dist, acc, stable_since), textures, settled, accumulated, global_phase_maps, measures, live
    )
