"""OSC out: Packets -> the /stepx address space, for TouchDesigner's OSC In CHOP and friends.

Layering (python-osc style): packet -> messages (``packet_messages``, pure) -> bundles
(``osc_encode.bundles``, pure) -> UDP (``OscSender``). Every numeric channel has a stable
address and numeric arguments only; strings (run id, words) have their own addresses so a
CHOP can ignore them and an OSC In DAT can read them. The full table is in docs/PROTOCOL.md.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import numpy as np

from bridge.phases.measures import word_measures
from bridge.protocol import OSC_OUT_PORT
from bridge.transport import osc_encode as enc
from bridge.protocol import RECORDING_STATES, STATES

log = logging.getLogger(__name__)

END_CODES = {"done": 0, "cancelled": 1, "error": 2}
#: a word name longer than this (UTF-8 bytes) is cut and ends with TRUNCATED, so the run-start
#: bundle always fits a datagram: the run's identity is never dropped for one long word.
MAX_NAME_BYTES = 256
TRUNCATED = "\u2026"  # …


def short_name(word: str, limit: int = MAX_NAME_BYTES) -> str:
    """``word`` if it fits ``limit`` UTF-8 bytes, else its longest prefix that does plus ``…``."""
    raw = word.encode("utf-8", "replace")
    if len(raw) <= limit:
        return word
    cut = raw[: limit - len(TRUNCATED.encode("utf-8"))].decode("utf-8", "ignore")
    return cut + TRUNCATED


def _f(x: Any, default: float = 0.0) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if np.isfinite(v) else default


_RAW = ("mass", "entropy", "centroid_x", "centroid_y", "change")


def _raw_word_series(header: dict[str, Any], n: int) -> dict[str, list[Any]] | None:
    """The step header's per-word series (bridge.phases.timeline.SERIES) if all are there for n words."""
    out: dict[str, list[Any]] = {}
    for k in _RAW:
        v = header.get(k)
        if not (isinstance(v, list) and len(v) == n):
            return None
        out[k] = v
    return out


def packet_messages(packet: Any) -> list[bytes]:
    """The OSC messages for one Packet (pure; empty list for kinds OSC does not carry)."""
    h, k = packet.header, packet.kind
    M = enc.message
    if k == "step":
        msgs = [M("/stepx/step", int(h.get("step", 0))), M("/stepx/total_steps", int(h.get("total_steps", 0))),
                M("/stepx/progress", _f(h.get("progress"))), M("/stepx/phase", int(h.get("phase", 0))),
                M("/stepx/phase/progress", _f(h.get("phase_progress")))]
        pw = list(h.get("phase_weights") or [0.0, 0.0, 0.0])[:3]
        msgs.append(M("/stepx/phase/weights", *[_f(x) for x in pw]))
        words = list(h.get("words") or [])
        tex = packet.arrays.get("textures")
        meas = None
        if tex is not None and tex.ndim == 3 and tex.shape[0] >= 1:
            meas = word_measures(tex)
        raw = _raw_word_series(h, len(words))  # the timeline's definitions, from the raw maps
        for i in range(len(words)):
            if raw is not None:
                msgs.append(M(f"/stepx/word/{i}/mass", _f(raw["mass"][i])))
                msgs.append(M(f"/stepx/word/{i}/entropy", _f(raw["entropy"][i])))
                msgs.append(M(f"/stepx/word/{i}/centroid", _f(raw["centroid_x"][i], 0.5), _f(raw["centroid_y"][i], 0.5)))
                msgs.append(M(f"/stepx/word/{i}/change", _f(raw["change"][i])))
            elif meas is not None and i < len(meas["mass"]):  # a packet without series: same formulas on the texture
                msgs.append(M(f"/stepx/word/{i}/mass", float(meas["mass"][i])))
                msgs.append(M(f"/stepx/word/{i}/entropy", float(meas["entropy"][i])))
                msgs.append(M(f"/stepx/word/{i}/centroid", float(meas["cx"][i]), float(meas["cy"][i])))
        since = h.get("stable_since")
        if isinstance(since, list) and len(since) == len(words):
            step_now = int(h.get("step", -1))
            for i, v in enumerate(since):
                v = int(v) if isinstance(v, (int, float)) else -1
                msgs.append(M(f"/stepx/word/{i}/stable_since", v))
                if v >= 0 and v == step_now:  # the event: word i's map has just stopped moving
                    msgs.append(M(f"/stepx/word/{i}/stabilised", v))
        if meas is not None and len(meas["mass"]) == len(words) + 1:  # global view is last
            msgs.append(M("/stepx/global/mass", float(meas["mass"][-1])))
            msgs.append(M("/stepx/global/entropy", float(meas["entropy"][-1])))
            msgs.append(M("/stepx/global/centroid", float(meas["cx"][-1]), float(meas["cy"][-1])))
        return msgs
    if k == "run":
        words = list(h.get("words") or [])
        msgs = [M("/stepx/run/start", int(h.get("total_steps", 0)), int(h.get("seed") or 0), len(words),
                  int(h.get("width", 0)), int(h.get("height", 0))),
                M("/stepx/run/id", short_name(str(h.get("run_id", "")))), M("/stepx/words/count", len(words))]
        msgs += [M(f"/stepx/word/{i}/name", short_name(str(w))) for i, w in enumerate(words)]
        return msgs
    if k == "end":
        return [M("/stepx/run/end", END_CODES.get(str(h.get("status", "done")), 2)),
                M("/stepx/run/id", str(h.get("run_id", "")))]
    if k == "image":
        return [M("/stepx/image/step", int(h.get("step", 0)), int(bool(h.get("final"))))]
    if k == "status":
        return recording_messages(h.get("recording"))
    return []


def recording_messages(rec: Any) -> list[bytes]:
    """``/stepx/recording i state (index in RECORDING_STATES), i files`` and, once it failed,
    ``/stepx/recording/error s why``: the recorder's health from a status packet (pure)."""
    if not isinstance(rec, dict) or rec.get("state") not in RECORDING_STATES:
        return []
    files = rec.get("files")
    msgs = [enc.message("/stepx/recording", RECORDING_STATES.index(rec["state"]),
                        files if isinstance(files, int) and not isinstance(files, bool) and 0 <= files < 2**31 else 0)]
    if rec["state"] == "failed":
        why = str(rec.get("error") or "").encode("utf-8", "replace").decode("utf-8")  # (a path may hold surrogates)
        msgs.append(enc.message("/stepx/recording/error", short_name(why)))
    return msgs


class OscSender:
    """UDP OSC sender and fan-out ``Sink`` (``encoding = None``: it reads Packets directly).

    One bundle (split if over 1,400 bytes) per packet with a timetag of the send time,
    and a ``/stepx/status`` heartbeat once a second from its own thread.
    """

    inline, lossless = False, False  # Sink: on its own thread, latest frames

    def __init__(self, host: str = "127.0.0.1", port: int = OSC_OUT_PORT, *, name: str = "osc",
                 heartbeat: float | None = 1.0, max_datagram: int = enc.MAX_DATAGRAM) -> None:
        self.name, self.encoding = name, None
        self.addr = (host, port)
        self.max_datagram = max_datagram
        self.datagrams_sent = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._state, self._fps, self._step, self._t0 = "idle", 0.0, -1, time.monotonic()
        self._stop = threading.Event()
        self._hb = None
        if heartbeat:
            self._hb = threading.Thread(target=self._heartbeat, args=(heartbeat,), name=f"{name}-hb", daemon=True)
            self._hb.start()

    def _sendto(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, self.addr)
            self.datagrams_sent += 1
        except OSError as exc:  # nobody listening (ICMP refused) or the network is gone
            log.debug("osc send to %s failed: %s", self.addr, exc)

    def send(self, packet: Any, data: bytes | None = None) -> None:
        """Sink interface: translate, bundle and send one Packet."""
        h = packet.header
        if packet.kind == "run":
            self._state = "replaying" if h.get("replay") else "generating"
        elif packet.kind == "end" and not h.get("replay"):
            self._state = "error" if h.get("status") == "error" else "idle"
        elif packet.kind == "status":
            state = h.get("state")
            if state in STATES:  # the daemon's own word wins; anything else keeps the last known state
                self._state = str(state)
            self._fps = _f(h.get("fps"))
        elif packet.kind == "step":
            self._step = int(h.get("step", -1))
        msgs = packet_messages(packet)
        fits = [m for m in msgs if 20 + len(m) <= self.max_datagram]
        if len(fits) < len(msgs):  # cannot happen for the messages above (names are cut); never drop the rest
            log.warning("osc: %d %s message(s) too large for a datagram were left out", len(msgs) - len(fits), packet.kind)
        if fits:
            for b in enc.bundles(fits, enc.timetag(), self.max_datagram):
                self._sendto(b)

    def status_message(self) -> bytes:
        """/stepx/status: i state (the code of bridge.protocol.STATES), f fps, i step, f uptime_seconds."""
        return enc.message("/stepx/status", STATES[self._state], float(self._fps), int(self._step),
                           float(time.monotonic() - self._t0))

    def _heartbeat(self, period: float) -> None:
        while not self._stop.wait(period):
            self._sendto(self.status_message())

    def close(self) -> None:
        self._stop.set()
        if self._hb:
            self._hb.join(timeout=2.0)
        self._sock.close()
