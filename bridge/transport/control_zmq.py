"""ZeroMQ control server: a ROUTER socket, one JSON request -> one JSON reply, in its own thread.

Why ROUTER, not REP: a REP socket answers "the last peer it read from" through a state machine
that one malformed or vanished peer can desynchronise, so the next legitimate reply goes to a
dead connection. A ROUTER routes every reply by the sender's identity: each REQ (or DEALER)
client gets exactly its own answer, and a peer whose envelope is malformed is dropped without
touching anyone else. Every well-formed request gets one reply, a malformed or oversize one a
clear error (``control.handle_json``); nothing a client sends can stop the loop.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

import zmq

from bridge.protocol import DEFAULT_CONTROL_ENDPOINT
from bridge.request import MAX_REQUEST_BYTES, GenerateParams
from bridge.transport.control import (ControlError, Handler, check_bind, encode_reply, handle_json, reply_error,
                                      supervise)

log = logging.getLogger(__name__)

#: libzmq closes a connection that sends a message larger than this (no reply is possible then);
#: anything between MAX_REQUEST_BYTES and this gets a clear "too large" error.
MAX_WIRE_BYTES = 16 * 1024 * 1024


class ControlZmqServer:
    """Serve ``handler`` on ``endpoint`` (tcp://host:port; port ``*`` picks a free one)."""

    def __init__(self, handler: Handler, endpoint: str = DEFAULT_CONTROL_ENDPOINT, *,
                 allow_remote: bool = False, token: str | None = None, allow_unauthenticated: bool = False,
                 defaults: GenerateParams | None = None, context: zmq.Context | None = None) -> None:
        host = urlsplit(endpoint).hostname or ""
        if endpoint.startswith("tcp://"):
            check_bind(host, allow_remote, token, allow_unauthenticated)
        self.handler, self.token, self.defaults = handler, token, defaults
        self.replies = 0
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_BYTES)
        self._sock.setsockopt(zmq.SNDHWM, 1000)  # a peer that never reads loses its replies, never blocks us
        self._sock.bind(endpoint)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self.restarts = 0
        self._thread = threading.Thread(target=self._supervise, name="control-zmq", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The control thread is running (tests and the daemon's status check it)."""
        return self._thread.is_alive()

    def answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply frames for one ROUTER message ``[identity, (b"",) request]``, or None to drop
        it (a malformed envelope: no request frame, or several). Never raises."""
        if len(frames) < 2:
            return None
        ident, rest = frames[0], frames[1:]
        envelope = [ident]
        if rest[0] == b"":  # REQ clients put an empty delimiter before the request
            envelope, rest = [ident, b""], rest[1:]
        if len(rest) != 1:
            if not rest:
                return None
            return envelope + [encode_reply(reply_error(f"a request is one frame of UTF-8 JSON; got {len(rest)} frames"))]
        data = rest[0]
        try:
            if len(data) > MAX_REQUEST_BYTES:
                raise ControlError(f"request is {len(data)} bytes; at most {MAX_REQUEST_BYTES}")
            return envelope + [handle_json(data, self.handler, self.token, "zmq", self.defaults)]
        except ControlError as exc:
            return envelope + [encode_reply(reply_error(str(exc)))]
        except Exception as exc:  # handle_json never raises; this is the last line, not the first
            log.error("control zmq: unexpected %r (continuing)", exc)
            return envelope + [encode_reply(reply_error("internal error"))]

    def _supervise(self) -> None:
        supervise(self._serve, self._stop, "zmq", self._count_restart)

    def _count_restart(self) -> None:
        self.restarts += 1

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._sock.poll(100):
                    continue
                reply = self.answer(self._sock.recv_multipart())
                if reply is not None:
                    self._sock.send_multipart(reply, zmq.NOBLOCK)
                    self.replies += 1
            except zmq.Again:
                log.debug("control zmq: a peer's reply queue is full; reply dropped")
            except zmq.ZMQError as exc:
                if self._stop.is_set():
                    break
                log.error("control zmq: %s (continuing)", exc)
            except Exception as exc:  # nothing a client sends may end this loop
                log.error("control zmq: unexpected %r (continuing)", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close(linger=0)
