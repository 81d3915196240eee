"""Capture over a prompt set: one generation per prompt, each with its own seed and its CaptureRun.

The one loop that offline analyses share (the shapes model's evaluation, head relevance, object
annotation), so each of them scores runs instead of driving the pipeline itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from bridge.capture import CaptureConfig, CaptureRun, capture


@dataclass
class CapturedRun:
    """One prompt's generation: the pipeline's output image, its capture and its wall time."""

    index: int
    prompt: str
    seed: int
    image: Any  # the pipeline's first output image (PIL or array, per ``output_type``)
    run: CaptureRun
    seconds: float


def capture_prompts(pipe: Any, prompts: Iterable[str], *, steps: int = 20, guidance: float = 7.5, seed: int = 0,
                    config: CaptureConfig | None = None, **pipe_kwargs: Any) -> Iterator[CapturedRun]:
    """Generate each prompt with capture on, prompt ``i`` from a CPU generator seeded ``seed + i``
    (so a run is reproducible alone); yields as each one finishes. ``pipe_kwargs`` go to the
    pipeline call (e.g. ``height``, ``negative_prompt``)."""
    config = config or CaptureConfig()
    for i, prompt in enumerate(prompts):
        generator = torch.Generator("cpu").manual_seed(seed + i)
        t0 = time.perf_counter()
        with capture(pipe, config) as cap:
            out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator, **pipe_kwargs)
        yield CapturedRun(i, prompt, seed + i, out.images[0], cap.last_run, time.perf_counter() - t0)
