"""PhaseEngine: the one stateful piece of the phases stage. It holds the run's running state
(running max, change EMA, phase accumulators, timeline history) and calls the pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .config import PhaseConfig
from .forces import force_gains
from .frame import PhaseFrame
from .masks import settledness, update_change_ema
from .morph import accumulate_phases, blend_phase_maps, phase_index, phase_progress, phase_weights, run_progress
from .morph import phase_maps as mean_phase_maps
from .normalise import global_view, normalise, update_running_max
from .timeline import TimelineSummary, distribution_change, spatial_distribution, step_measures


class PhaseEngine:
    """Turns each step's raw word maps ``[N, H, W]`` into a :class:`PhaseFrame`.

    All tensor work happens on ``device`` (default: wherever the maps arrive) without host
    syncs; only ``PhaseFrame.scalars()/arrays()`` and ``summary()`` copy to the host.
    """

    def __init__(self, words: Sequence[str], config: PhaseConfig = PhaseConfig(), device: torch.device | str | None = None):
        words = list(words)
        if not words:
            raise ValueError("PhaseEngine needs at least one word (the prompt's words, in order); got none")
        bad = [w for w in words if not isinstance(w, str)]
        if bad:
            raise TypeError(f"PhaseEngine words must be strings; got {bad[:3]!r}")
        if not isinstance(config, PhaseConfig):
            raise TypeError(f"config must be a PhaseConfig, got {type(config).__name__}")
        self.words = words
        self.config = config
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget the run: next ``update`` starts a new one."""
        self._running_max: Tensor | None = None  # [N]
        self._prev_textures: Tensor | None = None  # [N+1, H, W]
        self._change_ema: Tensor | None = None  # [N+1, H, W]
        self._prev_dist: Tensor | None = None  # [N, H*W]
        self._acc: Tensor | None = None  # [3, N+1, H, W]
        self._acc_weight: list[float] = [0.0, 0.0, 0.0]
        self._history: list[Tensor] = []  # each [7, N]
        self._steps: list[int] = []
        self._total_steps: int | None = None
        self._shape: tuple[int, int] | None = None

    def _check(self, word_maps: Tensor, step: int, total_steps: int) -> Tensor:
        """Validate the inputs against the run so far; return float32 maps on the engine device."""
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
        return word_maps.to(device=device, dtype=torch.float32).clamp_min(0.0)

    def update(self, word_maps: Tensor, step: int, total_steps: int) -> PhaseFrame:
        """Process one denoising step. word_maps: ``[N, H, W]`` raw non-negative attention of the
        prompt's words (not normalised); ``step`` 0-based; ``total_steps`` the run's length."""
        cfg = self.config
        maps = self._check(word_maps, step, total_steps)  # [N, H, W]
        n, h, w = maps.shape

        # Textures: words then the global view.
        if cfg.normalisation == "running_max":
            self._running_max = update_running_max(self._running_max, maps)  # [N]
        words_tex = normalise(maps, cfg.normalisation, self._running_max)  # [N, H, W]
        textures = torch.cat([words_tex, global_view(words_tex, cfg.global_view)[None]])  # [N+1, H, W]

        # Temporal settledness.
        self._change_ema = update_change_ema(self._change_ema, textures, self._prev_textures, cfg.settle_rate)
        settled = settledness(self._change_ema, cfg.settle_scale, textures)  # [N+1, H, W]
        self._prev_textures = textures

        # Three-phase morph.
        progress = run_progress(step, total_steps)
        weights = phase_weights(progress, cfg.boundaries, cfg.crossfade)
        if self._acc is None:
            self._acc = textures.new_zeros((3, n + 1, h, w))  # [3, N+1, H, W]
        accumulate_phases(self._acc, self._acc_weight, textures, weights)
        accumulated = blend_phase_maps(self._acc, self._acc_weight, weights)  # [N+1, H, W]
        global_phase_maps = mean_phase_maps(self._acc[:, -1:], self._acc_weight)[:, 0]  # [3, H, W]
        wind, attraction = force_gains(weights, cfg.wind, cfg.attraction)

        # Timelines (from the raw maps: scale-invariant measures stay so).
        dist = spatial_distribution(maps)  # [N, H*W]
        change = distribution_change(dist, self._prev_dist)  # [N]
        self._prev_dist = dist
        measures = step_measures(maps, dist, change)  # [7, N]
        self._history.append(measures)
        self._steps.append(step)
        self._total_steps = total_steps
        self._shape = (h, w)

        live = torch.cat(
            [measures.reshape(-1), settled.flatten(1).mean(dim=1), textures.flatten(1).mean(dim=1)]
        )  # [7N + 2(N+1)]
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
            textures=textures,
            settled=settled,
            accumulated=accumulated,
            phase_maps=global_phase_maps,
            live=live,
        )

    def phase_maps(self) -> Tensor | None:
        """Per-phase accumulated maps of every view so far, ``[3, N+1, H, W]`` on the device
        (None before the first step)."""
        return None if self._acc is None else mean_phase_maps(self._acc, self._acc_weight)

    def summary(self) -> TimelineSummary:
        """Token timelines of the run so far (one device -> host copy)."""
        if self._history:
            history = torch.stack(self._history).cpu().numpy()  # [T, 7, N]
        else:
            history = np.zeros((0, 7, len(self.words)), dtype=np.float32)
        return TimelineSummary.from_history(
            self.words, self._steps, history, self._total_steps, self.config.stable_threshold, self.config.emergence_fraction
        )
