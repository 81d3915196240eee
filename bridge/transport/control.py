"""Control requests: parse and validate what artists send, and build the JSON replies.

Pure functions only (no sockets): ``parse_request`` turns a decoded JSON object into a
``ControlRequest`` or raises ``ControlError`` with a message naming what was wrong and what
would be right; ``handle_json`` wraps a whole request/reply round (bytes in, bytes out) so
both servers (OSC, ZeroMQ) share one code path that never raises. The fields and their ranges
are the schema's (``bridge.request``), stated once.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from bridge.protocol import COMMANDS
from bridge.request import (MAX_ID_CHARS, MAX_PLAYLIST, MAX_REQUEST_BYTES, GenerateParams, SchemaError,
                            check_token as _check_token, parse_generate as _parse_generate)

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_ENVELOPE = ("cmd", "id", "token")

__all__ = ["COMMANDS", "MAX_REQUEST_BYTES", "ControlError", "ControlRequest", "GenerateParams", "check_bind",
           "decode_json", "handle_json", "handle_object", "parse_generate", "parse_request"]


class ControlError(SchemaError):
    """A control request was malformed or out of range; the message says how to fix it."""


@dataclass
class ControlRequest:
    """A validated request. ``cmd`` is one of COMMANDS (``start`` is an alias of
    ``generate``); ``params`` for generate, ``playlist`` + ``loop`` for playlist."""

    cmd: str
    id: str | int | None = None
    params: GenerateParams | None = None
    playlist: list[GenerateParams] = field(default_factory=list)
    loop: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_generate(d: Any, base: GenerateParams | None = None) -> GenerateParams:
    """Validate one generation's parameters (a dict) or raise ControlError; fields left out
    come from ``base`` (the server's defaults)."""
    try:
        return _parse_generate(d, base, allowed_extra=_ENVELOPE)
    except SchemaError as exc:
        raise ControlError(str(exc)) from None


def _request_id(obj: Any) -> str | int | None:
    rid = obj.get("id") if isinstance(obj, dict) else None
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise ControlError("'id' must be a string or integer (at most 100 characters)")
    if isinstance(rid, int) and not -(10**MAX_ID_CHARS) < rid < 10**MAX_ID_CHARS or isinstance(rid, str) and len(rid) > MAX_ID_CHARS:
        raise ControlError(f"'id' must be a string or integer (at most {MAX_ID_CHARS} characters)")
    if isinstance(rid, str):
        try:
            rid.encode("utf-8")
        except UnicodeEncodeError:
            raise ControlError("'id' is not valid Unicode (it holds a lone surrogate)") from None
    return rid


def parse_request(obj: Any, base: GenerateParams | None = None) -> ControlRequest:
    """Validate a decoded JSON request (see docs/PROTOCOL.md, "Control") or raise ControlError."""
    if not isinstance(obj, dict):
        raise ControlError(f"a request must be a JSON object, got {type(obj).__name__}")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        shown = repr(cmd) if isinstance(cmd, str) and len(cmd) < 40 else type(cmd).__name__
        raise ControlError(f"'cmd' must be one of {', '.join(COMMANDS)}; got {shown}")
    rid = _request_id(obj)
    if cmd in ("generate", "start"):
        return ControlRequest("generate", rid, params=parse_generate(obj, base))
    extra = sorted(str(k)[:40] for k in set(obj) - {*_ENVELOPE, "items", "loop"})
    if extra:
        raise ControlError(f"'{cmd}' takes no field(s) {extra[:5]}")
    if cmd == "playlist":
        items = obj.get("items")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_PLAYLIST:
            raise ControlError(f"'playlist' needs 'items': a list of 1..{MAX_PLAYLIST} generation objects")
        parsed = []
        for i, it in enumerate(items):
            if isinstance(it, dict) and any(k in it for k in _ENVELOPE):
                raise ControlError(f"playlist item {i}: items carry generation fields only (no cmd, id or token)")
            try:
                parsed.append(parse_generate(it, base))
            except ControlError as exc:
                raise ControlError(f"playlist item {i}: {exc}") from None
        loop = obj.get("loop", False)
        if not isinstance(loop, bool):
            raise ControlError("'loop' must be true or false")
        return ControlRequest("playlist", rid, playlist=parsed, loop=loop)
    if "items" in obj or "loop" in obj:
        raise ControlError(f"'{cmd}' takes no 'items' or 'loop'")
    return ControlRequest(cmd, rid)


def reply_ok(req: ControlRequest, result: Any = None) -> dict[str, Any]:
    return {"ok": True, "id": req.id, "cmd": req.cmd, "result": result}


def reply_error(message: str, rid: Any = None) -> dict[str, Any]:
    return {"ok": False, "id": rid, "error": message}


Handler = Callable[[ControlRequest], Any]


def check_token(obj: Any, token: str | None) -> None:
    """Raise ControlError unless ``obj['token']`` equals the shared token (when one is set):
    compared in constant time on bytes, so no string a client sends can raise anything else."""
    try:
        _check_token(obj.get("token") if isinstance(obj, dict) else None, token)
    except SchemaError as exc:
        raise ControlError(str(exc)) from None


def handle_object(obj: Any, handler: Handler, token: str | None = None, source: str = "",
                  base: GenerateParams | None = None) -> dict[str, Any]:
    """Validate ``obj``, call ``handler``; return the reply dict. Never raises.

    The handler may raise ``ControlError`` (or ``ValueError``) to refuse a request with a clear
    message (e.g. a focus word that is not in the prompt); any other exception is reported as
    ``<cmd> failed: …``."""
    try:
        rid = _request_id(obj)
    except ControlError:
        rid = None
    try:
        check_token(obj, token)
        req = parse_request(obj, base)
    except ControlError as exc:
        log.warning("control%s: rejected request: %s", f" from {source}" if source else "", exc)
        return reply_error(str(exc), rid)
    except Exception as exc:  # a validation gap is still the client's answer, never the loop's end
        log.error("control%s: unexpected %r while validating", f" from {source}" if source else "", exc)
        return reply_error(f"request could not be validated: {type(exc).__name__}", rid)
    try:
        result = handler(req)
        json.dumps(result)  # the reply must be JSON
    except ValueError as exc:  # the handler refused it (ControlError is a ValueError)
        log.warning("control: %s refused: %s", req.cmd, exc)
        return reply_error(str(exc), req.id)
    except (Exception, SystemExit) as exc:  # the handler's failure is the client's answer, not our crash
        log.error("control: handler failed on %s: %r", req.cmd, exc)
        return reply_error(f"{req.cmd} failed: {exc}", req.id)
    return reply_ok(req, result)


def decode_json(data: bytes) -> Any:
    """UTF-8 JSON bytes → object, or ControlError (too large, not UTF-8, not JSON, nested too deep)."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ControlError(f"request is {len(data)} bytes; at most {MAX_REQUEST_BYTES}")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ControlError("request is nested too deeply to be a request") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"request is not UTF-8 JSON: {str(exc)[:120]}") from None


def encode_reply(reply: dict[str, Any]) -> bytes:
    """A reply as UTF-8 JSON; strings that cannot be encoded are escaped, never an exception."""
    try:
        return json.dumps(reply, default=str).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError, RecursionError):
        return json.dumps(reply, default=str, ensure_ascii=True).encode("utf-8", "backslashreplace")


def handle_json(data: bytes, handler: Handler, token: str | None = None, source: str = "",
                base: GenerateParams | None = None) -> bytes:
    """One request/reply round on raw bytes (UTF-8 JSON in, UTF-8 JSON out). Never raises."""
    try:
        obj = decode_json(data)
    except ControlError as exc:
        log.warning("control%s: rejected request: %s", f" from {source}" if source else "", exc)
        return encode_reply(reply_error(str(exc)))
    return encode_reply(handle_object(obj, handler, token, source, base))


def check_bind(host: str, allow_remote: bool, token: str | None, allow_unauthenticated: bool = False) -> None:
    """Refuse a non-local bind unless ``allow_remote``, and a non-local bind without a token unless
    ``allow_unauthenticated`` (``--allow-remote-without-token``: anyone who can reach the port
    can then drive the daemon)."""
    if host in LOCAL_HOSTS:
        return
    if not allow_remote:
        raise ControlError(f"refusing to bind control to {host!r}: only 127.0.0.1 is allowed "
                           "unless allow_remote=True (--allow-remote) and a shared token (--token)")
    if token is None:
        if not allow_unauthenticated:
            raise ControlError(f"refusing to bind control to {host!r} without a token: anyone who can reach it "
                               "could drive the daemon; set --token, or pass --allow-remote-without-token")
        log.warning("control bound to %s without a token: anyone on the network can drive the daemon", host)


def supervise(serve: Callable[[], None], stop: threading.Event, name: str,
              on_restart: Callable[[], None]) -> None:
    """Run a control loop until ``stop`` is set, starting it again if it ever ends early.

    The last line, not the first: each loop catches everything per message; this only keeps a
    loop ended by something unforeseen (a handler calling ``sys.exit()``, say) from silencing
    control for the rest of the show."""
    while not stop.is_set():
        try:
            serve()
        except BaseException as exc:  # noqa: BLE001 - anything that ends the loop
            on_restart()
            log.critical("control %s: loop ended by %r; restarting it", name, exc)
            stop.wait(0.1)
