"""Control requests: parse and validate what artists send, and build the JSON replies.

Pure functions only (no sockets): ``parse_request`` turns a decoded JSON object into a
``ControlRequest`` or raises ``ControlError`` with a message naming what was wrong and what
would be right; ``handle_json`` wraps a whole request/reply round (bytes in, bytes out) so
both servers (OSC, ZeroMQ) share one code path that never raises.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from bridge.protocol import COMMANDS
from bridge.request import GenerateParams

log = logging.getLogger(__name__)

GENERATE_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "focus",
                   "phase_boundaries", "head_weights", "concept", "width", "height")
MAX_REQUEST_BYTES = 256 * 1024
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class ControlError(ValueError):
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


def _str(d: dict, key: str, *, max_len: int = 2000, required: bool = False, default: str | None = "") -> Any:
    v = d.get(key, None)
    if v is None:
        if required:
            raise ControlError(f"'{key}' is required (a non-empty string)")
        return default
    if not isinstance(v, str):
        raise ControlError(f"'{key}' must be a string, got {type(v).__name__}")
    if required and not v.strip():
        raise ControlError(f"'{key}' must not be empty")
    if len(v) > max_len:
        raise ControlError(f"'{key}' is {len(v)} characters; at most {max_len}")
    return v


def _num(d: dict, key: str, lo: float, hi: float, *, integer: bool, default: Any) -> Any:
    v = d.get(key, None)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ControlError(f"'{key}' must be a number in [{lo}, {hi}], got {type(v).__name__}")
    if integer and (isinstance(v, float) and (not math.isfinite(v) or v != int(v))):
        raise ControlError(f"'{key}' must be an integer in [{lo}, {hi}], got {v!r}")
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ControlError(f"'{key}' = {v!r} is out of range; expected {lo} <= {key} <= {hi}")
    return int(v) if integer else float(v)


def parse_generate(d: Any) -> GenerateParams:
    """Validate one generation's parameters (a dict) or raise ControlError."""
    if not isinstance(d, dict):
        raise ControlError(f"generation parameters must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(GENERATE_FIELDS) - {"cmd", "id", "token"})
    if unknown:
        raise ControlError(f"unknown field(s) {unknown}; allowed: {', '.join(GENERATE_FIELDS)}")
    focus = d.get("focus") or []
    if isinstance(focus, str):
        focus = [focus]
    if not isinstance(focus, list) or len(focus) > 77 or not all(isinstance(w, str) and 0 < len(w) <= 100 for w in focus):
        raise ControlError("'focus' must be a list of at most 77 words (non-empty strings of <= 100 characters)")
    pb = d.get("phase_boundaries")
    if pb is not None:
        if (not isinstance(pb, list) or len(pb) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in pb)
                or not 0 < pb[0] < pb[1] < 1):
            raise ControlError(f"'phase_boundaries' must be [a, b] with 0 < a < b < 1, got {pb!r}")
        pb = (float(pb[0]), float(pb[1]))
    hw = d.get("head_weights")
    if hw is not None:
        if (not isinstance(hw, list) or not 0 < len(hw) <= 4096
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in hw)):
            raise ControlError("'head_weights' must be a list of 1..4096 finite numbers >= 0")
        hw = [float(x) for x in hw]
    concept = _str(d, "concept", max_len=100, default=None)
    if hw is not None and concept is not None:
        raise ControlError("give either 'head_weights' or 'concept', not both")
    size = {}
    for key in ("width", "height"):
        v = _num(d, key, 64, 4096, integer=True, default=None)
        if v is not None and v % 8:
            raise ControlError(f"'{key}' = {v} must be a multiple of 8")
        size[key] = v
    return GenerateParams(
        prompt=_str(d, "prompt", required=True),
        negative_prompt=_str(d, "negative_prompt"),
        seed=_num(d, "seed", 0, 2**32 - 1, integer=True, default=None),
        steps=_num(d, "steps", 1, 500, integer=True, default=30),
        guidance=_num(d, "guidance", 0.0, 50.0, integer=False, default=7.5),
        focus=list(focus), phase_boundaries=pb, head_weights=hw, concept=concept, **size)


def parse_request(obj: Any) -> ControlRequest:
    """Validate a decoded JSON request (see docs/PROTOCOL.md, "Control") or raise ControlError."""
    if not isinstance(obj, dict):
        raise ControlError(f"a request must be a JSON object, got {type(obj).__name__}")
    cmd = obj.get("cmd")
    if cmd not in COMMANDS:
        raise ControlError(f"'cmd' must be one of {', '.join(COMMANDS)}; got {cmd!r}")
    rid = obj.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int)) or len(str(rid)) > 100):
        raise ControlError("'id' must be a string or integer (at most 100 characters)")
    if cmd in ("generate", "start"):
        return ControlRequest("generate", rid, params=parse_generate(obj))
    extra = sorted(set(obj) - {"cmd", "id", "token", "items", "loop"})
    if extra:
        raise ControlError(f"'{cmd}' takes no field(s) {extra}")
    if cmd == "playlist":
        items = obj.get("items")
        if not isinstance(items, list) or not 1 <= len(items) <= 1000:
            raise ControlError("'playlist' needs 'items': a list of 1..1000 generation objects")
        parsed = []
        for i, it in enumerate(items):
            try:
                parsed.append(parse_generate(it))
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
    """Raise ControlError unless ``obj['token']`` equals the shared token (when one is set)."""
    if token is None:
        return
    got = obj.get("token") if isinstance(obj, dict) else None
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), token.encode()):
        raise ControlError("missing or wrong 'token'")


def handle_object(obj: Any, handler: Handler, token: str | None = None, source: str = "") -> dict[str, Any]:
    """Validate ``obj``, call ``handler``; return the reply dict. Never raises."""
    rid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) else None
    try:
        check_token(obj, token)
        req = parse_request(obj)
    except ControlError as exc:
        log.warning("control%s: rejected request: %s", f" from {source}" if source else "", exc)
        return reply_error(str(exc), rid)
    try:
        result = handler(req)
        json.dumps(result)  # the reply must be JSON
    except Exception as exc:  # the handler's failure is the client's answer, not our crash
        log.error("control: handler failed on %s: %r", req.cmd, exc)
        return reply_error(f"{req.cmd} failed: {exc}", req.id)
    return reply_ok(req, result)


def handle_json(data: bytes, handler: Handler, token: str | None = None, source: str = "") -> bytes:
    """One request/reply round on raw bytes (UTF-8 JSON in, UTF-8 JSON out). Never raises."""
    try:
        if len(data) > MAX_REQUEST_BYTES:
            raise ControlError(f"request is {len(data)} bytes; at most {MAX_REQUEST_BYTES}")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ControlError(f"request is not UTF-8 JSON: {exc}") from None
    except ControlError as exc:
        log.warning("control%s: rejected request: %s", f" from {source}" if source else "", exc)
        return json.dumps(reply_error(str(exc))).encode()
    return json.dumps(handle_object(obj, handler, token, source), default=str).encode()


def check_bind(host: str, allow_remote: bool, token: str | None) -> None:
    """Refuse a non-local bind unless ``allow_remote``; warn when one has no token."""
    if host in LOCAL_HOSTS:
        return
    if not allow_remote:
        raise ControlError(f"refusing to bind control to {host!r}: only 127.0.0.1 is allowed "
                           "unless allow_remote=True (and then set a shared token)")
    if token is None:
        log.warning("control bound to %s without a token: anyone on the network can drive the daemon", host)
