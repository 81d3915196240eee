"""Packet sources for ``stepx preview``: a live ZeroMQ stream or a recorded trace.

Both expose the same small interface, :class:`PacketSource`: ``poll(now)`` returns the
Packets that are due at ``now`` (seconds since playback started), ``finished`` says that no
packet will ever come again, ``realtime`` says whether ``now`` must follow the wall clock
(live) or may be a virtual clock (a trace rendered headless plays as fast as it can render,
frame-exact and deterministic).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Protocol

log = logging.getLogger(__name__)


class PacketSource(Protocol):
    """What the preview loop reads Packets from."""

    realtime: bool

    @property
    def finished(self) -> bool: ...

    def poll(self, now: float) -> list[Any]: ...

    def close(self) -> None: ...


class ZmqSource:
    """Live stream: a :class:`~bridge.transport.zmq_sub.ZmqSubscriber` drained to the latest.

    Every ``poll`` empties the socket queue and keeps each ``run``/``timeline``/``end`` packet
    plus only the newest ``step``/``image``/``status`` (``ZmqSubscriber.drain``), so a preview
    slower than the model shows the current step instead of a growing backlog. quantized
    (uint8) maps are dequantized to floats on receipt. ``finished`` is always False: a live
    stream has no end (the headless loop stops on ``--frames`` or a run's ``end`` packet).
    """

    realtime = True

    def __init__(self, endpoint: str, *, subscriber: Any | None = None) -> None:
        from bridge.protocol import TOPIC_ROOT
        from bridge.transport.zmq_sub import ZmqSubscriber

        self.endpoint = endpoint
        self.sub = subscriber or ZmqSubscriber(endpoint, topics=(TOPIC_ROOT,), dequantize=True)
        self.received = 0

    @property
    def finished(self) -> bool:
        return False

    def poll(self, now: float = 0.0, timeout: float = 0.0) -> list[Any]:
        """Packets that arrived since the last poll (drain-to-latest); waits up to ``timeout`` s."""
        packets = self.sub.drain(timeout)
        self.received += len(packets)
        return packets

    def close(self) -> None:
        self.sub.close()


class TraceSource:
    """A recorded trace played at ``fps`` steps per second of the ``now`` clock.

    Step packets are due at ``k / fps`` (k = 0, 1, ...); every other packet (run, image,
    timeline, end) is due right after the packet before it, so an image follows its step as it
    did live (the same schedule as ``stepx replay``). ``fps = 0`` delivers one step per poll.
    Opening checks the whole file: a damaged or truncated trace raises
    :class:`bridge.trace.TraceError` here, before anything is shown.
    """

    realtime = False

    def __init__(self, path: str, fps: float = 10.0, *, run: int | str | None = None,
                 start_step: int | None = None, allow_partial: bool = False) -> None:
        from bridge.trace import TraceReader

        if fps < 0:
            raise ValueError(f"--fps must be >= 0 steps per second (0 = one step per frame), got {fps}")
        self.path, self.fps = path, float(fps)
        self.reader = TraceReader(path, allow_partial=allow_partial)
        self._it: Iterator[Any] = self.reader.packets(run, start_step)
        self._next: Any | None = next(self._it, None)
        self.steps_played = 0

    @property
    def finished(self) -> bool:
        return self._next is None

    def poll(self, now: float) -> list[Any]:
        """Every packet whose time has come at ``now`` (seconds since playback started)."""
        out: list[Any] = []
        stepped = False
        while self._next is not None:
            pkt = self._next
            if pkt.kind == "step":
                if self.fps == 0:
                    if stepped:
                        break
                elif self.steps_played and now + 1e-9 < self.steps_played / self.fps:
                    break
                stepped = True
                self.steps_played += 1
            out.append(pkt)
            self._next = next(self._it, None)
        return out

    def close(self) -> None:
        self.reader.close()

