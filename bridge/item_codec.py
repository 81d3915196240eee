"""Items for the sink process's channel, without pickle: what crosses it cannot run code.

Why: pickle runs whatever a byte string names, so a channel that carries pickles is only as
safe as the guarantee that nobody else can write to it. Here a Packet travels as its own wire
message (``bridge.transport.wire``, float32: the most any sink sends), and a *recipe* (a
``functools.partial`` that the child calls to build a Packet) travels as a wire message of kind
``recipe`` whose header names the function and holds its arguments as JSON, arrays in the
message's array block. The child calls only functions on an allow-list (:func:`recipes`), so a
forged item can at worst name one of them with bad arguments: an error, logged and skipped.

Arguments may be None, bool, int, float (NaN and infinities too), str, lists, tuples, dicts
with string keys, numpy arrays, numpy scalars, :class:`~bridge.phases.PhaseConfig` and other
recipes (the idle replay wraps one); anything else is refused in the parent with a TypeError.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Callable

import numpy as np

from bridge.transport import wire

RECIPE_KIND = "recipe"


def _name(fn: Callable) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def recipes() -> dict[str, Callable]:
    """The allow-list: every function the child may call to build a Packet, by qualified name."""
    from bridge.daemon import replayed  # noqa: PLC0415 (heavy modules; only where recipes are used)
    from bridge.runner import host_step_packet, step_packet, timeline_packet  # noqa: PLC0415

    return {_name(f): f for f in (step_packet, host_step_packet, timeline_packet, replayed)}


def _dataclasses() -> dict[str, type]:
    from bridge.phases import PhaseConfig  # noqa: PLC0415

    return {"PhaseConfig": PhaseConfig}


def encode_item(item: Any) -> bytes:
    """A Packet or an allow-listed recipe as one wire message (raises TypeError/ValueError otherwise)."""
    if isinstance(item, partial):
        arrays: dict[str, np.ndarray] = {}
        head = _recipe(item, arrays, recipes())
        return wire.encode(wire.WirePacket(RECIPE_KIND, head, arrays), "float32")
    if hasattr(item, "kind") and hasattr(item, "header"):
        if item.kind == RECIPE_KIND:
            raise ValueError(f"a Packet of kind {RECIPE_KIND!r} cannot be sent: the name is the recipe's")
        return wire.encode(item, "float32")
    raise TypeError(f"{type(item).__name__} is neither a Packet nor a recipe (functools.partial)")


def decode_item(data: bytes | memoryview) -> Any:
    """The Packet, or the recipe rebuilt as a partial of an allow-listed function."""
    packet = wire.decode(data)
    if packet.kind != RECIPE_KIND:
        return packet
    return _rebuild(packet.header, packet.arrays, recipes())


def _recipe(fn: partial, arrays: dict[str, np.ndarray], allowed: dict[str, Callable]) -> dict[str, Any]:
    name = _name(fn.func)
    if allowed.get(name) is not fn.func:
        raise ValueError(f"{name} is not a recipe the sink process runs; allowed: {', '.join(sorted(allowed))}")
    return {"fn": name, "args": [_enc(a, arrays, allowed) for a in fn.args],
            "kwargs": {str(k): _enc(v, arrays, allowed) for k, v in fn.keywords.items()}}


def _enc(value: Any, arrays: dict[str, np.ndarray], allowed: dict[str, Callable]) -> Any:
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
    if dataclasses.is_dataclass(value) and _dataclasses().get(type(value).__name__) is type(value):
        return {"$c": type(value).__name__,
                "v": {f.name: _enc(getattr(value, f.name), arrays, allowed) for f in dataclasses.fields(value)}}
    raise TypeError(f"a recipe argument of type {type(value).__name__} cannot cross to the sink process")


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
