"""ZeroMQ subscriber: topic filters, drain-to-latest, optional CONFLATE.

A consumer slower than the publisher calls ``recv_latest()``: it empties the socket's queue
and decodes only the newest frame, so its latency stays bounded instead of growing with a
backlog. ``drain()`` does the same but keeps every ``run``/``end``/``timeline`` packet (the
ones a receiver must not miss). ``conflate=True`` sets ``ZMQ_CONFLATE`` (keep one message in
the queue); it loses run/end packets if a step arrives after them, so use it on a socket
subscribed to one topic (``stepx/step`` or ``stepx/image``): libzmq also conflates the
subscription messages, so a conflating socket can hold only one subscription.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import zmq

from bridge.protocol import DEFAULT_DATA_ENDPOINT, KEEP_KINDS, TOPIC_ROOT, Packet, decode, encode, split

DEFAULT_SUB_ENDPOINT = DEFAULT_DATA_ENDPOINT


class ZmqSubscriber:
    """SUB socket connected to ``endpoint``, subscribed to ``topics`` (prefixes)."""

    def __init__(self, endpoint: str = DEFAULT_SUB_ENDPOINT, topics: Iterable[str] = (TOPIC_ROOT,),
                 *, conflate: bool = False, rcvhwm: int = 16, dequantize: bool = False,
                 context: zmq.Context | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        topics = list(topics)
        if conflate and len(topics) != 1:
            # libzmq conflates the subscription messages too: only one SUBSCRIBE survives.
            raise ValueError(f"conflate=True supports exactly one topic (libzmq keeps only one "
                             f"subscription on a conflating socket); got {topics}. Open one "
                             f"subscriber per topic, or use recv_latest()/drain() without conflate.")
        if conflate:
            self.sock.setsockopt(zmq.CONFLATE, 1)
        else:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode("ascii"))
        self.sock.connect(endpoint)
        self.dequantize = dequantize

    def recv_bytes(self, timeout: float | None = None) -> bytes | None:
        """Next raw message, or None after ``timeout`` seconds (None = wait forever)."""
        if timeout is not None and not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv()

    def _recv_buffer(self, timeout: float | None = None) -> memoryview | None:
        """Next raw message as a view of ZeroMQ's own buffer (no copy: a step packet is ~0.8 MB,
        whose copy was a third of a subscriber's decode), or None after ``timeout`` seconds. The
        arrays that :func:`~bridge.protocol.decode` makes of it keep it alive."""
        if timeout is not None and not self.sock.poll(int(timeout * 1000)):
            return None
        return self._view()

    def _view(self, flags: int = 0) -> memoryview:
        """The next message as a read-only view of ZeroMQ's buffer (read-only arrays, as from bytes)."""
        return self.sock.recv(flags, copy=False).buffer.toreadonly()

    def recv(self, timeout: float | None = None) -> Any | None:
        """Next decoded Packet, or None on timeout."""
        data = self._recv_buffer(timeout)
        return None if data is None else decode(data, self.dequantize)

    def _drain_raw(self, timeout: float | None) -> list[memoryview]:
        first = self._recv_buffer(timeout)
        if first is None:
            return []
        out = [first]
        while True:
            try:
                out.append(self._view(zmq.NOBLOCK))
            except zmq.Again:
                return out

    def recv_latest(self, timeout: float | None = None) -> Any | None:
        """Wait up to ``timeout`` for a message, empty the queue, decode only the newest."""
        raw = self._drain_raw(timeout)
        return decode(raw[-1], self.dequantize) if raw else None

    def drain(self, timeout: float | None = None) -> list[Any]:
        """Empty the queue: keep every run/timeline/end packet and the newest of each other
        kind, in arrival order. Returns [] on timeout."""
        raw = self._drain_raw(timeout)
        kinds = [split(d)[0][len(TOPIC_ROOT):] for d in raw]
        keep = []
        for i, k in enumerate(kinds):
            if k in KEEP_KINDS or k not in kinds[i + 1:]:
                keep.append(decode(raw[i], self.dequantize))
        return keep

    def close(self) -> None:
        self.sock.close(linger=0)


def wait_joined(pub: Any, sub: ZmqSubscriber, timeout: float = 30.0, kind: str = "status",
                refence: float = 5.0) -> None:
    """Send probe packets until ``sub`` sees one, then a fence and read up to it (ZeroMQ's slow
    joiner), for tests and benchmarks that must not lose their first frames nor get a stray
    probe after: one connection delivers in order, so every probe comes before the fence (a
    fence the publisher's high-water mark dropped is sent again after ``refence`` s). Returns
    as soon as a fence is read; raises TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while sub.recv(timeout=0.05) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the subscriber never joined")
        pub.send_bytes(encode(Packet(kind, {"state": "probe"})))
    fence = encode(Packet(kind, {"state": "probe", "fence": True}))
    while time.monotonic() < deadline:
        pub.send_bytes(fence)
        until = min(deadline, time.monotonic() + refence)
        while (left := until - time.monotonic()) > 0:
            got = sub.recv(timeout=left)
            if got is not None and got.header.get("fence"):
                return
    raise TimeoutError("the subscriber joined, then no probe fence came")
