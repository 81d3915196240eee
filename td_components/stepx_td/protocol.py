"""The StepX protocol: every fact a producer and a receiver must agree on, in one module.

It holds the packet kinds and which of them latest-wins may drop, the default ports, the phase
names, the control command names, the focus-word rule, the one :class:`Packet` class, and the
wire format v1 that carries a Packet as one self-describing byte string.

This module imports nothing but the standard library and numpy: TouchDesigner's receiver uses a
byte-identical copy (``td_components/stepx_td/protocol.py``; a test checks it). Edit this file,
then copy it there.

Why the wire has this shape: a single-part message lets a ZeroMQ subscriber use
``ZMQ_CONFLATE`` (libzmq refuses CONFLATE with multipart messages); the leading topic makes ZMQ
``SUBSCRIBE`` prefix filtering work; a JSON header plus raw little-endian C-order arrays can be
read with numpy alone, in any language, and nothing is pickled.

Layout (all integers little-endian; see docs/PROTOCOL.md for the full spec)::

    topic      ASCII, e.g. b"stepx/step", then one 0x00 byte
    pad        0x00 bytes until the preamble starts at a multiple of 8
    preamble   16 bytes: magic b"STPX", u16 version, u16 flags (0),
               u32 header_len, u32 data_len
    header     header_len bytes of UTF-8 JSON
    pad        0x00 bytes until the data block starts at a multiple of 8
    data       data_len bytes; each array at header["arrays"][i]["offset"] (8-aligned)
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

# --- packets ---------------------------------------------------------------------------------
#: Packet kinds, in the order a run produces them.
KINDS = ("run", "step", "image", "timeline", "objects", "end", "status")
#: Kinds that latest-wins (a slow sink, a conflating receiver) must never drop: each is once per run.
KEEP_KINDS = ("run", "timeline", "objects", "end")
#: Kinds where only the newest matters to a live receiver.
LATEST_KINDS = ("step", "image", "status")

# --- ports and endpoints ---------------------------------------------------------------------
#: The daemon publishes packets here (ZeroMQ PUB); ``stepx preview`` and TD subscribe.
DEFAULT_HOST = "127.0.0.1"
DATA_PORT = 5560
#: The daemon's ZeroMQ control socket.
CONTROL_PORT = 5561
#: Where the OSC sink sends (a TouchDesigner OSC In CHOP listens).
OSC_OUT_PORT = 7000
#: The daemon's OSC control port.
OSC_CONTROL_PORT = 7001
DEFAULT_DATA_ENDPOINT = f"tcp://{DEFAULT_HOST}:{DATA_PORT}"
DEFAULT_CONTROL_ENDPOINT = f"tcp://{DEFAULT_HOST}:{CONTROL_PORT}"

# --- names -----------------------------------------------------------------------------------
#: The three morph phases, in order (a step packet's ``phase`` is an index into this).
PHASE_NAMES = ("noise", "structure", "detail")
#: Control commands (``start`` is an alias of ``generate``).
COMMANDS = ("generate", "start", "cancel", "playlist", "status", "ping")
#: Focus spellings that mean the global view rather than a word.
GLOBAL_FOCUS = ("global", "*", "")

#: The daemon's states, one table for both transports: the ZeroMQ ``status`` packet carries the
#: name (``state``) and the code (``state_code``), the OSC heartbeat ``/stepx/status`` the code.
#: Code 1 is reserved (it once meant "loading"; the daemon binds its sockets after the model loads).
STATES: dict[str, int] = {
    "idle": 0,        # nothing to generate and nothing to replay
    "generating": 2,  # a run is denoising
    "error": 3,       # the last run failed (``message`` says why); stays until the next request
    "replaying": 4,   # idle, looping the last finished run (packets carry ``"replay": true``)
}


#: The recorder's states, the ``state`` of a status packet's ``recording`` object: ``off`` (no
#: ``--record``), ``recording``, ``failed`` (it stopped: disk full, file removed; ``error`` says why,
#: the show goes on unrecorded).
RECORDING_STATES = ("off", "recording", "failed")


def state_code(state: str) -> int:
    """The code of a daemon state; an unknown name is a programming error, not "error"."""
    try:
        return STATES[state]
    except KeyError:
        raise ValueError(f"unknown daemon state {state!r}; known: {', '.join(STATES)}") from None


def word_index(words: Sequence[str], word: str) -> int | None:
    """The focus-word rule, the same everywhere (record, serve, preview, TouchDesigner): the
    index of ``word`` in ``words``, case-insensitive and trimmed; ``"a#2"`` is the second "a"
    (``#1`` the first); None when the prompt has no such word."""
    text, _, nth = word.strip().lower().partition("#")
    want = int(nth) if nth.isdigit() and int(nth) > 0 else 1 if not nth else 0
    seen = 0
    for i, w in enumerate(words):
        if w.lower() == text:
            seen += 1
            if seen == want:
                return i
    return None


@dataclass
class Packet:
    """One message: ``kind`` (see KINDS), a JSON-able ``header`` and named arrays.

    Arrays keep their own dtype and shape; maps are ``[words, H, W]`` with row 0 = top of
    the image. Nothing is pickled on the wire: see :func:`encode`.
    """

    kind: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown packet kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def run_id(self) -> str | None:
        return self.header.get("run_id")

    @property
    def step(self) -> int | None:
        return self.header.get("step")


class PacketLike(Protocol):
    """What :func:`encode` reads: a :class:`Packet`, or any object with these three attributes
    (read-only here, so a Packet's plain fields match; a None header or arrays is empty)."""

    @property
    def kind(self) -> str: ...

    @property
    def header(self) -> dict[str, Any] | None: ...

    @property
    def arrays(self) -> Mapping[str, np.ndarray] | None: ...


# --- wire format -----------------------------------------------------------------------------
MAGIC = b"STPX"
#: The wire version this module writes; it reads every version from 1 up to this one.
VERSION = 1
TOPIC_ROOT = "stepx/"
PREAMBLE = struct.Struct("<4sHHII")  # magic, version, flags, header_len, data_len
ENCODINGS = ("float32", "float16", "uint8")
#: dtypes allowed on the wire (numpy ``dtype.str`` spelling, little-endian or byte-sized).
WIRE_DTYPES = ("<f4", "<f2", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "|b1", "<f8")
MAX_HEADER = 16 * 1024 * 1024


class WireError(ValueError):
    """The bytes are not a valid StepX message (truncated, corrupt, or unsupported)."""


def topic_for(kind: str) -> bytes:
    """The ZMQ topic of a packet kind, e.g. ``b"stepx/step"``."""
    return (TOPIC_ROOT + kind).encode("ascii")


_ZEROS = bytes(8)  # padding: at most 7 bytes at a time


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _jsonable(value: Any) -> Any:
    """Strict-JSON copy of a header value: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise WireError(f"header value {value!r} of type {type(value).__name__} is not JSON-able")


def _header_json(head: dict[str, Any]) -> bytes:
    """Strict JSON of a header. Headers are mostly plain Python already: the C encoder takes
    them as they are, and only a header it refuses (a numpy value, a NaN) is walked by
    :func:`_jsonable` first (the walk is a few hundred Python calls per step packet)."""
    try:
        text = json.dumps(head, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(_jsonable(head), separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _half(arr: np.ndarray) -> np.ndarray:
    """``arr.astype("<f2")`` (round to nearest even, as IEEE and numpy do), by torch's vectorised
    cast where the process has already loaded torch (the producer: a step packet's float16
    encoding took 1.7 ms with numpy's conversion, 0.4 ms with torch's, in ``bench/sink_cpu.py``).
    Never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is None or arr.dtype != np.float32 or arr.dtype.byteorder == ">" or not arr.flags.writeable or arr.size < 1024:
        return arr.astype("<f2", copy=False)
    out = np.empty(arr.shape, dtype="<f2")
    try:
        torch.from_numpy(out).copy_(torch.from_numpy(arr))
    except ValueError:  # strides torch cannot view (negative ones)
        return arr.astype("<f2")
    return out


def _to_wire_array(arr: np.ndarray, encoding: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Convert one array per the encoding; return (little-endian C-order array, extra header)."""
    arr = np.asarray(arr)
    extra: dict[str, Any] = {}
    if arr.dtype.kind == "f":
        if encoding == "float32":
            arr = arr.astype("<f4", copy=False)
        elif encoding == "float16":
            arr = _half(arr)
        else:  # uint8: value = byte / 255, clipped to [0, 1]
            arr = np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype("|u1")
            extra = {"quantized": "unorm8", "scale": 1.0 / 255.0}
    else:
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    if arr.dtype.str not in WIRE_DTYPES:
        raise WireError(f"array dtype {arr.dtype} cannot go on the wire; allowed: {', '.join(WIRE_DTYPES)}")
    return np.ascontiguousarray(arr), extra


def encode(packet: PacketLike, encoding: str = "float32") -> bytes:
    """Encode a Packet (anything with ``kind``, ``header``, ``arrays``: :class:`PacketLike`) as one v1 message.

    ``encoding`` applies to float arrays only: ``float32``, ``float16``, or ``uint8``
    (``round(clip(x, 0, 1) * 255)``). Integer/bool arrays (e.g. a uint8 image) go unchanged.
    """
    if encoding not in ENCODINGS:
        raise WireError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    kind = str(packet.kind)
    if not kind or not kind.isascii() or "\x00" in kind:
        raise WireError(f"packet kind {kind!r} must be non-empty ASCII")
    h = packet.header or {}
    specs: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    offset = 0
    for name, arr in (packet.arrays or {}).items():
        wire_arr, extra = _to_wire_array(arr, encoding)
        pad = _align8(offset) - offset
        if pad:
            chunks.append(_ZEROS[:pad])
            offset += pad
        specs.append({"name": str(name), "dtype": wire_arr.dtype.str, "shape": list(wire_arr.shape),
                      "offset": offset, "nbytes": wire_arr.nbytes, **extra})
        chunks.append(wire_arr.data.cast("B") if wire_arr.nbytes else b"")  # .data: the array as a memoryview
        offset += wire_arr.nbytes
    head = {
        "kind": kind, "version": VERSION, "encoding": encoding,
        "run_id": h.get("run_id"), "step": h.get("step"), "total_steps": h.get("total_steps"),
        "phase": h.get("phase"), "words": h.get("words"),
        "header": h, "arrays": specs,
    }
    hjson = _header_json(head)
    topic = topic_for(kind) + b"\x00"
    pre_at = _align8(len(topic))
    data_at = _align8(pre_at + PREAMBLE.size + len(hjson))
    lead = b"".join((topic, _ZEROS[:pre_at - len(topic)], PREAMBLE.pack(MAGIC, VERSION, 0, len(hjson), offset), hjson))
    # one copy of the arrays' bytes into the message (joining buffers sizes the result first)
    return b"".join((lead, _ZEROS[:data_at - len(lead)], *chunks))


def split(data: bytes | bytearray | memoryview) -> tuple[str, dict[str, Any], memoryview]:
    """Parse topic, preamble and header; return ``(topic, header, data_block)`` without copying."""
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    n = len(buf)
    end = bytes(buf[:256]).find(b"\x00")
    if end < 0:
        raise WireError("no topic terminator (0x00) in the first 256 bytes: not a StepX message")
    topic = bytes(buf[:end]).decode("ascii", errors="replace")
    pre_at = _align8(end + 1)
    if n < pre_at + PREAMBLE.size:
        raise WireError(f"truncated: {n} bytes, preamble needs {pre_at + PREAMBLE.size}")
    magic, version, _flags, hlen, dlen = PREAMBLE.unpack_from(buf, pre_at)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r} at byte {pre_at}; expected {MAGIC!r}")
    if not 1 <= version <= VERSION:
        raise WireError(f"wire version {version} not supported; this decoder reads versions 1 to {VERSION}")
    if hlen > MAX_HEADER:
        raise WireError(f"header length {hlen} exceeds the {MAX_HEADER}-byte limit")
    h_at = pre_at + PREAMBLE.size
    data_at = _align8(h_at + hlen)
    if n < data_at + dlen:
        raise WireError(f"truncated: {n} bytes, header says {data_at + dlen}")
    try:
        header = json.loads(bytes(buf[h_at:h_at + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"corrupt JSON header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise WireError("header must be a JSON object with a string 'kind'")
    return topic, header, buf[data_at:data_at + dlen]


def decode(data: bytes | bytearray | memoryview, dequantize: bool = False) -> Packet:
    """Decode one message (any version this module knows) into a Packet.

    Arrays are read-only numpy views on ``data`` (no copy). With ``dequantize=True``, arrays
    sent with the uint8 encoding come back as float32 in [0, 1].
    """
    _topic, head, block = split(data)
    arrays: dict[str, np.ndarray] = {}
    specs = head.get("arrays", [])
    if not isinstance(specs, list):
        raise WireError("header 'arrays' must be a list")
    for spec in specs:
        try:
            name, dtype = str(spec["name"]), np.dtype(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            off = int(spec["offset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"bad array entry {spec!r}: {exc}") from None
        if dtype.str not in WIRE_DTYPES or any(s < 0 for s in shape):
            raise WireError(f"array {name!r}: unsupported dtype {spec['dtype']!r} or shape {shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if off < 0 or off % 8 or off + nbytes > len(block):
            raise WireError(f"array {name!r}: bytes {off}..{off + nbytes} outside the {len(block)}-byte data block")
        arr = np.frombuffer(block, dtype=dtype, count=nbytes // dtype.itemsize, offset=off).reshape(shape)
        if dequantize and spec.get("quantized") == "unorm8":
            arr = arr.astype(np.float32) * np.float32(spec.get("scale", 1 / 255))
        arrays[name] = arr
    header = head.get("header")
    if not isinstance(header, dict):
        raise WireError("header 'header' must be a JSON object")
    if head["kind"] not in KINDS:
        raise WireError(f"unknown packet kind {head['kind']!r}; this decoder knows {', '.join(KINDS)}")
    return Packet(head["kind"], header, arrays)
