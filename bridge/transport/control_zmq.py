"""ZeroMQ control server: REP socket, one JSON request -> one JSON reply, in its own thread.

Every request gets exactly one reply (REP requires it), even a malformed one, so a client is
never left waiting and the server never wedges. Validation is ``control.handle_json``.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

import zmq

from bridge.protocol import DEFAULT_CONTROL_ENDPOINT
from bridge.transport.control import Handler, check_bind, handle_json

log = logging.getLogger(__name__)



class ControlZmqServer:
    """Serve ``handler`` on ``endpoint`` (tcp://host:port; port ``*`` picks a free one)."""

    def __init__(self, handler: Handler, endpoint: str = DEFAULT_CONTROL_ENDPOINT, *,
                 allow_remote: bool = False, token: str | None = None,
                 context: zmq.Context | None = None) -> None:
        host = urlsplit(endpoint).hostname or ""
        if endpoint.startswith("tcp://"):
            check_bind(host, allow_remote, token)
        self.handler, self.token = handler, token
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)  # a huge request is dropped by libzmq
        self._sock.bind(endpoint)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="control-zmq", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._sock.poll(100):
                    continue
                parts = self._sock.recv_multipart()
                data = parts[0] if len(parts) == 1 else b"\x00multipart"
                self._sock.send(handle_json(data, self.handler, self.token, "zmq"))
            except zmq.ZMQError as exc:
                if self._stop.is_set():
                    break
                log.error("control zmq: %s (continuing)", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close(linger=0)
