"""OSC 1.0 bytes: messages, timetags and size-limited bundles (pure functions, no sockets).

Why hand-written bundles: we must guarantee that no UDP datagram exceeds ``MAX_DATAGRAM``
(1,400 bytes, under a typical 1,500-byte MTU), so bundles are packed greedily from
already-encoded messages and split where the next one would not fit.
"""

from __future__ import annotations

import struct
import time
from typing import Iterable, Sequence

MAX_DATAGRAM = 1400
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_BUNDLE_HEAD = b"#bundle\x00"


def _pad(b: bytes) -> bytes:
    return b + b"\x00" * (4 - len(b) % 4)


def osc_string(s: str) -> bytes:
    """OSC string: UTF-8, NUL-terminated, padded to a multiple of 4."""
    return _pad(s.encode("utf-8"))


def message(address: str, *args: int | float | str | bool) -> bytes:
    """Encode one OSC message. int -> 'i' (int32), float -> 'f' (float32), str -> 's'."""
    tags, payload = ",", b""
    for a in args:
        if isinstance(a, bool):
            tags += "i"
            payload += struct.pack(">i", int(a))
        elif isinstance(a, int):
            tags += "i"
            payload += struct.pack(">i", max(-(2**31), min(2**31 - 1, a)))
        elif isinstance(a, float):
            tags += "f"
            payload += struct.pack(">f", a)
        elif isinstance(a, str):
            tags += "s"
            payload += osc_string(a)
        else:
            raise TypeError(f"OSC argument {a!r} must be int, float or str")
    return osc_string(address) + osc_string(tags) + payload


def timetag(unix_time: float | None = None) -> bytes:
    """64-bit NTP timetag (seconds since 1900 . 32-bit fraction) for ``unix_time`` (default now)."""
    t = time.time() if unix_time is None else unix_time
    secs = int(t) + NTP_EPOCH_OFFSET
    frac = int((t - int(t)) * (1 << 32)) & 0xFFFFFFFF
    return struct.pack(">II", secs, frac)


def bundles(messages: Sequence[bytes], tag: bytes, max_size: int = MAX_DATAGRAM) -> list[bytes]:
    """Pack messages into as few bundles as fit in ``max_size`` bytes each, in order."""
    out: list[bytes] = []
    cur = _BUNDLE_HEAD + tag
    count = 0
    for m in messages:
        elem = struct.pack(">i", len(m)) + m
        if 16 + len(elem) > max_size:
            raise ValueError(f"one OSC message is {len(m)} bytes; it cannot fit a {max_size}-byte datagram")
        if len(cur) + len(elem) > max_size:
            out.append(cur)
            cur, count = _BUNDLE_HEAD + tag, 0
        cur += elem
        count += 1
    if count:
        out.append(cur)
    return out


def flatten(groups: Iterable[Sequence[bytes]]) -> list[bytes]:
    return [m for g in groups for m in g]
