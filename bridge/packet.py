"""The Packet: what one step (or one event) of a run becomes before it leaves the process.

Every sink (ZeroMQ, OSC, recorder, preview, Spout/Syphon/NDI) consumes Packets; the wire
encoding lives in ``bridge.transport.wire`` and is computed once per Packet, whatever the
number of sinks. Nothing here is pickled: a header of JSON-serialisable values plus named
numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Packet kinds, in the order a run produces them.
KINDS = ("run", "step", "image", "timeline", "objects", "end", "status")


@dataclass
class Packet:
    """One message: ``kind`` (see KINDS), a JSON-able ``header`` and named arrays.

    Arrays keep their own dtype and shape; maps are ``[words, H, W]`` with row 0 = top of
    the image.
    """

    kind: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown packet kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def run_id(self) -> str | None:
        return self.header.get("run_id")

    @property
    def step(self) -> int | None:
        return self.header.get("step")
