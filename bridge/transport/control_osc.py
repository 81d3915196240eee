"""OSC control server: UDP in its own thread; at most one reply per datagram, to its sender.

Two ways in, both validated by ``control`` (fields and ranges from ``bridge.request``):

* ``/stepx/control s`` with a JSON request (the same JSON as the ZeroMQ channel);
* one address per generation field (``bridge.request.osc_parameters()``: ``/stepx/prompt s``,
  ``/stepx/steps i``, ``/stepx/width i``, …), staged **per sender** (IP and port) until that
  sender's ``/stepx/start``; ``/stepx/reset`` clears the sender's staging; commands
  ``/stepx/start``, ``/stepx/cancel``, ``/stepx/status``, ``/stepx/ping``.

Replies (``/stepx/reply s <json>``) are bounded so the port is no reflection amplifier:
one datagram answers one datagram (a bundle's messages run in order and stop at the first
error; the reply is that error or the last message's answer). A peer that has not yet sent a
well-formed, authenticated ``/stepx/`` message is *unknown*: it gets no reply to a malformed
datagram, and no reply larger than the datagram it sent (a longer answer is cut to its
``ok``/``error`` with ``"truncated": true``). With a shared token, the first argument of every
message is the token.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import OrderedDict
from typing import Any

from pythonosc.osc_packet import OscPacket

from bridge.protocol import COMMANDS, OSC_CONTROL_PORT
from bridge.transport import osc_encode
from bridge.transport.control import (ControlError, Handler, check_bind, decode_json, encode_reply, handle_object,
                                      reply_error, supervise)
from bridge.request import FIELDS, GenerateParams, SchemaError, check_fields, check_token

log = logging.getLogger(__name__)

PREFIX = "/stepx/"
COMMAND_ADDRS = (*(c for c in COMMANDS if c != "playlist"), "reset")  # a playlist is JSON control only
MAX_MESSAGES = 64     # messages in one datagram (a bundle); more is refused whole
MAX_SENDERS = 64      # staging areas kept (least recently used dropped first)
MAX_KNOWN = 1024      # peers remembered as known
REPLY_ADDRESS = "/stepx/reply"

Peer = tuple[Any, ...]


class _Malformed(Exception):
    """Not a control datagram at all (undecodable, or no /stepx/ address): unknown peers get no reply."""


class ControlOscServer:
    """Listen on ``host:port`` (port 0 picks a free one; see ``.port``)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = OSC_CONTROL_PORT, *,
                 allow_remote: bool = False, token: str | None = None, allow_unauthenticated: bool = False,
                 defaults: GenerateParams | None = None) -> None:
        check_bind(host, allow_remote, token, allow_unauthenticated)
        self.handler, self.token, self.defaults = handler, token, defaults
        self.staged: OrderedDict[Peer, dict[str, Any]] = OrderedDict()
        self.known: OrderedDict[Peer, None] = OrderedDict()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host.strip("[]"), port))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self.restarts = 0
        self._thread = threading.Thread(target=self._supervise, name="control-osc", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- one message ---------------------------------------------------------------------------
    def handle_message(self, address: str, args: list[Any], peer: Peer = ("", 0)) -> dict[str, Any]:
        """One authenticated ``/stepx/`` message -> its reply dict (ControlError for a bad one)."""
        name = address[len(PREFIX):]
        if name == "control":
            if len(args) != 1 or not isinstance(args[0], str):
                raise ControlError("/stepx/control takes one string argument: a JSON request")
            decoded = decode_json(args[0].encode("utf-8", "surrogatepass"))
            if isinstance(decoded, dict) and self.token is not None:
                decoded["token"] = self.token  # the first argument was the token, checked already
            return handle_object(decoded, self.handler, self.token, "osc", self.defaults)
        if name in FIELDS:
            value = _field_value(name, args)
            with self._lock:
                trial = {**self.staged.get(peer, {}), name: value}
                check_fields({"prompt": "x", **trial})  # this value now, with the sender's others
                self._staging(peer)[name] = value
            return {"ok": True, "id": None, "cmd": "set", "result": {name: value}}
        if name in COMMAND_ADDRS:
            if args and name != "ping":  # ping's arguments are padding (room for a first reply), ignored
                raise ControlError(f"{address} takes no arguments (besides the token)")
            if name == "reset":
                with self._lock:
                    self.staged.pop(peer, None)
                return {"ok": True, "id": None, "cmd": "reset", "result": {"staged": {}}}
            obj: dict[str, Any] = {"cmd": name}
            if name in ("start", "generate"):
                with self._lock:
                    obj.update(self.staged.get(peer, {}))
            if self.token is not None:
                obj["token"] = self.token
            return handle_object(obj, self.handler, self.token, "osc", self.defaults)
        raise ControlError(f"unknown address {_shown(address)}; see docs/PROTOCOL.md (Control over OSC)")

    def _staging(self, peer: Peer) -> dict[str, Any]:
        area = self.staged.setdefault(peer, {})
        self.staged.move_to_end(peer)
        while len(self.staged) > MAX_SENDERS:
            self.staged.popitem(last=False)
        return area

    # --- one datagram ----------------------------------------------------------------------------
    def handle_datagram(self, data: bytes, peer: Peer = ("", 0)) -> dict[str, Any] | None:
        """One datagram -> the one reply dict to send back, or None for none. Never raises."""
        known = peer in self.known
        try:
            msgs = _messages(data)
            if len(msgs) > MAX_MESSAGES:
                raise ControlError(f"one datagram holds {len(msgs)} messages; at most {MAX_MESSAGES}")
            reply: dict[str, Any] | None = None
            for i, (address, args) in enumerate(msgs):
                where = f"message {i + 1} of {len(msgs)}: " if len(msgs) > 1 else ""
                try:
                    if self.token is not None:
                        check_token(args[0] if args else None, self.token)
                        args = args[1:]
                    self._remember(peer)
                    reply = self.handle_message(address, args, peer)
                except (SchemaError, ControlError) as exc:
                    log.warning("control osc: rejected %s: %s", _shown(address), exc)
                    reply = reply_error(f"{where}{exc}")
                if not reply.get("ok"):
                    break
            return reply
        except _Malformed as exc:
            log.debug("control osc: malformed datagram (%d bytes) from %s: %s", len(data), peer, exc)
            return reply_error(f"not a control datagram: {exc}") if known else None
        except ControlError as exc:
            return reply_error(str(exc))
        except Exception as exc:  # the last line: nothing a client sends may end the loop
            log.error("control osc: unexpected %r on a %d-byte datagram", exc, len(data))
            return reply_error(f"request could not be handled: {type(exc).__name__}") if known else None

    def _remember(self, peer: Peer) -> None:
        self.known[peer] = None
        self.known.move_to_end(peer)
        while len(self.known) > MAX_KNOWN:
            self.known.popitem(last=False)

    def reply_bytes(self, data: bytes, peer: Peer = ("", 0)) -> bytes | None:
        """The reply datagram for one request datagram (None: send nothing). An unknown peer's
        reply is never larger than its request."""
        was_known = peer in self.known
        reply = self.handle_datagram(data, peer)
        if reply is None:
            return None
        return bounded_reply(reply, None if was_known else len(data))

    def _supervise(self) -> None:
        supervise(self._serve, self._stop, "osc", self._count_restart)

    def _count_restart(self) -> None:
        self.restarts += 1

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
            try:
                out = self.reply_bytes(data, peer)
                if out is not None:
                    self._sock.sendto(out, peer)
            except OSError as exc:
                log.debug("control osc: reply to %s failed: %s", peer, exc)
            except Exception as exc:  # nothing a client sends may end this loop
                log.error("control osc: unexpected %r (continuing)", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()


def _shown(s: str) -> str:
    return repr(s if len(s) <= 60 else s[:57] + "...")


def _messages(data: bytes) -> list[tuple[str, list[Any]]]:
    """(address, args) of every message in an OSC packet; _Malformed if it is not one or an
    address is outside /stepx/."""
    try:
        msgs = [(m.message.address, list(m.message.params)) for m in OscPacket(data).messages]
    except Exception as exc:  # python-osc raises several types on garbage
        raise _Malformed(f"not an OSC packet ({type(exc).__name__})") from None
    if not msgs:
        raise _Malformed("an empty bundle")
    for address, _ in msgs:
        if not isinstance(address, str) or not address.startswith(PREFIX):
            raise _Malformed(f"address {_shown(str(address))} is not a /stepx/ control address")
    return msgs


def _field_value(name: str, args: list[Any]) -> Any:
    """The staged value of ``/stepx/<name>``'s arguments, by the field's kind."""
    kind = FIELDS[name].kind
    if kind in ("text", "int", "float"):
        if len(args) != 1:
            raise ControlError(f"/stepx/{name} takes exactly one argument ({FIELDS[name].osc_tags}), got {len(args)}")
        return args[0]
    if kind == "pair" and len(args) != 2:
        raise ControlError(f"/stepx/{name} takes two numbers a, b with 0 < a < b < 1")
    return list(args)


def bounded_reply(reply: dict[str, Any], limit: int | None) -> bytes | None:
    """``/stepx/reply s <json>`` at most ``limit`` bytes (None: no limit); a longer reply keeps
    ``ok``, ``id`` and as much of ``error`` as fits, with ``"truncated": true``; None if not even
    that fits."""
    full = osc_encode.message(REPLY_ADDRESS, encode_reply(reply).decode("utf-8"))
    if limit is None or len(full) <= limit:
        return full
    short: dict[str, Any] = {"ok": bool(reply.get("ok")), "truncated": True}
    msg = osc_encode.message(REPLY_ADDRESS, json.dumps(short))
    if len(msg) > limit:
        return None
    error = str(reply.get("error") or "")
    room = limit - len(msg) - 16
    if error and room > 8:
        short = {"ok": short["ok"], "error": error[: room // 2], "truncated": True}  # // 2: escapes may double
        msg = osc_encode.message(REPLY_ADDRESS, json.dumps(short))
    return msg if len(msg) <= limit else None
