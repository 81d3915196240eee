"""Shared helpers of the TD-side tests (numpy, pyzmq, stdlib only: they run in the TD-like env)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TD_DIR = ROOT / "td_components"
for p in (str(ROOT), str(TD_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

WORDS = ["red", "fox", "snow"]


def packet(kind: str, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> Any:
    """A duck-typed Packet (kind, header, arrays) for bridge.protocol.encode."""
    return SimpleNamespace(kind=kind, header=header, arrays=arrays or {})


def run_packet(run_id: str = "r1") -> Any:
    return packet("run", {"run_id": run_id, "prompt": "a red fox snow", "words": WORDS, "total_steps": 10,
                          "seed": 7, "width": 64, "height": 48, "map_size": [8, 6]})


def step_packet(step: int = 3, run_id: str = "r1", seed: int = 0) -> Any:
    """A step with non-square maps [N+1, 8, 6] so a transpose or a missing flip shows."""
    rng = np.random.default_rng(seed + step)
    tex = rng.random((len(WORDS) + 1, 8, 6), dtype=np.float32)
    tex[0, 0, 0], tex[0, -1, -1] = 0.0, 1.0
    settled = rng.random(tex.shape, dtype=np.float32)
    acc = rng.random(tex.shape, dtype=np.float32)
    rgba = np.stack([tex, 1.0 - tex, settled, acc], axis=-1)
    header = {"run_id": run_id, "step": step, "total_steps": 10, "progress": (step + 1) / 10, "phase": 1,
              "phase_progress": 0.25, "phase_weights": [0.2, 0.7, 0.1], "words": WORDS,
              "mass": [0.1, 0.5, 0.25], "entropy": [0.9, 0.3, None], "centroid_y": [0.25, 0.5, 0.75],
              "forces": {"wind": 1.5, "attraction": 2.0, "chaos": 0.4, "stability": 0.8}}
    return packet("step", header, {"textures": tex, "settled": settled, "accumulated": acc, "rgba": rgba,
                                   "phase_maps": tex[:3]})


def image_packet(step: int = 3, run_id: str = "r1") -> Any:
    img = (np.arange(16 * 12 * 3, dtype=np.int64) % 251).astype(np.uint8).reshape(16, 12, 3)
    return packet("image", {"run_id": run_id, "step": step, "final": False}, {"image": img})


def timeline_packet(run_id: str = "r1") -> Any:
    mass = np.linspace(0, 1, 10 * len(WORDS), dtype=np.float32).reshape(10, len(WORDS))
    return packet("timeline", {"run_id": run_id, "words": WORDS},
                  {"steps": np.arange(10, dtype=np.int64), "mass": mass})


def pump(send: Callable[[], None], until: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Call ``send`` every 20 ms until ``until()`` is true (ZeroMQ slow-joiner safe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()
        time.sleep(0.02)
        if until():
            return True
    return False
