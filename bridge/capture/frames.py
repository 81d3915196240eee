"""What the capture produces: one StepFrame per denoising step, gathered in a CaptureRun."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .tokens import TokenMap


@dataclass
class StepFrame:
    """Everything captured for one denoising step of one run.

    cross: ``[B, T, H, W]`` float32 cross-attention probabilities (weighted mean over the chosen
      layers and heads, mean over the step's model evaluations), B = batch rows of the
      conditional branch, T = text sequence length, row 0 = top of the image.
    self_maps: query name → ``[B, H, W]`` self-attention map of that query (sums to ≈1).
    layers: layer name → ``[B, heads, T, h, w]`` per-head maps at the layer's own resolution,
      only for ``CaptureConfig.detail_layers``.
    latents: ``[B, C, h, w]`` the sample after this step; x0: the scheduler's predicted clean
      latents where it can tell (else None), computed on first read where the scheduler does not
      return them (most steps of a live run never read it: no launches for those). Both stay on
      the model's device.
    """

    run_id: str
    step: int
    total_steps: int
    timestep: float | torch.Tensor  # a 0-d device tensor where the pipeline passed one: float() it off the hot path
    evaluations: int
    cross: torch.Tensor | None
    self_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    latents: torch.Tensor | None = None
    x0_source: torch.Tensor | Callable[[], torch.Tensor | None] | None = field(default=None, repr=False)
    missing_layers: tuple[str, ...] = ()

    @property
    def x0(self) -> torch.Tensor | None:
        """``[B, C, h, w]`` predicted clean latents, or None (see the class notes)."""
        if callable(self.x0_source):
            self.x0_source = self.x0_source()
        return self.x0_source

    @property
    def progress(self) -> float:
        """Fraction of the run completed after this step, in (0, 1]."""
        return (self.step + 1) / max(self.total_steps, 1)

    def cross_maps(self) -> torch.Tensor:
        """``cross``, or a clear error where this step has none (``CaptureConfig(cross=False)``,
        or no cross-attention layer ran in it): word maps need them."""
        if self.cross is None:
            raise ValueError(f"step {self.step} has no cross-attention maps (captured with cross=False, or no cross layer ran): no word maps")
        return self.cross


@dataclass
class CaptureRun:
    """One pipeline call under capture: its token maps, settings and frames."""

    token_maps: list[TokenMap | None]
    total_steps: int
    batch: int
    guidance: bool
    latent_hw: tuple[int, int]
    resolution: tuple[int, int]  # every map's (H, W): CaptureConfig.resolution, else Adapter.map_grid
    layers: list[str]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    frames: list[StepFrame] = field(default_factory=list)
    steps_done: int = 0
    status: str = "running"  # running | done | interrupted
    info: dict[str, Any] = field(default_factory=dict)

    def tokens(self, row: int = 0) -> TokenMap:
        """The TokenMap of batch row ``row``; raises if the prompt was given as embeddings."""
        tm = self.token_maps[row] if row < len(self.token_maps) else None
        if tm is None:
            raise ValueError("this run was generated from prompt embeddings, so its words are unknown; pass the prompt text")
        return tm

    @property
    def words(self) -> list[str]:
        return list(self.tokens(0).words)

    def word_maps(self, row: int = 0) -> torch.Tensor:
        """``[steps, words, H, W]`` word maps of batch row ``row`` over the kept frames."""
        tm = self.tokens(row)
        return torch.stack([tm.word_maps(f.cross_maps()[row]) for f in self.frames])

    def mean_word_maps(self, row: int = 0) -> torch.Tensor:
        """``[words, H, W]``: DAAM's aggregate, the mean over all steps."""
        return self.word_maps(row).mean(0)

    def word_map(self, word: str | int, step: int = -1, row: int = 0) -> torch.Tensor:
        """``[H, W]`` map of one word at one step (default: the last)."""
        return self.tokens(row).word_map(self.frames[step].cross_maps()[row], word)
