"""OSC control server: UDP in its own thread; replies go back to the sender's address.

Two ways in, both validated by ``control``:

* ``/stepx/control s`` with a JSON request (the same JSON as the ZeroMQ channel);
* per-parameter addresses that a TouchDesigner OSC Out CHOP/DAT can send, staged until
  ``/stepx/start``: ``/stepx/prompt s``, ``/stepx/negative_prompt s``, ``/stepx/seed i``,
  ``/stepx/steps i``, ``/stepx/guidance f``, ``/stepx/focus s...``,
  ``/stepx/phase_boundaries f f``, ``/stepx/head_weights f...``, ``/stepx/concept s``,
  then ``/stepx/start``, ``/stepx/cancel``, ``/stepx/status``, ``/stepx/ping``.

With a shared token, the first argument of every message must be the token (a string).
Each message is answered with ``/stepx/reply s`` (the JSON reply); a staged parameter is
checked at once, so a bad slider value is answered immediately.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any

from pythonosc.osc_packet import OscPacket

from bridge.protocol import COMMANDS, OSC_CONTROL_PORT
from bridge.transport import osc_encode
from bridge.transport.control import (ControlError, Handler, check_bind, handle_object, parse_generate,
                                      reply_error)

log = logging.getLogger(__name__)

SCALAR_PARAMS = {"prompt", "negative_prompt", "seed", "steps", "guidance", "concept"}
LIST_PARAMS = {"focus", "phase_boundaries", "head_weights"}
COMMAND_ADDRS = set(COMMANDS) - {"playlist"}  # a playlist is a list of requests: JSON control only


class ControlOscServer:
    """Listen on ``host:port`` (port 0 picks a free one; see ``.port``)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = OSC_CONTROL_PORT, *,
                 allow_remote: bool = False, token: str | None = None) -> None:
        check_bind(host, allow_remote, token)
        self.handler, self.token = handler, token
        self.staged: dict[str, Any] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="control-osc", daemon=True)
        self._thread.start()

    def handle_message(self, address: str, args: list[Any]) -> dict[str, Any]:
        """One OSC message -> reply dict. Never raises."""
        try:
            if self.token is not None:
                if not args or args[0] != self.token:
                    raise ControlError("missing or wrong token (first argument)")
                args = args[1:]
            if not address.startswith("/stepx/"):
                raise ControlError(f"unknown address {address!r}; control addresses start with /stepx/")
            name = address[len("/stepx/"):]
            if name == "control":
                if len(args) != 1 or not isinstance(args[0], str):
                    raise ControlError("/stepx/control takes one string argument: a JSON request")
                try:
                    obj = json.loads(args[0])
                except ValueError as exc:
                    raise ControlError(f"/stepx/control argument is not JSON: {exc}") from None
                if isinstance(obj, dict) and self.token is not None:
                    obj["token"] = self.token  # already checked above
                return handle_object(obj, self.handler, self.token, "osc")
            if name in SCALAR_PARAMS | LIST_PARAMS:
                if name in SCALAR_PARAMS and len(args) != 1:
                    raise ControlError(f"{address} takes exactly one argument, got {len(args)}")
                value = args[0] if name in SCALAR_PARAMS else list(args)
                trial = {"prompt": "x", **self.staged, name: value}
                parse_generate(trial)  # check this value now
                self.staged[name] = value
                return {"ok": True, "id": None, "cmd": "set", "result": {name: value}}
            if name in COMMAND_ADDRS:
                obj: dict[str, Any] = {"cmd": name}
                if name in ("start", "generate"):
                    obj.update(self.staged)
                if self.token is not None:
                    obj["token"] = self.token
                return handle_object(obj, self.handler, self.token, "osc")
            raise ControlError(f"unknown address {address!r}; see docs/PROTOCOL.md (Control over OSC)")
        except ControlError as exc:
            log.warning("control osc: rejected %s: %s", address, exc)
            return reply_error(str(exc))
        except Exception as exc:  # defensive: a parser bug must not kill the server thread
            log.error("control osc: error on %s: %r", address, exc)
            return reply_error(f"internal error: {exc!r}")

    def handle_datagram(self, data: bytes) -> list[dict[str, Any]]:
        """Parse one datagram (message or bundle) and answer each message. Never raises."""
        try:
            msgs = OscPacket(data).messages
        except Exception as exc:  # python-osc raises several types on garbage
            log.warning("control osc: undecodable datagram (%d bytes): %s", len(data), exc)
            return [reply_error(f"not an OSC packet: {exc}")]
        return [self.handle_message(m.message.address, list(m.message.params)) for m in msgs]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(65536)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                if self._stop.is_set():
                    break
                continue
            for reply in self.handle_datagram(data):
                try:
                    self._sock.sendto(osc_encode.message("/stepx/reply", json.dumps(reply, default=str)), peer)
                except (OSError, ValueError) as exc:
                    log.debug("control osc: reply to %s failed: %s", peer, exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()
