"""Shared helpers of the TD-side tests (numpy, pyzmq, stdlib only: they run in the TD-like env)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import zmq

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


#: how long a test waits for what must come (a hang guard, not a speed claim: a busy CI machine
#: may stall for seconds; waits return as soon as the thing happens)
ARRIVAL_S = 30.0


def pump(send: Callable[[], None], until: Callable[[], bool], timeout: float = ARRIVAL_S) -> bool:
    """Call ``send`` every 20 ms until ``until()`` is true (ZeroMQ slow-joiner safe); False after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()
        time.sleep(0.02)
        if until():
            return True
    return False


class NeverWaits:
    """The receiver's real socket, strictly: a receive must pass NOBLOCK and a poll a zero
    timeout, so a poll() that could wait fails here at once instead of on a stopwatch."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock, self.calls = sock, 0

    def recv(self, flags: int = 0, *args, **kwargs):
        assert flags & zmq.NOBLOCK, "a receive that may wait"
        self.calls += 1
        return self._sock.recv(flags, *args, **kwargs)

    def recv_multipart(self, flags: int = 0, *args, **kwargs):
        assert flags & zmq.NOBLOCK, "a receive that may wait"
        self.calls += 1
        return self._sock.recv_multipart(flags, *args, **kwargs)

    def poll(self, timeout: int | None = None, *args, **kwargs):
        assert timeout == 0, f"a socket poll that may wait ({timeout!r} ms)"
        self.calls += 1
        return self._sock.poll(0, *args, **kwargs)

    def send(self, data: bytes, flags: int = 0, *args, **kwargs):
        assert flags & zmq.NOBLOCK, "a send that may wait"
        return self._sock.send(data, flags, *args, **kwargs)

    def close(self, *args, **kwargs) -> None:
        self._sock.close(*args, **kwargs)

    def setsockopt(self, *args, **kwargs) -> None:
        self._sock.setsockopt(*args, **kwargs)
