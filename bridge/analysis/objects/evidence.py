"""What detection reads from a run: word maps per step, self-attention affinity, image size.

One shape for every source, so ``annotate`` works the same on a live captured run, on a run the
``Runner`` streams (``EvidenceRecorder`` observes its steps) and on a recorded trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .detect import GRID_PREFIX

#: the affinity averages the steps from this fraction of the run on (the image has settled)
AFFINITY_FROM = 0.5


@dataclass
class Evidence:
    """A run's attention, ready for detection.

    words: the prompt's words as the capture split them.
    word_maps: ``[steps, words, h, w]`` float32 (row 0 = top of the image).
    affinity: ``[g·g, H, W]`` mean self-attention of the grid queries over the second half of the
      steps (:data:`AFFINITY_FROM`; measured sharper than all steps), or None
      where the run had none (a trace, a run captured without :func:`grid_queries`).
    size: ``(height, width)`` of the image masks are made for.
    image: ``[height, width, 3]`` uint8 final image where known.
    """

    words: list[str]
    word_maps: torch.Tensor
    affinity: torch.Tensor | None
    size: tuple[int, int]
    image: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.word_maps.ndim != 4 or self.word_maps.shape[1] < len(self.words):
            raise ValueError(f"word maps must be [steps, words, h, w] with a map per word ({len(self.words)}), "
                             f"got {tuple(self.word_maps.shape)}")
        if self.word_maps.shape[0] == 0:
            raise ValueError("the run has no steps with word maps")

    @property
    def global_map(self) -> torch.Tensor:
        """``[h, w]`` mean over steps and words (the run's global attention)."""
        return self.word_maps[:, : len(self.words)].float().mean((0, 1))


def grid_affinity(self_maps: dict[str, torch.Tensor], row: int = 0) -> torch.Tensor | None:
    """``[g·g, H, W]`` from one frame's ``self_maps`` (None when it holds no grid queries)."""
    names = [n for n in self_maps if n.startswith(GRID_PREFIX)]
    if not names:
        return None
    g = int(round(len(names) ** 0.5))
    if g * g != len(names):
        raise ValueError(f"the grid queries are not square: {len(names)} of them")
    return torch.stack([self_maps[f"{GRID_PREFIX}{i},{j}"][row].float() for i in range(g) for j in range(g)])


def from_capture(run: Any, image: Any = None, size: tuple[int, int] | None = None, vae_scale: int = 8) -> Evidence:
    """Evidence of a live :class:`~bridge.capture.CaptureRun` (kept frames) and its final image.

    ``size`` defaults to the image's, else the latent size times ``vae_scale``."""
    if not run.frames:
        raise ValueError("the run kept no frames: capture with keep_frames=True (the default) or record it with EvidenceRecorder")
    img = None if image is None else np.asarray(image)
    if size is None:
        size = img.shape[:2] if img is not None else (run.latent_hw[0] * vae_scale, run.latent_hw[1] * vae_scale)
    maps = run.word_maps(0).detach().float().cpu()  # [S, W, h, w]
    affs = [a for f in run.frames if f.step >= AFFINITY_FROM * f.total_steps and (a := grid_affinity(f.self_maps)) is not None]
    aff = torch.stack(affs).mean(0).cpu() if affs else None
    return Evidence(list(run.words), maps, aff, (int(size[0]), int(size[1])), img, "capture")


class EvidenceRecorder:
    """Step observer for a streamed run: keeps word maps (on the CPU) and the affinity sum.

    Call it with each ``(frame, run)``; :meth:`evidence` gives the result after the run."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []
        self.aff_sum: torch.Tensor | None = None
        self.aff_steps = 0
        self.words: list[str] = []
        self.latent_hw: tuple[int, int] = (0, 0)

    def __call__(self, frame: Any, run: Any) -> None:
        tm = run.tokens(0)
        self.words, self.latent_hw = list(tm.words), tuple(run.latent_hw)
        self.maps.append(tm.word_maps(frame.cross[0]).detach().float().cpu())  # [W, h, w]
        aff = grid_affinity(frame.self_maps) if frame.step >= AFFINITY_FROM * frame.total_steps else None
        if aff is not None:
            aff = aff.detach().cpu()
            self.aff_sum = aff if self.aff_sum is None else self.aff_sum + aff
            self.aff_steps += 1

    def evidence(self, image: Any = None, size: tuple[int, int] | None = None, vae_scale: int = 8) -> Evidence:
        if not self.maps:
            raise ValueError("no steps were recorded")
        img = None if image is None else np.asarray(image)
        if size is None:
            size = img.shape[:2] if img is not None else (self.latent_hw[0] * vae_scale, self.latent_hw[1] * vae_scale)
        aff = None if self.aff_sum is None else self.aff_sum / self.aff_steps
        return Evidence(self.words, torch.stack(self.maps), aff, (int(size[0]), int(size[1])), img, "stream")


def from_trace(path: str | Path, run: int | str = 0, affinity: str | Path | None = None) -> Evidence:
    """Evidence of a recorded run: its step textures (word maps) and final image.

    Traces do not carry self-attention; ``affinity`` may name a ``.npy`` ``[g·g, H, W]`` saved
    beside it (the TITAN dataset writes one per image), else detection uses the word maps alone."""
    from bridge.export.data import load_run  # noqa: PLC0415
    from bridge.trace import TraceReader  # noqa: PLC0415

    with TraceReader(path) as reader:
        data = load_run(reader, run)
    maps = torch.from_numpy(np.ascontiguousarray(data.maps[:, : len(data.words)]))  # [T, W, h, w]
    aff = torch.from_numpy(np.load(affinity)).float() if affinity is not None else None
    return Evidence(list(data.words), maps, aff, data.canvas_size(), data.final_image, str(path))


def detection_config(pipe: Any, grid: int = 8, base: Any = None) -> Any:
    """A :class:`~bridge.capture.CaptureConfig` for detection: ``base`` (default: DAAM's) plus the
    ``grid × grid`` self-attention queries, taken from the self-attention layers at the denoiser's
    finest resolution only — measured sharper than all layers pooled (docs/OBJECTS.md)."""
    import dataclasses

    from bridge.capture import CaptureConfig, adapter_for  # noqa: PLC0415

    from .detect import grid_queries

    base = base or CaptureConfig()
    return dataclasses.replace(base, queries=(*base.queries, *grid_queries(grid)), self_layers=finest_self_layers(adapter_for(pipe)))


def finest_self_layers(adapter: Any) -> list[str]:
    """Layer patterns of the self-attention at the finest resolution: for a UNet, the first down
    block that has attention and its mirror up block; for MM-DiT models (one resolution), all."""
    if adapter.family != "unet":
        return ["*"]
    unet = adapter.denoiser()
    for i, block in enumerate(unet.down_blocks):
        if getattr(block, "attentions", None):
            return [f"down_blocks.{i}.*", f"up_blocks.{len(unet.up_blocks) - 1 - i}.*"]
    return ["*"]
