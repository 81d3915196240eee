"""ZeroMQ publisher: never blocks the producer, and re-sends run metadata to late joiners.

Why XPUB: with ``XPUB_VERBOSE`` every new subscription reaches the publisher, so when a
subscriber joins mid-run the cached ``run`` packet (and the run's ``end`` if it has one) is
re-sent before the next packet goes out (the sending thread looks for new subscriptions first:
a non-blocking read), or within ``poll_interval`` (0.1 s) while nothing is being sent, instead
of waiting for the next run. No thread wakes at a high rate for this: a 5 ms watcher was 200
wake-ups a second in the sink process, beside the thread that launches the model's kernels
(bench/sink_cpu.py). Why NOBLOCK + a bounded SNDHWM:
a slow subscriber must never slow the model; when its pipe is full the frame is dropped
for that subscriber (XPUB semantics), so the publisher holds at most ``SNDHWM`` frames per
subscriber. Why 32 and not 4: packets come in bursts (a step, its image, the final image, the
timeline, the end and the next run's packet within a millisecond: the idle replay's loop point),
and a queue of 4 dropped ``run``/``end``/step 0 for subscribers that kept up. The receiver's
own queue (RCVHWM) is what grows for a slow reader: it must drain (docs/PROTOCOL.md).

``close()`` lingers up to ``linger`` seconds so the last packets of a replay (``timeline``,
``end``) reach subscribers before the process exits.

Re-sent ``run``/``end`` packets go to every matching subscriber: receivers treat a repeated
``run`` with the same ``run_id`` as a no-op (docs/PROTOCOL.md).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

import zmq

from bridge.protocol import DEFAULT_DATA_ENDPOINT, TOPIC_ROOT, encode

log = logging.getLogger(__name__)

DEFAULT_PUB_ENDPOINT = DEFAULT_DATA_ENDPOINT
#: frames queued per subscriber before XPUB drops for it (the module docstring says why 32)
SNDHWM = 32
_RUN_TOPIC = (TOPIC_ROOT + "run").encode()
_END_TOPIC = (TOPIC_ROOT + "end").encode()


class ZmqPublisher:
    """XPUB socket bound to ``endpoint``; ``send(data)`` never blocks.

    Also a fan-out ``Sink`` (``name``, ``encoding``, ``send(packet, data)``, ``close()``), an
    ``inline`` one: its send never blocks, so a FanOut calls it on the producer's thread.
    The socket is shared by the caller's thread and a small watcher thread that reads
    subscriptions while nothing is sent; a lock serialises every socket call (ZMQ sockets
    are not thread-safe).
    """

    inline = True  # FanOut: send on the producer's thread (non-blocking, microseconds)
    lossless = False  # a subscriber takes the latest frames

    def __init__(self, endpoint: str = DEFAULT_PUB_ENDPOINT, *, encoding: str = "float16",
                 sndhwm: int = SNDHWM, name: str = "zmq", context: zmq.Context | None = None,
                 poll_interval: float = 0.1, linger: float = 1.0) -> None:
        self.name = name
        self.encoding = encoding
        self.sent = 0
        self.dropped = 0
        self._own_ctx = context is None  # our own: close() can wait for the queued frames to leave
        self._ctx = context or zmq.Context()
        self._linger = linger
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscribe, even duplicates
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._cache: list[tuple[bytes, bytes]] = []  # (topic, data) of the current run/end
        self._joined = threading.Event()  # set at the first subscription seen (see wait_subscriber)
        self._stop = threading.Event()
        self._poll_interval = poll_interval
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-xpub", daemon=True)
        self._watcher.start()

    # -- producer side -------------------------------------------------------------------
    def send_bytes(self, data: bytes) -> bool:
        """Send one encoded message; return False if dropped (a subscriber pipe is full)."""
        topic = data[: data.find(b"\x00")] if b"\x00" in data[:256] else b""
        with self._lock:
            self._welcome()  # a new subscriber gets the cached run (and end) before this packet
            if topic == _RUN_TOPIC:
                self._cache = [(topic, data)]
            elif topic == _END_TOPIC and self._cache:
                self._cache = self._cache[:1] + [(topic, data)]
            try:
                self._sock.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
            except zmq.Again:
                self.dropped += 1
                return False
            except zmq.ZMQError as exc:  # closed socket, context terminated
                log.warning("zmq publisher %s: send failed: %s", self.endpoint, exc)
                self.dropped += 1
                return False
        self.sent += 1
        return True

    def send(self, packet: Any, data: bytes | None = None) -> None:
        """Sink interface: send the pre-encoded ``data`` (encode here only if not given)."""
        self.send_bytes(data if data is not None else encode(packet, self.encoding))

    # -- late joiners --------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(self._poll_interval):
            with self._lock:
                self._welcome()

    def _welcome(self) -> None:
        """Re-send the cached run/end to each subscription that arrived since the last look
        (the lock held; costs one failing non-blocking read when there is none)."""
        while True:
            try:
                events = cast(int, self._sock.get(zmq.EVENTS))  # an int option; pyzmq types get() as int | bytes | str
                if not events & zmq.POLLIN:  # the common case, without raising zmq.Again
                    return
                msg = self._sock.recv(zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return
            if msg[:1] != b"\x01":  # an unsubscription
                continue
            self._joined.set()
            for topic, data in self._cache:
                if topic.startswith(msg[1:]):
                    try:
                        self._sock.send(data, zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass

    def wait_subscriber(self, timeout: float) -> bool:
        """Block until a subscriber has subscribed (seen by the watcher within ``poll_interval``),
        at most ``timeout`` seconds; whether one did. From then on it gets what is sent."""
        return self._joined.wait(timeout)

    def close(self) -> None:
        """Stop the watcher and close the socket, giving queued frames up to ``linger`` seconds to
        reach subscribers that keep up (a replay's last ``timeline`` and ``end``)."""
        self._stop.set()
        self._watcher.join(timeout=1.0)
        with self._lock:
            if self._sock.closed:
                return
            self._sock.close(linger=int(self._linger * 1000))
        if self._own_ctx:
            self._ctx.term()  # returns once the queued frames are sent, or the linger has passed
