"""Live: the fan-out's wire bytes, forwarded to every open WebSocket as they come.

The page decodes the same StepX wire format the ZeroMQ subscribers read (docs/PROTOCOL.md), in
JavaScript (static/wire.js). Bytes reach the hub from a :class:`LiveSink` in the daemon's
fan-out (``stepx serve --explore`` with the outputs in-process), or from a :class:`ZmqFeed`
subscribed to a publisher (``stepx explore --live ENDPOINT``, or ``serve --explore`` when the
outputs run in the sink process).

Each client keeps what the fan-out keeps: run/timeline/end packets in order, and only the newest
step/image/status (latest wins), so a slow browser never builds a backlog or slows the model.
A client that closes is dropped at once; nothing else holds it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any

from bridge.protocol import KEEP_KINDS as KEEP  # kinds a newer frame never replaces (the protocol's rule)
from bridge.stream.fanout import SinkBase

log = logging.getLogger(__name__)

def packet_kind(data: bytes) -> str:
    """The kind in a wire message's topic (``stepx/step`` → ``step``); '' if there is none."""
    end = data.find(b"\x00", 0, 256)
    topic = data[:end].decode("ascii", "replace") if end > 0 else ""
    return topic.rpartition("/")[2]


class _Client:
    """One WebSocket's mailbox (touched only on the event loop's thread)."""

    def __init__(self) -> None:
        self.keep: deque[tuple[int, bytes]] = deque(maxlen=64)
        self.slots: dict[str, tuple[int, bytes]] = {}
        self.ready = asyncio.Event()
        self.dropped = 0

    def offer(self, seq: int, kind: str, data: bytes) -> None:
        if kind in KEEP:
            self.keep.append((seq, data))
        else:
            if kind in self.slots:
                self.dropped += 1
            self.slots[kind] = (seq, data)
        self.ready.set()

    def take(self) -> list[bytes]:
        """Everything waiting, in publish order."""
        items = sorted([*self.keep, *self.slots.values()])
        self.keep.clear()
        self.slots.clear()
        self.ready.clear()
        return [d for _, d in items]


class LiveHub:
    """Receives wire messages from any thread; hands them to the connected WebSockets.

    A client that joins mid-run first gets the run's ``run`` packet and its newest image and
    step, so it can draw at once.
    """

    def __init__(self) -> None:
        self._clients: set[_Client] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self._current: dict[str, tuple[int, bytes]] = {}  # the current run's run/image/step/end
        self.received = 0

    @property
    def clients(self) -> int:
        return len(self._clients)

    def push(self, data: bytes) -> None:
        """One wire message (any thread). Never blocks."""
        kind = packet_kind(data)
        if not kind:
            return
        with self._lock:
            self._seq += 1
            seq = self._seq
            self.received += 1
            if kind == "run":
                self._current = {}
            if kind != "status":
                self._current[kind] = (seq, data)
            loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._fan, seq, kind, data)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def _fan(self, seq: int, kind: str, data: bytes) -> None:
        for c in list(self._clients):
            c.offer(seq, kind, data)

    async def serve(self, websocket: Any) -> None:
        """Feed one accepted Starlette WebSocket until it closes."""
        self._loop = asyncio.get_running_loop()
        client = _Client()
        with self._lock:
            for seq, data in sorted(self._current.values()):
                client.offer(seq, packet_kind(data), data)
        self._clients.add(client)
        closed = asyncio.ensure_future(self._closed(websocket))
        try:
            while not closed.done():
                waiter = asyncio.ensure_future(client.ready.wait())
                await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                for data in client.take():
                    await websocket.send_bytes(data)
        except Exception as exc:  # the socket went away mid-send
            log.debug("live client gone: %r", exc)
        finally:
            self._clients.discard(client)
            closed.cancel()

    @staticmethod
    async def _closed(websocket: Any) -> None:
        """Returns when the browser closes (it sends nothing else)."""
        from starlette.websockets import WebSocketDisconnect

        try:
            while True:
                await websocket.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            return


class LiveSink(SinkBase):
    """A fan-out sink (the ``Sink`` protocol of ``bridge.stream.fanout``) that hands each encoded
    packet to a hub."""

    name = "explorer"
    encoding = "float32"
    inline = True  # push() never blocks: it only schedules work on the event loop
    lossless = False  # latest wins, like every live output

    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub

    def send(self, packet: Any, data: bytes | None) -> None:
        if data is not None:
            self.hub.push(data)

    def close(self) -> None:
        pass


class ZmqFeed:
    """A thread that subscribes to a StepX ZeroMQ publisher and pushes every message to a hub."""

    def __init__(self, hub: LiveHub, endpoint: str) -> None:
        from bridge.transport.zmq_sub import ZmqSubscriber

        self.hub, self.endpoint = hub, endpoint
        self._sub = ZmqSubscriber(endpoint, rcvhwm=64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stepx-explore-zmq", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._sub.recv_bytes(timeout=0.2)
                if data is not None:
                    self.hub.push(data)
        finally:
            self._sub.sock.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
