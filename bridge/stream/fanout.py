"""FanOut: one Packet in, every sink fed from its own thread, the producer never waits.

Why: the model must run at full speed whatever the receivers do. ``publish()`` encodes the
packet once per wire encoding that some sink needs (not once per sink), then drops the
bytes into each sink's mailbox and returns. Each sink's thread drains its own mailbox:

* step/image/status frames are *latest-wins*: one slot per kind, a newer frame replaces
  an undelivered older one (counted in ``SinkStats.dropped``), so a slow sink skips
  stale frames instead of building a backlog;
* run/timeline/end packets are *kept*: they wait in a small ordered queue and are never
  replaced by later frames (if more than ``keep_max`` pile up, the oldest goes, logged);
* delivery follows publish order among what is kept (a sequence number), so a run's
  ``run`` packet always arrives before its steps and its ``end`` after them;
* a sink with ``lossless = True`` (the trace recorder) keeps every packet in order: it may
  fall behind, but never skips a step. Its queue is bounded only by the run's length.

A sink whose ``send`` never blocks and costs microseconds (``inline = True``: the ZeroMQ
publisher, whose sends are non-blocking) is called on the producer's thread instead, in publish
order and without a mailbox: no thread hand-over per packet, and no frame replaced only because
its thread had not been scheduled yet (in the sink process the packet building holds the GIL).

A sink that raises is logged (rate-limited) and keeps receiving later frames.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from bridge.protocol import KEEP_KINDS, encode
from bridge.stream.recorder import RECORDING_OFF, RecordingReport

log = logging.getLogger(__name__)



@runtime_checkable
class Sink(Protocol):
    """Anything that consumes Packets. ``encoding`` is a wire encoding (``float32``,
    ``float16``, ``uint8``) if the sink wants encoded bytes, or None if it reads the
    Packet itself (OSC, preview). ``send`` runs on the sink's own thread, or with ``inline`` on
    the producer's (it must then never block); ``lossless`` sinks see every packet (see above).
    :class:`SinkBase` gives the defaults."""

    # read-only here (FanOut never sets them), so a sink may narrow them: a recorder's encoding is a str
    @property
    def name(self) -> str: ...

    @property
    def encoding(self) -> str | None: ...

    @property
    def inline(self) -> bool: ...

    @property
    def lossless(self) -> bool: ...

    def send(self, packet: Any, data: bytes | None) -> None: ...

    def close(self) -> None: ...


class SinkBase:
    """Defaults for a Sink: reads Packets (no encoding), on its own thread, latest-wins."""

    name: str = "sink"
    encoding: str | None = None
    inline: bool = False
    lossless: bool = False

    def send(self, packet: Any, data: bytes | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the sink holds (sockets, files); nothing by default."""


@dataclass
class SinkStats:
    delivered: int = 0
    dropped: int = 0
    errors: int = 0


class _Mailbox:
    """Per-sink state: kept queue + latest-wins slots, guarded by one condition."""

    def __init__(self, keep_max: int, lossless: bool = False) -> None:
        self.cond = threading.Condition()
        self.lossless = lossless
        self.keep: deque[tuple[int, Any, bytes | None]] = deque()
        self.slots: dict[str, tuple[int, Any, bytes | None]] = {}
        self.keep_max = keep_max
        self.closing = False

    def put(self, seq: int, packet: Any, data: bytes | None, stats: SinkStats, name: str) -> None:
        with self.cond:
            if self.lossless:
                self.keep.append((seq, packet, data))
            elif packet.kind in KEEP_KINDS:
                if len(self.keep) >= self.keep_max:
                    self.keep.popleft()
                    stats.dropped += 1
                    log.warning("sink %s: more than %d run/end packets waiting; dropped the oldest", name, self.keep_max)
                self.keep.append((seq, packet, data))
            else:
                if packet.kind in self.slots:
                    stats.dropped += 1
                self.slots[packet.kind] = (seq, packet, data)
            self.cond.notify()

    def take(self) -> tuple[int, Any, bytes | None] | None:
        """Block until something is waiting (or closing with nothing left); oldest seq first."""
        with self.cond:
            while not self.keep and not self.slots:
                if self.closing:
                    return None
                self.cond.wait()
            best_kind = min(self.slots, key=lambda k: self.slots[k][0]) if self.slots else None
            if self.keep and (best_kind is None or self.keep[0][0] < self.slots[best_kind][0]):
                return self.keep.popleft()
            assert best_kind is not None
            return self.slots.pop(best_kind)


class FanOut:
    """Feed ``sinks`` from one producer; see the module docstring for the guarantees."""

    def __init__(self, sinks: Iterable[Sink], keep_max: int = 64) -> None:
        self.sinks: list[Sink] = list(sinks)
        for s in self.sinks:
            if not isinstance(s, Sink):
                missing = [m for m in ("name", "encoding", "inline", "lossless", "send", "close") if not hasattr(s, m)]
                raise TypeError(f"{type(s).__name__} is not a Sink: it lacks {', '.join(missing)} (subclass bridge.stream.fanout.SinkBase)")
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.stats: dict[str, SinkStats] = {s.name: SinkStats() for s in self.sinks}
        self._inline = [s for s in self.sinks if s.inline]  # called on the producer's thread
        self._threaded = [s for s in self.sinks if not s.inline]
        self._boxes = {s.name: _Mailbox(keep_max, s.lossless) for s in self._threaded}
        self._last_log: dict[str, float] = {}
        self._encodings = sorted({s.encoding for s in self.sinks if s.encoding})
        self._seq = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, args=(s,), name=f"sink-{s.name}", daemon=True)
                         for s in self._threaded]
        for t in self._threads:
            t.start()

    def publish(self, packet: Any) -> None:
        """Encode once per needed encoding and hand the packet to every sink; never blocks
        on a sink (only on the per-sink mailbox lock, held for a dict assignment, and on the
        non-blocking sends of inline sinks)."""
        if self._closed:
            raise RuntimeError("FanOut is closed")
        if packet.kind == "step":  # the send time (Unix seconds) on the wire: receivers measure latency from it
            packet = type(packet)(packet.kind, {**packet.header, "sent": time.time()}, packet.arrays)
        encoded = {enc: encode(packet, enc) for enc in self._encodings}
        seq = next(self._seq)
        for s in self._threaded:
            self._boxes[s.name].put(seq, packet, encoded.get(s.encoding) if s.encoding else None, self.stats[s.name], s.name)
        for s in self._inline:
            self._deliver(s, packet, encoded.get(s.encoding) if s.encoding else None)

    #: A local Publisher (bridge.stream.publisher): recipes are built here, on the caller's thread.
    remote = False

    def publish_recipe(self, recipe: Callable[[], Any]) -> None:
        """Build the recipe's Packet here and publish it (None: nothing to send)."""
        packet = recipe()
        if packet is not None:
            self.publish(packet)

    def alive(self) -> bool:
        return not self._closed

    def recording(self) -> dict[str, Any]:
        """The recorder's health for the status packet (``{"state": "off"}`` without one)."""
        for s in self.sinks:
            if isinstance(s, RecordingReport):
                return s.recording()
        return dict(RECORDING_OFF)

    def _deliver(self, sink: Sink, packet: Any, data: bytes | None) -> None:
        """``sink.send``, counted; a failure is logged (the first, then one line every 30 s: shows run all night)."""
        stats = self.stats[sink.name]
        try:
            sink.send(packet, data)
            stats.delivered += 1
        except Exception as exc:  # a broken sink must not take the others down
            stats.errors += 1
            now = time.monotonic()
            if now - self._last_log.get(sink.name, -1e9) > 30.0:
                log.error("sink %s failed on a %s packet (%d errors so far): %r", sink.name, packet.kind, stats.errors, exc)
                self._last_log[sink.name] = now

    def _run(self, sink: Sink) -> None:
        box = self._boxes[sink.name]
        while True:
            item = box.take()
            if item is None:
                break
            _seq, packet, data = item
            self._deliver(sink, packet, data)
        self._close(sink)

    @staticmethod
    def _close(sink: Sink) -> None:
        try:
            sink.close()
        except Exception as exc:
            log.error("sink %s failed to close: %r", sink.name, exc)

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is waiting (up to ``timeout`` in all), then close every sink."""
        self._closed = True
        for box in self._boxes.values():
            with box.cond:
                box.closing = True
                box.cond.notify()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("%s did not finish within %.1fs; left running as a daemon thread", t.name, timeout)
        for s in self._inline:
            self._close(s)

    def __enter__(self) -> "FanOut":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
