"""What to generate: the request every door (CLI, ZeroMQ and OSC control, playlists) produces.

Its own module so the runner (orchestration) does not import the control parser
(bridge.transport.control), which validates requests at the door and builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerateParams:
    """One generation. Ranges: steps 1..500, guidance 0..50, seed 0..2**32-1 (None = random),
    phase_boundaries (a, b) with 0 < a < b < 1, head_weights finite >= 0 (at most 4096),
    width/height multiples of 8 in 64..4096."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int = 30
    guidance: float = 7.5
    focus: list[str] = field(default_factory=list)
    phase_boundaries: tuple[float, float] | None = None
    head_weights: list[float] | dict[str, list[float]] | None = None  # flat over (layer, head), or per layer
    concept: str | None = None
    width: int | None = None
    height: int | None = None
