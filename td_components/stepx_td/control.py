"""Control sender for TouchDesigner: JSON requests to the StepX daemon, never blocking.

What: ``ControlClient`` talks to the daemon's ZeroMQ control channel with a REQ socket
(docs/PROTOCOL.md "Control in"; a ROUTER on the daemon's side): ``send()`` queues a request and
returns at once, ``poll()`` (once per frame) sends the next queued request when the previous one
was answered and collects replies, all with ``zmq.NOBLOCK``. ``generate_request()`` checks a
request by the daemon's own schema (``stepx_td.request``) before anything is sent. ``osc_control_message()`` builds the OSC
alternative (``/stepx/control s <json>``) for an OSC Out DAT or a plain UDP socket.

Why: a REQ socket that waits for its reply would freeze TouchDesigner's main thread while the
daemon is busy or down; here a request that gets no reply within ``timeout_s`` is reported
and the socket is re-created (the REQ state machine cannot otherwise send again).
Imports: standard library, pyzmq and ``stepx_td.request`` (standard library only).
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
import time
from collections import deque
from typing import Any, Iterable

import zmq

try:  # imported as part of the stepx_td package
    from .protocol import COMMANDS, CONTROL_PORT, OSC_CONTROL_PORT
    from .request import FIELDS, generate_request as schema_generate_request
except ImportError:  # pragma: no cover - loaded as a loose module
    from protocol import COMMANDS, CONTROL_PORT, OSC_CONTROL_PORT  # type: ignore[no-redef]
    from request import FIELDS, generate_request as schema_generate_request  # type: ignore[no-redef]


def generate_request(prompt: str, *, token: str | None = None, **params: Any) -> dict[str, Any]:
    """A ``generate`` request with only the fields that are set, checked by the daemon's own rules
    (``stepx_td.request``, a byte-identical copy of bridge/request.py): a bad value is a
    ``ValueError`` here, in TouchDesigner, not a round trip later.

    Keyword names are the schema's fields (``seed``, ``steps``, ``guidance``, ``focus``,
    ``negative_prompt``, ``width``, ``height``, ``phase_boundaries``, ``head_weights``, ``concept``).
    TD-friendly spellings: ``seed < 0`` means random, ``width``/``height`` 0 mean the model's
    size, empty strings mean "not set", ``focus`` may be a space/comma separated string.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    given: dict[str, Any] = {}
    for name, value in params.items():
        if name not in FIELDS or name == "prompt":
            raise ValueError(f"unknown field {name!r}; fields: {', '.join(FIELDS)}")
        if value is None or value == "" or (name in ("width", "height") and value == 0):
            continue
        if name == "seed" and isinstance(value, (int, float)) and value < 0:
            continue
        if name == "focus" and isinstance(value, str):
            value = value.replace(",", " ").split()
            if not value:
                continue
        given[name] = value
    return schema_generate_request(prompt, token=token, **given)


def simple_request(cmd: str, token: str | None = None) -> dict[str, Any]:
    """``cancel``, ``status`` or ``ping``."""
    if cmd not in COMMANDS:
        raise ValueError(f"unknown command {cmd!r}; expected one of {', '.join(COMMANDS)}")
    return {"cmd": cmd, **({"token": token} if token else {})}


def _osc_str(s: str) -> bytes:
    b = s.encode("utf-8") + b"\x00"
    return b + b"\x00" * (-len(b) % 4)


def osc_message(address: str, *args: int | float | str) -> bytes:
    """One OSC 1.0 message (int32 ``i``, float32 ``f``, string ``s``)."""
    tags, payload = ",", b""
    for a in args:
        if isinstance(a, bool) or isinstance(a, int):
            tags, payload = tags + "i", payload + struct.pack(">i", int(a))
        elif isinstance(a, float):
            tags, payload = tags + "f", payload + struct.pack(">f", a)
        else:
            tags, payload = tags + "s", payload + _osc_str(str(a))
    return _osc_str(address) + _osc_str(tags) + payload


def osc_control_message(request: dict[str, Any]) -> bytes:
    """The OSC form of a JSON request: ``/stepx/control s <json>``."""
    return osc_message("/stepx/control", json.dumps(request, separators=(",", ":")))


def send_osc(request: dict[str, Any], host: str = "127.0.0.1", port: int = OSC_CONTROL_PORT) -> None:
    """Fire-and-forget UDP send of ``osc_control_message(request)`` (never blocks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.sendto(osc_control_message(request), (host, int(port)))


class ControlClient:
    """Non-blocking REQ client: ``send()`` queues, ``poll()`` sends and collects replies."""

    def __init__(self, address: str = "127.0.0.1", port: int = CONTROL_PORT, *, token: str | None = None,
                 timeout_s: float = 5.0, context: zmq.Context | None = None) -> None:
        self.endpoint = f"tcp://{address}:{int(port)}"
        self.token = token
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._queue: deque[dict[str, Any]] = deque()
        self._pending: dict[str, Any] | None = None
        self._sent_at = 0.0
        self.replies: list[dict[str, Any]] = []
        self.last_reply: dict[str, Any] | None = None
        self._open()

    def _open(self) -> None:
        self.sock = self._ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    @property
    def busy(self) -> bool:
        """True while a request waits for its reply."""
        return self._pending is not None

    def send(self, request: dict[str, Any]) -> Any:
        """Queue one request (an ``id`` is added if missing); returns its id. Never blocks."""
        req = dict(request)
        req.setdefault("id", next(self._ids))
        if self.token and "token" not in req:
            req["token"] = self.token
        self._queue.append(req)
        self._flush()  # sends now when idle; replies are only ever returned by poll()
        return req["id"]

    def poll(self) -> list[dict[str, Any]]:
        """Collect replies and send the next queued request; returns the new replies."""
        new: list[dict[str, Any]] = []
        if self._pending is not None:
            try:
                raw = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                raw = None
            if raw is not None:
                try:
                    reply = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    reply = {"ok": False, "id": self._pending.get("id"), "error": f"unreadable reply: {exc}"}
                new.append(reply)
                self._pending = None
            elif time.monotonic() - self._sent_at > self.timeout_s:
                new.append({"ok": False, "id": self._pending.get("id"),
                            "error": f"no reply from {self.endpoint} within {self.timeout_s:g} s (is the daemon running?)"})
                self._pending = None
                self.sock.close(linger=0)  # a REQ socket cannot send again before a reply
                self._open()
        self._flush()
        if new:
            self.replies.extend(new)
            del self.replies[:-50]
            self.last_reply = new[-1]
        return new

    def _flush(self) -> None:
        """Send the next queued request if none is waiting for its reply (never blocks)."""
        if self._pending is None and self._queue:
            req = self._queue.popleft()
            try:
                self.sock.send(json.dumps(req, separators=(",", ":")).encode("utf-8"), zmq.NOBLOCK)
                self._pending, self._sent_at = req, time.monotonic()
            except zmq.Again:
                self._queue.appendleft(req)  # not connected yet: retry next frame

    def close(self) -> None:
        """Close the socket; queued requests are dropped."""
        self._queue.clear()
        self.sock.close(linger=0)
