"""PhaseEngine: the one stateful piece of the phases stage. It holds the run's running state
(running max, change EMA, phase accumulators, timeline history) and calls the pure functions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
from torch import Tensor

from .config import PhaseConfig
from .forces import force_gains
from .frame import PhaseFrame
from .host_step import HostHints, host_phase_step
from .fused import (
    StepOut,
    StepState,
    initial_state,
    phase_step,
    step_scalars,
)
from .morph import phase_index, phase_progress, phase_weights, run_progress
from .morph import phase_maps as mean_phase_maps
from .timeline import TimelineSummary, pixel_centres

log = logging.getLogger(__name__)

#: Accepted ``PhaseEngine(compile=...)`` modes (``True`` means ``"default"``). ``reduce-overhead``
#: (CUDA graphs) applies on CUDA only; on other devices it compiles like ``default``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

_COMPILED: dict[str, Callable[..., StepOut]] = {}  # compile mode -> compiled phase_step


def _step_function(mode: str | None, device: torch.device) -> tuple[Callable[..., StepOut], bool]:
    """(step function, clone outputs?) for a compile mode on a device; compiled wrappers are
    shared by all engines (torch keeps a graph per device, normalisation and global view, static
    for the first shape and dynamic once a second one is seen)."""
    if mode is None:
        return phase_step, False
    if mode == "reduce-overhead" and device.type != "cuda":
        mode = "default"
    if mode not in _COMPILED:
        # dynamic=None: the first shape compiles static; a second word count (or size) compiles one
        # graph with that size symbolic, which then serves every prompt length without recompiling
        _COMPILED[mode] = torch.compile(phase_step, dynamic=None, mode=mode)
    return _COMPILED[mode], mode == "reduce-overhead"


def _clone_out(out: StepOut) -> StepOut:
    state = StepState(*(t.clone() for t in out.state))
    return StepOut(state, *(t.clone() for t in out[1:]))


class PhaseEngine:
    """Turns each step's raw word maps ``[N, H, W]`` into a :class:`PhaseFrame`.

    All tensor work happens on ``device`` (default: wherever the maps arrive) without host
    syncs; only ``PhaseFrame.scalars()/arrays()`` and ``summary()`` copy to the host.

    The tensor maths of a step is one pure function (:func:`bridge.phases.fused.phase_step`).
    ``compile=False`` (default) runs it eagerly, the reference; ``compile=True`` (or a mode from
    :data:`COMPILE_MODES`) runs it through ``torch.compile``: a handful of fused
    kernels per step, compiled once per (N, H, W, device, normalisation, global view).
    On the CPU, uncompiled, it runs as :func:`~bridge.phases.host_step.host_phase_step`: the
    same values with the passes that host-side knowledge makes unnecessary left out.
    """

    def __init__(
        self,
        words: Sequence[str],
        config: PhaseConfig = PhaseConfig(),
        device: torch.device | str | None = None,
        compile: bool | str = False,
    ):
        words = list(words)
        if not words:
            raise ValueError("PhaseEngine needs at least one word (the prompt's words, in order); got none")
        bad = [w for w in words if not isinstance(w, str)]
        if bad:
            raise TypeError(f"PhaseEngine words must be strings; got {bad[:3]!r}")
        if not isinstance(config, PhaseConfig):
            raise TypeError(f"config must be a PhaseConfig, got {type(config).__name__}")
        if compile is True:
            compile = "default"
        if compile is not False and compile not in COMPILE_MODES:
            raise ValueError(f"PhaseEngine compile must be False, True or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
        self.words = words
        self.config = config
        self.device = torch.device(device) if device is not None else None
        #: torch.compile mode of the step maths, or None for eager (the reference).
        self.compile_mode: str | None = compile or None
        self.reset()

    def reset(self) -> None:
        """Forget the run: next ``update`` starts a new one."""
        self._state: StepState | None = None  # tensor state, created at the first step
        self._coords: tuple[Tensor, Tensor] | None = None  # pixel centres xs [W], ys [H]
        self._acc_weight: list[float] = [0.0, 0.0, 0.0]
        self._nan_seen = False  # a NaN texture reached the accumulators (the CPU step's hint)
        self._history: list[Tensor] = []  # each [7, N]
        self._steps: list[int] = []
        self._total_steps: int | None = None
        self._shape: tuple[int, int] | None = None

    def _check(self, word_maps: Tensor, step: int, total_steps: int) -> Tensor:
        """Validate the inputs against the run so far; return float32 maps on the engine device
        (clamped to >= 0 in the step maths)."""
        if not isinstance(word_maps, Tensor):
            raise TypeError(f"word_maps must be a torch.Tensor [words, H, W], got {type(word_maps).__name__}")
        if word_maps.ndim != 3 or word_maps.shape[0] != len(self.words):
            raise ValueError(
                f"word_maps must be [words={len(self.words)}, H, W] for words {self.words}; got shape {tuple(word_maps.shape)}"
            )
        if not word_maps.is_floating_point():
            raise TypeError(f"word_maps must be a float tensor (raw attention probabilities), got {word_maps.dtype}")
        if isinstance(step, bool) or isinstance(total_steps, bool) or not isinstance(step, int) or not isinstance(total_steps, int):
            raise TypeError(f"step and total_steps must be ints, got {step!r} and {total_steps!r}")
        run_progress(step, total_steps)  # validates the range
        if self._total_steps is not None and total_steps != self._total_steps:
            raise ValueError(f"total_steps changed from {self._total_steps} to {total_steps} within a run; call reset() to start a new run")
        if self._steps and step <= self._steps[-1]:
            raise ValueError(f"step {step} came after step {self._steps[-1]}; steps must increase within a run (call reset() for a new run)")
        hw = (int(word_maps.shape[1]), int(word_maps.shape[2]))
        if self._shape is not None and hw != self._shape:
            raise ValueError(f"map size changed from {self._shape} to {hw} within a run; call reset() to start a new run")
        device = self.device if self.device is not None else word_maps.device
        return word_maps.to(device=device, dtype=torch.float32)

    def update(self, word_maps: Tensor, step: int, total_steps: int) -> PhaseFrame:
        """Process one denoising step. word_maps: ``[N, H, W]`` raw non-negative attention of the
        prompt's words (not normalised); ``step`` 0-based; ``total_steps`` the run's length."""
        cfg = self.config
        maps = self._check(word_maps, step, total_steps)  # [N, H, W]
        n, h, w = maps.shape
        device = maps.device

        # Host bookkeeping: this step's phase weights and the scalars of the tensor maths.
        progress = run_progress(step, total_steps)
        weights = phase_weights(progress, cfg.boundaries, cfg.crossfade)
        for p, wp in enumerate(weights):
            if wp > 0.0:
                self._acc_weight[p] += wp
        if self._state is None or not self._steps and (self._state.acc.shape != (3, n + 1, h, w) or self._state.acc.device != device):
            self._new_state(n, h, w, device)  # (a state prepared for other maps is replaced)
        state, (xs, ys) = cast("tuple[StepState, tuple[Tensor, Tensor]]", (self._state, self._coords))  # set above
        scalars = step_scalars(weights, self._acc_weight, len(self._steps), cfg.settle_rate, cfg.settle_scale, step,
                               cfg.stable_threshold)
        scal = torch.tensor(scalars, dtype=torch.float32)
        if device.type != "cpu":
            scal = scal.to(device, non_blocking=True)

        # Device work: one pure function of tensors (compiled or not).
        step_fn, clone = _step_function(self.compile_mode, device)
        if clone:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            if device.type == "cpu" and self.compile_mode is None:  # the same values, fewer passes
                hints = HostHints(weights, (scalars[3], scalars[4], scalars[5]), bool(self._steps), self._nan_seen)
                out = host_phase_step(maps, state, scal, xs, ys, cfg.normalisation, cfg.global_view, hints)
            else:
                out = step_fn(maps, state, scal, xs, ys, cfg.normalisation, cfg.global_view)
        except Exception as exc:  # e.g. no compiler toolchain: the eager step is the same maths
            if self.compile_mode is None:
                raise
            log.warning("the compiled phases step failed (%s: %s); running the eager step from now on",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.compile_mode, clone = None, False
            out = phase_step(maps, state, scal, xs, ys, cfg.normalisation, cfg.global_view)
        if clone:  # CUDA-graph outputs are overwritten by the next replay: keep our own copies
            out = _clone_out(out)
        if device.type == "cpu" and not self._nan_seen:  # the CPU step's hint, whichever step ran (a fall-back mid-run)
            self._nan_seen = bool(out.live[8 * n + 1 : 9 * n + 2].isnan().any())  # live's texture means [N+1]
        self._state = out.state
        self._history.append(out.measures)
        self._steps.append(step)
        self._total_steps = total_steps
        self._shape = (h, w)

        wind, attraction = force_gains(weights, cfg.wind, cfg.attraction)
        return PhaseFrame(
            words=list(self.words),
            step=step,
            total_steps=total_steps,
            progress=progress,
            phase=phase_index(progress, cfg.boundaries),
            phase_progress=phase_progress(progress, cfg.boundaries),
            phase_weights=weights,
            wind=wind,
            attraction=attraction,
            normalisation=cfg.normalisation,
            textures=out.textures,
            settled=out.settled,
            accumulated=out.accumulated,
            phase_maps=out.phase_maps,
            live=out.live,
        )

    def prepare(self, h: int, w: int) -> None:
        """Make the run's zero state for ``[N, h, w]`` maps now, before its first step, so that
        the first step costs what the others do (the sink process does this while the model
        computes step 0: 0.20-0.23 ms of its first packet's time on a 2-core machine, bench/first_step.py).
        Nothing once a step was processed; a first step of another size replaces it."""
        if self._steps:
            return
        self._new_state(len(self.words), h, w, self.device if self.device is not None else torch.device("cpu"))

    def _new_state(self, n: int, h: int, w: int, device: torch.device) -> None:
        """The run's zero state and pixel centres for ``[n, h, w]`` maps on ``device``."""
        self._state = initial_state(n, h, w, device)
        self._coords = pixel_centres(h, w, device)

    @property
    def last_step(self) -> int | None:
        """The last step processed this run (None before the first)."""
        return self._steps[-1] if self._steps else None

    def phase_maps(self) -> Tensor | None:
        """Per-phase accumulated maps of every view so far, ``[3, N+1, H, W]`` on the device
        (None before the first step)."""
        return None if self._state is None else mean_phase_maps(self._state.acc, self._acc_weight)

    def summary(self) -> TimelineSummary:
        """Token timelines of the run so far (one device -> host copy)."""
        if self._history:
            history = torch.stack(self._history).cpu().numpy()  # [T, 7, N]
        else:
            history = np.zeros((0, 7, len(self.words)), dtype=np.float32)
        return TimelineSummary.from_history(
            self.words, self._steps, history, self._total_steps, self.config.stable_threshold, self.config.emergence_fraction
        )
