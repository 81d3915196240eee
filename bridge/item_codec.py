"""Items for the sink process's channel, without pickle: what crosses it cannot run code.

Why: pickle runs whatever a byte string names, so a channel that carries pickles is only as
safe as the guarantee that nobody else can write to it. Here an item is one JSON frame and one
frame per array (its raw bytes, sent without a copy): a Packet as its kind, header and arrays,
a *recipe* (a ``functools.partial`` that the child calls to build a Packet) as the function's
name and its arguments. Arrays keep their dtype (from numpy's dtype list the wire allows). The child calls only functions on an allow-list (:func:`recipes`), so a
forged item can at worst name one of them with bad arguments: an error, logged and skipped.
The step recipe, sent at every step of every run, has a fixed binary header instead (its numbers
packed, its run-constant arguments as JSON encoded and parsed once per run): its encoding is the
model process's share of publishing, on a thread beside the one that launches the kernels.

Arguments may be None, bool, int, float (NaN and infinities too), str, lists, tuples, dicts
with string keys, numpy arrays, numpy scalars, :class:`~bridge.phases.PhaseConfig` and other
recipes (the idle replay wraps one); anything else is refused in the parent with a TypeError.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import struct
from functools import partial
from typing import Any, Callable

import numpy as np

from bridge import protocol as wire

def _name(fn: Callable) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


@functools.cache
def recipes() -> dict[str, Callable]:
    """The allow-list: every function the child may call to build a Packet, by qualified name
    (built once: it is asked for at every item, on the packet thread of the model's process)."""
    from bridge.daemon import replayed  # noqa: PLC0415 (heavy modules; only where recipes are used)
    from bridge.stream.recipes import host_step_packet, kept_item, prepare_run, step_packet, timeline_packet  # noqa: PLC0415

    return {_name(f): f for f in (step_packet, host_step_packet, prepare_run, timeline_packet, kept_item, replayed)}


@functools.cache
def _dataclasses() -> dict[str, type]:
    """The settings classes an argument may be, by name: frozen dataclasses only (hashable, so
    :func:`_enc_config` caches each value's encoding)."""
    from bridge.phases import PhaseConfig  # noqa: PLC0415

    return {"PhaseConfig": PhaseConfig}


#: The step recipe (``host_step_packet``: every step of every run) in a fixed binary header instead
#: of JSON: magic, step, total steps, timestep, step end (NaN for None). Its run-constant arguments
#: (run id, words, settings, focus, the maps' dtype and shape) go as a JSON frame encoded once per
#: run in the model's process and parsed once per run in the child; the maps as their raw bytes.
#: Frames: ``[STEP_HEAD, static JSON, maps]``. Encoding it is the packet thread's work in the
#: model's process at every step, beside the thread that launches the kernels.
_STEP_HEAD = struct.Struct("<4sIIdd")
_STEP_MAGIC = b"HSP1"
_STEP_FN = "bridge.stream.recipes:host_step_packet"


#: One channel message per item: the frame count (u32), each frame's length (u64), then the frames'
#: bytes. pyzmq lets the GIL go for every frame it sends; on the packet thread each of those is
#: one more hand-over of the GIL with the thread that launches the kernels, so an item goes as one.
_COUNT = struct.Struct("<I")
MAX_FRAMES = 1024  # far more than any item has (a Packet: a JSON frame and one per array)


def join_frames(frames: list[Any]) -> bytes:
    """``frames`` (bytes-like) as one message (:data:`_COUNT`)."""
    lengths = [memoryview(f).nbytes for f in frames]
    return b"".join([_COUNT.pack(len(frames)), struct.pack(f"<{len(frames)}Q", *lengths), *frames])


def split_frames(message: Any) -> list[memoryview]:
    """The frames of :func:`join_frames`' message, as views of it (no copy); ValueError for a
    message that is not one (a count or a length that runs past its end, bytes left over)."""
    view = memoryview(message).cast("B")
    if len(view) < _COUNT.size:
        raise ValueError(f"a {len(view)}-byte message has no frame count")
    (count,) = _COUNT.unpack_from(view)
    start = _COUNT.size + 8 * count
    if count > MAX_FRAMES or start > len(view):
        raise ValueError(f"a message of {len(view)} bytes cannot hold {count} frames")
    frames: list[memoryview] = []
    at = start
    for length in struct.unpack_from(f"<{count}Q", view, _COUNT.size):
        if length > len(view) - at:
            raise ValueError(f"frame {len(frames)} runs past the end of the message")
        frames.append(view[at : at + length])
        at += length
    if at != len(view):
        raise ValueError(f"{len(view) - at} bytes after the last frame")
    return frames


def encode_item(item: Any) -> list[Any]:
    """A Packet or an allow-listed recipe as message frames: one JSON frame, then each array's
    bytes as its own frame (sent without a copy, as pickle's out-of-band buffers were); a step
    recipe as a fixed header (:data:`_STEP_HEAD`). Raises TypeError/ValueError for anything else."""
    if isinstance(item, partial) and (frames := _encode_step(item)) is not None:
        return frames
    arrays: dict[str, np.ndarray] = {}
    if isinstance(item, partial):
        head: dict[str, Any] = {"recipe": _recipe(item, arrays, recipes())}
    elif hasattr(item, "kind") and hasattr(item, "header"):
        head = {"packet": {"kind": str(item.kind), "header": _enc(dict(item.header or {}), arrays, {}),
                           "arrays": {k: _enc(np.asarray(v), arrays, {}) for k, v in (item.arrays or {}).items()}}}
    else:
        raise TypeError(f"{type(item).__name__} is neither a Packet nor a recipe (functools.partial)")
    blocks = [np.ascontiguousarray(a) for a in arrays.values()]
    head["arrays"] = [{"dtype": b.dtype.str, "shape": list(b.shape)} for b in blocks]
    return [json.dumps(head, separators=(",", ":"), allow_nan=False).encode(), *(b.data.cast("B") for b in blocks)]


def _encode_step(item: partial) -> list[Any] | None:
    """The fixed-header frames of a ``host_step_packet`` recipe of plain arguments, else None."""
    if item.keywords or len(item.args) not in (8, 9) or recipes().get(_STEP_FN) is not item.func:
        return None
    run_id, words, cfg, maps, step, total, focus, timestep, ended = item.args if len(item.args) == 9 else (*item.args, None)
    if not (type(run_id) is str and type(words) is list and type(focus) is list and type(maps) is np.ndarray
            and type(step) is int and type(total) is int and 0 <= step < 2**32 and 0 <= total < 2**32
            and type(timestep) is float and (ended is None or type(ended) is float and not math.isnan(ended))
            and _dataclasses().get(type(cfg).__name__) is type(cfg) and maps.dtype.str in wire.WIRE_DTYPES):
        return None
    try:
        static = _step_static(run_id, tuple(words), cfg, tuple(focus), maps.dtype.str, maps.shape)
    except TypeError:  # a word or focus entry that is not a plain value (unhashable): the general path says why
        return None
    head = _STEP_HEAD.pack(_STEP_MAGIC, step, total, timestep, math.nan if ended is None else ended)
    return [head, static, np.ascontiguousarray(maps).data.cast("B")]


@functools.lru_cache(maxsize=8)
def _step_static(run_id: str, words: tuple, cfg: Any, focus: tuple, dtype: str, shape: tuple) -> bytes:
    """The run-constant part of a step recipe as JSON (encoded once per run: cached)."""
    if not all(type(w) is str for w in words) or not all(type(f) is int for f in focus):
        raise TypeError("words must be strings and focus ints")
    return json.dumps({"fn": _STEP_FN, "run_id": run_id, "words": list(words), "cfg": _enc_config(cfg), "focus": list(focus),
                       "dtype": dtype, "shape": list(shape)}, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=8)
def _step_static_decoded(static: bytes) -> tuple:
    """``(run_id, words, cfg, focus, dtype, shape)`` from the JSON of :func:`_step_static` (parsed
    once per run: cached; the caller copies the lists)."""
    body = json.loads(static)
    if not isinstance(body, dict) or body.get("fn") != _STEP_FN:
        raise ValueError(f"step recipe {body.get('fn') if isinstance(body, dict) else body!r:.60} is not the step recipe")
    dtype, shape = np.dtype(body["dtype"]), tuple(int(n) for n in body["shape"])
    if dtype.str not in wire.WIRE_DTYPES or any(n < 0 for n in shape):
        raise ValueError(f"maps of dtype {dtype.str} / shape {shape} not allowed")
    return str(body["run_id"]), list(body["words"]), _dec(body["cfg"], {}, {}), list(body["focus"]), dtype, shape


def _decode_step(frames: list[Any]) -> partial:
    if len(frames) != 3 or len(frames[0]) != _STEP_HEAD.size:
        raise ValueError(f"a step recipe is 3 frames, a {_STEP_HEAD.size}-byte header first")
    _magic, step, total, timestep, ended = _STEP_HEAD.unpack(bytes(frames[0]))
    run_id, words, cfg, focus, dtype, shape = _step_static_decoded(bytes(frames[1]))
    maps = np.frombuffer(frames[2], dtype=dtype).reshape(shape)
    return partial(recipes()[_STEP_FN], run_id, list(words), cfg, maps, step, total, list(focus), timestep,
                   None if math.isnan(ended) else ended)


#: A staged step (:class:`bridge.stream.ring.StagedStep`: its maps are landing in a ring slot, not in
#: the message): magic, ring id, slot, sequence number, byte count, step, total steps, timestep (NaN:
#: the payload's last value), step end (NaN for None). Frames: ``[STAGED_HEAD, static JSON]``, the
#: static JSON as the step recipe's (:func:`_step_static`, float32 maps). Sent by the model's thread.
_STAGED_HEAD = struct.Struct("<4sIIQQIIdd")
_STAGED_MAGIC = b"SST1"


#: A staged preview image (:class:`bridge.stream.ring.StagedImage`): magic, ring id, slot, sequence
#: number, byte count, step, height, width, channels. Frames: ``[STAGED_IMAGE_HEAD, run id (UTF-8)]``.
_STAGED_IMAGE_HEAD = struct.Struct("<4sIIQQIIII")
_STAGED_IMAGE_MAGIC = b"SIM1"


def encode_staged(staged: Any) -> list[Any]:
    """A :class:`~bridge.stream.ring.StagedStep` or ``StagedImage`` as message frames (a fixed
    header and the run's cached JSON or its id: a few microseconds on the model's thread)."""
    from bridge.stream.ring import StagedImage  # noqa: PLC0415 (torch: only where staged items are used)

    s = staged
    if isinstance(s, StagedImage):
        h, w, c = s.shape
        return [_STAGED_IMAGE_HEAD.pack(_STAGED_IMAGE_MAGIC, s.slot.ring, s.slot.index, s.slot.seq, s.nbytes, s.step, h, w, c),
                s.run_id.encode()]
    if len(s.shape) != 3 or not 0 <= s.step < 2**32 or not 0 <= s.total < 2**32:
        raise ValueError(f"a staged step of shape {s.shape}, step {s.step} of {s.total}")
    static = _step_static(s.run_id, tuple(s.words), s.cfg, tuple(s.focus), "<f4", tuple(s.shape))
    head = _STAGED_HEAD.pack(_STAGED_MAGIC, s.slot.ring, s.slot.index, s.slot.seq, s.nbytes, s.step, s.total,
                             math.nan if s.timestep is None else s.timestep, math.nan if s.ended is None else s.ended)
    return [head, static]


def decode_staged(frames: list[Any]) -> Any:
    """The :class:`~bridge.stream.ring.StagedStep` or ``StagedImage`` of :func:`encode_staged`'s
    frames; ValueError for anything else (a wrong size, a shape its byte count cannot hold)."""
    from bridge.stream.ring import Slot, StagedImage, StagedStep  # noqa: PLC0415 (torch: the child has it already)

    try:
        if len(frames) == 2 and len(frames[0]) == _STAGED_IMAGE_HEAD.size and bytes(frames[0][:4]) == _STAGED_IMAGE_MAGIC:
            _, ring, index, seq, nbytes, step, h, w, c = _STAGED_IMAGE_HEAD.unpack(bytes(frames[0]))
            if c not in (1, 3, 4) or nbytes != h * w * c:
                raise ValueError(f"{nbytes} bytes for a uint8 image of {h}×{w}×{c}")
            return StagedImage(Slot(ring, index, seq), nbytes, bytes(frames[1]).decode(), step, (h, w, c))
        if len(frames) != 2 or len(frames[0]) != _STAGED_HEAD.size:
            raise ValueError(f"a staged step is 2 frames, a {_STAGED_HEAD.size}-byte header first")
        magic, ring, index, seq, nbytes, step, total, timestep, ended = _STAGED_HEAD.unpack(bytes(frames[0]))
        if magic != _STAGED_MAGIC:
            raise ValueError(f"magic {magic!r}")
        run_id, words, cfg, focus, dtype, shape = _step_static_decoded(bytes(frames[1]))
        need = 4 * int(np.prod(shape, dtype=np.int64)) + (4 if math.isnan(timestep) else 0)
        if dtype != np.float32 or len(shape) != 3 or nbytes != need:
            raise ValueError(f"{nbytes} bytes for float32 maps of shape {shape} (need {need})")
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise ValueError(f"not a staged step: {exc}") from None
    return StagedStep(Slot(ring, index, seq), nbytes, run_id, list(words), cfg, shape, step, total, list(focus),
                      None if math.isnan(timestep) else timestep, None if math.isnan(ended) else ended)


def decode_item(frames: list[Any]) -> Any:
    """The Packet, or the recipe rebuilt as a partial of an allow-listed function, from the
    frames of :func:`encode_item` (bytes or buffers)."""
    if bytes(frames[0][:4]) == _STEP_MAGIC:
        try:
            return _decode_step(frames)
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise ValueError(f"not a sink-process item: {exc}") from None
    try:
        head = json.loads(bytes(frames[0]))
        specs = head["arrays"]
        if not isinstance(specs, list) or len(specs) != len(frames) - 1:
            raise ValueError(f"{len(frames) - 1} array frames for {len(specs) if isinstance(specs, list) else '?'} arrays")
        arrays = {}
        for i, (spec, buf) in enumerate(zip(specs, frames[1:])):
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(n) for n in spec["shape"])
            if dtype.str not in wire.WIRE_DTYPES or any(n < 0 for n in shape):
                raise ValueError(f"array {i}: dtype {dtype.str} / shape {shape} not allowed")
            arrays[f"a{i}"] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a sink-process item: {exc}") from None
    if "recipe" in head:
        return _rebuild(head["recipe"], arrays, recipes())
    body = head["packet"]
    return wire.Packet(str(body["kind"]), _dec(body["header"], arrays, {}), {k: _dec(v, arrays, {}) for k, v in body["arrays"].items()})


def _recipe(fn: partial, arrays: dict[str, np.ndarray], allowed: dict[str, Callable]) -> dict[str, Any]:
    name = _name(fn.func)
    if allowed.get(name) is not fn.func:
        raise ValueError(f"{name} is not a recipe the sink process runs; allowed: {', '.join(sorted(allowed))}")
    return {"fn": name, "args": [_enc(a, arrays, allowed) for a in fn.args],
            "kwargs": {str(k): _enc(v, arrays, allowed) for k, v in fn.keywords.items()}}


_PLAIN = (str, int, bool, type(None))


def _enc(value: Any, arrays: dict[str, np.ndarray], allowed: dict[str, Callable]) -> Any:
    kind = type(value)
    if kind in _PLAIN or kind is float and math.isfinite(value):  # the common case first: this runs per step
        return value
    if kind is list and all(type(v) in _PLAIN for v in value):
        return value
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"$a": key}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"$f": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_enc(v, arrays, allowed) for v in value]
    if isinstance(value, tuple):
        return {"$t": [_enc(v, arrays, allowed) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$d": {k: _enc(v, arrays, allowed) for k, v in value.items()}}
    if isinstance(value, partial):
        return {"$r": _recipe(value, arrays, allowed)}
    if _dataclasses().get(type(value).__name__) is type(value):  # (a class of the allow-list: a dataclass)
        return _enc_config(value)  # frozen settings: encoded once per value
    raise TypeError(f"a recipe argument of type {type(value).__name__} cannot cross to the sink process")


@functools.lru_cache(maxsize=32)
def _enc_config(value: Any) -> dict[str, Any]:
    return {"$c": type(value).__name__,
            "v": {f.name: _enc(getattr(value, f.name), {}, {}) for f in dataclasses.fields(value)}}


def _rebuild(head: dict[str, Any], arrays: dict[str, np.ndarray], allowed: dict[str, Callable]) -> partial:
    fn = allowed.get(head.get("fn"))  # type: ignore[arg-type]
    if fn is None:
        raise ValueError(f"recipe {head.get('fn')!r} is not on the allow-list")
    args, kwargs = head.get("args"), head.get("kwargs")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("a recipe needs 'args' (a list) and 'kwargs' (an object)")
    return partial(fn, *(_dec(a, arrays, allowed) for a in args), **{k: _dec(v, arrays, allowed) for k, v in kwargs.items()})


def _dec(value: Any, arrays: dict[str, np.ndarray], allowed: dict[str, Callable]) -> Any:
    if isinstance(value, list):
        return [_dec(v, arrays, allowed) for v in value]
    if not isinstance(value, dict):
        return value
    if "$a" in value:
        return arrays[value["$a"]]
    if "$f" in value:
        return float(value["$f"])
    if "$t" in value:
        return tuple(_dec(v, arrays, allowed) for v in value["$t"])
    if "$d" in value:
        return {k: _dec(v, arrays, allowed) for k, v in value["$d"].items()}
    if "$r" in value:
        return _rebuild(value["$r"], arrays, allowed)
    if "$c" in value:
        cls = _dataclasses().get(value["$c"])
        if cls is None:
            raise ValueError(f"unknown argument type {value['$c']!r}")
        return cls(**{k: _dec(v, arrays, allowed) for k, v in value["v"].items()})
    raise ValueError(f"unreadable recipe argument {value!r:.60}")
