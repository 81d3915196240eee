"""StepX stream receiver for TouchDesigner: non-blocking ZeroMQ polling, TD-ready arrays.

What: ``StreamReceiver`` subscribes to the StepX ZeroMQ PUB stream (docs/PROTOCOL.md), and on
each ``poll()`` drains what has arrived *without waiting*, keeps every ``run``/``timeline``/
``end`` packet and only the newest ``step``/``image``/``status``, and turns them into:

* textures for Script TOP ``copyNumpyArray``: contiguous ``[H, W, 4]`` RGBA, float32 or uint8,
  rows flipped (``arr[::-1]``) because the wire's row 0 is the top of the image and a TD
  texture's origin is bottom-left;
* CHOP-ready channel dicts ``{name: float32 [samples]}`` (phase weights, per-word masses,
  timelines) for a Script CHOP.

Why this shape: TouchDesigner runs Python on its main (render) thread, so nothing here may
block; decoding only the newest frame of each kind keeps the per-frame cost bounded whatever
the publisher's rate. This module imports only numpy, pyzmq and the standard library (plus
the vendored ``protocol`` module, a byte-identical copy of ``bridge/protocol.py``), so it
runs inside TouchDesigner's own Python (3.11, numpy 1.26) without the ``bridge`` package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import zmq

try:  # imported as part of the stepx_td package (tests, TD with the folder on sys.path)
    from . import protocol as wire
    from .recording import RecordingHealth, from_status
except ImportError:  # pragma: no cover - loaded as a loose module
    import protocol as wire  # type: ignore[no-redef]
    from recording import RecordingHealth, from_status  # type: ignore[no-redef]

KEEP_KINDS, LATEST_KINDS, PHASE_NAMES = wire.KEEP_KINDS, wire.LATEST_KINDS, wire.PHASE_NAMES

#: Receiver-side output format of textures: ``auto`` keeps uint8 payloads as uint8 and turns
#: float32/float16 payloads into float32 (Script TOP takes float32 or uint8, not float16).
OUTPUT_FORMATS = ("auto", "float32", "uint8")
_CHAN_BAD = re.compile(r"[^A-Za-z0-9_]")


def chan_name(text: str) -> str:
    """A CHOP-safe channel name: letters, digits and underscores only."""
    name = _CHAN_BAD.sub("_", str(text)) or "_"
    return "_" + name if name[0].isdigit() else name


def flip_rows(arr: np.ndarray) -> np.ndarray:
    """Top-row-first image ``[H, W(, C)]`` -> bottom-row-first (TD's origin), contiguous copy."""
    return np.ascontiguousarray(arr[::-1])


def to_output(arr: np.ndarray, quantized: bool, fmt: str = "auto") -> np.ndarray:
    """Convert a wire array to a dtype Script TOP accepts (float32 or uint8).

    ``quantized`` says the bytes are unorm8 (value = byte / 255). ``auto``: uint8 stays uint8
    (bit-for-bit), float16/float32 become float32 (float16 -> float32 is exact). ``float32``:
    unorm8 bytes are scaled to [0, 1]. ``uint8``: floats become ``round(clip(x, 0, 1) * 255)``,
    the same rule as the wire's uint8 encoding.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    if arr.dtype == np.uint8:
        if fmt == "float32":
            return arr.astype(np.float32) * np.float32(1.0 / 255.0) if quantized else arr.astype(np.float32)
        return arr
    arr = arr.astype(np.float32, copy=False)
    if fmt == "uint8":
        return np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return arr


def _one(dtype: np.dtype) -> float:
    return 255.0 if dtype == np.uint8 else 1.0


def gray_to_rgba(gray: np.ndarray) -> np.ndarray:
    """``[H, W]`` -> ``[H, W, 4]`` with R = G = B = value and A = 1 (255 for uint8)."""
    out = np.empty(gray.shape + (4,), dtype=gray.dtype)
    out[..., :3] = gray[..., None]
    out[..., 3] = _one(gray.dtype)
    return out


def rgb_to_rgba(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` -> ``[H, W, 4]`` with opaque alpha; ``[H, W, 4]`` passes through."""
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        return rgb
    out = np.empty(rgb.shape[:2] + (4,), dtype=rgb.dtype)
    out[..., :3] = rgb[..., :3]
    out[..., 3] = _one(rgb.dtype)
    return out


@dataclass
class Update:
    """What one ``poll()`` brought: which kinds changed and how many messages were read."""

    received: int = 0
    kinds: set[str] = field(default_factory=set)
    new_run: bool = False
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.kinds)


class StreamReceiver:
    """Non-blocking subscriber to the StepX ZeroMQ stream, with TD-ready views of its state.

    ``address``/``port`` of the publisher (``tcp://address:port``), ``topics`` are subscription
    prefixes (``stepx/`` = everything). ``poll()`` never waits; call it once per frame.
    """

    def __init__(self, address: str = "127.0.0.1", port: int = wire.DATA_PORT, topics: Iterable[str] = ("stepx/",),
                 *, output: str = "auto", max_messages: int = 256, rcvhwm: int = 16,
                 context: zmq.Context | None = None) -> None:
        if output not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {output!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
        self.endpoint = f"tcp://{address}:{int(port)}"
        self.output = output
        self.max_messages = max_messages
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode("ascii"))
        self.sock.connect(self.endpoint)
        self.run: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.latest: dict[str, Any] = {}  # kind -> decoded packet
        self.specs: dict[str, dict[str, dict[str, Any]]] = {}  # kind -> array name -> wire spec
        self.encoding: str | None = None  # encoding of the newest step packet
        self.focus: str | int = 0
        #: the recorder's health from the newest ``status`` packet (None until one carries it)
        self.recording: RecordingHealth | None = None

    # -- receiving -------------------------------------------------------------------------
    def _recv_all(self) -> list[bytes]:
        """Every message already queued (at most ``max_messages``); never waits."""
        out: list[bytes] = []
        while len(out) < self.max_messages:
            try:
                out.append(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        return out

    def poll(self) -> Update:
        """Drain the socket without blocking and decode what matters; returns what changed."""
        raw = self._recv_all()
        upd = Update(received=len(raw))
        if not raw:
            return upd
        kinds: list[str] = []
        for data in raw:  # the topic is the bytes before the first NUL: no JSON parse needed
            end = data.find(b"\x00", 0, 256)
            topic = data[:end].decode("ascii", "replace") if end >= 0 else ""
            kinds.append(topic[len(wire.TOPIC_ROOT):] if topic.startswith(wire.TOPIC_ROOT) else "")
        for i, (kind, data) in enumerate(zip(kinds, raw)):
            if kind not in KEEP_KINDS and (kind not in LATEST_KINDS or kind in kinds[i + 1:]):
                continue  # an older step/image/status, or an unknown kind: skip
            try:
                self._accept(kind, data, upd)
            except (wire.WireError, ValueError) as exc:
                upd.errors.append(f"{kind or '?'}: {exc}")
        return upd

    def _accept(self, kind: str, data: bytes, upd: Update) -> None:
        _topic, head, _block = wire.split(data)
        packet = wire.decode(data)
        header = dict(packet.header)
        if kind == "run":
            if self.run is not None and self.run.get("run_id") == header.get("run_id"):
                return  # a late-joiner re-send of the current run: no-op (PROTOCOL.md)
            self.run, self.end = header, None
            for k in ("step", "image", "timeline"):  # the last run's frames go; this run's stay (a late
                got = self.latest.get(k)           # joiner may get a step before its run's re-sent packet)
                if got is not None and got.header.get("run_id") != header.get("run_id"):
                    del self.latest[k]
            upd.new_run = True
        elif kind == "end":
            self.end = header
        elif kind == "status":
            self.recording = from_status(header) or self.recording  # ValueError: reported, last kept
        self.latest[kind] = packet
        self.specs[kind] = {s.get("name"): s for s in head.get("arrays", []) if isinstance(s, dict)}
        if kind == "step":
            self.encoding = head.get("encoding")
        upd.kinds.add(kind)

    # -- words and focus -------------------------------------------------------------------
    @property
    def words(self) -> list[str]:
        """Prompt words of the newest step (or of the run)."""
        for src in (self.latest.get("step"), self.run):
            hdr = getattr(src, "header", src) if src is not None else None
            if isinstance(hdr, dict) and isinstance(hdr.get("words"), list):
                return [str(w) for w in hdr["words"]]
        return []

    def focus_index(self, focus: str | int | None = None) -> int:
        """Map (word or index) to a map index; ``-1``, ``global`` or ``""`` = the global view.

        Raises ValueError naming the prompt's words when the word is not in the prompt.
        """
        focus = self.focus if focus is None else focus
        words = self.words
        if isinstance(focus, str):
            text = focus.strip()
            if text.lower() in wire.GLOBAL_FOCUS:
                return len(words)
            if text.lstrip("-").isdigit():
                focus = int(text)
            else:
                found = wire.word_index(words, text)  # the protocol's rule: case-insensitive, "a#2" = the second "a"
                if found is None:
                    raise ValueError(f"focus word {text!r} is not in the prompt; its words are: {', '.join(words)}")
                return found
        idx = int(focus)
        if idx < 0:
            idx = len(words) + 1 + idx  # -1 -> global (last map)
        if not 0 <= idx <= len(words):
            raise ValueError(f"focus index {focus} out of range; 0..{len(words) - 1} are words, {len(words)} or -1 is global")
        return idx

    # -- textures --------------------------------------------------------------------------
    def _array(self, kind: str, name: str) -> tuple[np.ndarray, bool] | None:
        packet = self.latest.get(kind)
        if packet is None or name not in packet.arrays:
            return None
        spec = self.specs.get(kind, {}).get(name, {})
        return packet.arrays[name], spec.get("quantized") == "unorm8"

    def word_texture(self, focus: str | int | None = None) -> np.ndarray | None:
        """The focus word's map as ``[H, W, 4]`` RGBA (grey, opaque), flipped for TD."""
        got = self._array("step", "textures")
        if got is None:
            return None
        stack, quantized = got
        gray = to_output(stack[self.focus_index(focus)], quantized, self.output)
        return flip_rows(gray_to_rgba(gray))

    def masks_rgba(self, focus: str | int | None = None) -> np.ndarray | None:
        """``[H, W, 4]`` R = StabilityMask, G = ChaosMask, B = settled, A = accumulated (TD-flipped).

        Uses the packet's ``rgba`` array when present, else builds it from ``textures``.
        """
        idx = self.focus_index(focus)
        got = self._array("step", "rgba")
        if got is not None:
            stack, quantized = got
            return flip_rows(to_output(stack[idx], quantized, self.output))
        got = self._array("step", "textures")
        if got is None:
            return None
        stack, quantized = got
        tex = to_output(stack[idx], quantized, "float32")
        stab = np.clip(tex, 0.0, 1.0)
        planes = [stab, 1.0 - stab]
        for name in ("settled", "accumulated"):
            extra = self._array("step", name)
            planes.append(to_output(extra[0][idx], extra[1], "float32") if extra else np.zeros_like(stab))
        rgba = np.stack(planes, axis=-1).astype(np.float32)
        return flip_rows(to_output(rgba, False, "uint8" if self.output == "uint8" else "float32"))

    def step_image(self) -> np.ndarray | None:
        """The newest step image as ``[h, w, 4]`` uint8 RGBA (opaque), flipped for TD."""
        got = self._array("image", "image")
        if got is None:
            return None
        img, quantized = got
        # A uint8 step image is colour bytes (unorm8) whatever the header says: float32 output
        # must be 0..1, not 0..255 (a white image in TouchDesigner otherwise).
        unorm = quantized or img.dtype == np.uint8
        return flip_rows(rgb_to_rgba(to_output(img, unorm, self.output)))

    # -- CHOP channels ---------------------------------------------------------------------
    def phase_channels(self) -> dict[str, np.ndarray]:
        """One-sample channels of the newest step: progress, phase, weights, forces."""
        packet = self.latest.get("step")
        if packet is None:
            return {}
        h = packet.header
        out: dict[str, float] = {}
        for key in ("step", "total_steps", "progress", "phase", "phase_progress"):
            if isinstance(h.get(key), (int, float)):
                out[key] = float(h[key])
        weights = h.get("phase_weights") or []
        for name, w in zip(PHASE_NAMES, weights):
            out[f"w_{name}"] = float(w) if w is not None else 0.0
        forces = h.get("forces") or {}
        for key in ("wind", "attraction", "chaos", "stability"):
            if isinstance(forces.get(key), (int, float)):
                out[key] = float(forces[key])
        return {k: np.array([v], dtype=np.float32) for k, v in out.items()}

    def word_channels(self, series: Iterable[str] = ("mass", "share", "entropy", "centroid_x", "centroid_y")) -> dict[str, np.ndarray]:
        """One-sample channels ``<series>_<word>`` of the newest step (centroid_y made TD-up: 1 - y)."""
        packet = self.latest.get("step")
        if packet is None:
            return {}
        words = [chan_name(w) for w in self.words]
        out: dict[str, np.ndarray] = {}
        for s in series:
            values = packet.header.get(s)
            if not isinstance(values, list):
                continue
            for w, v in zip(words, values):
                val = float("nan") if v is None else float(v)
                out[f"{s}_{w}"] = np.array([1.0 - val if s == "centroid_y" else val], dtype=np.float32)
        return out

    def timeline_channels(self, series: str = "mass") -> dict[str, np.ndarray]:
        """Per-word timelines of the run: ``{word: float32 [steps]}`` from the newest ``timeline`` packet."""
        packet = self.latest.get("timeline")
        if packet is None or series not in packet.arrays:
            return {}
        got = self._array("timeline", series)
        assert got is not None
        arr = to_output(got[0], got[1], "float32")  # [T, N]
        words = packet.header.get("words") or self.words
        return {chan_name(w): np.ascontiguousarray(arr[:, i]) for i, w in enumerate(words) if i < arr.shape[1]}

    def close(self) -> None:
        """Close the socket (pending messages are dropped)."""
        self.sock.close(linger=0)
