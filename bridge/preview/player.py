"""Packets -> PreviewRenderer inputs: the testable core of ``stepx preview``.

:class:`PreviewPlayer` is plain Python (no GL, no sockets): it keeps the latest ``run`` header
(words, focus), the latest ``step`` packet (textures ``[W+1, H, W]``: words in prompt order then
the global view; ``phase_weights``, ``step``, ``total_steps``, ``phase``) and the latest
``image`` (``uint8 [h, w, 3]``), and turns them into the arguments of
``PreviewRenderer.set_inputs`` for the focus word. :class:`PreviewLoop` ties a source, a player
and a renderer together one frame at a time; :func:`render_headless` writes frames to a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from bridge.protocol import PHASE_NAMES, word_index

from .renderer import VIEWS, PreviewError

log = logging.getLogger(__name__)

GLOBAL = "global"  #: name of the global view (the last texture), selectable like a word


class UnknownWordError(PreviewError):
    """A focus word that is not in the run's prompt; the message lists the run's words."""


@dataclass
class PreviewInputs:
    """Arguments for ``PreviewRenderer.set_inputs``."""
    stability: np.ndarray                 # float32 [H, W] in [0, 1], row 0 = top
    image: np.ndarray | None              # uint8 [h, w, 3], row 0 = top
    phase_weights: tuple[float, float, float]
    hud: dict[str, Any]


def _as_unit_float(arr: np.ndarray, header_scale: float | None = None) -> np.ndarray:
    """Maps as float32 in [0, 1], whatever the wire encoding (float32, float16, unorm8)."""
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(header_scale or 1.0 / 255.0)
    return a.astype(np.float32, copy=False)


class PreviewPlayer:
    """Latest run / step / image of a stream, and the focus word, view and pause state.

    ``word``: the requested focus word (None = the run header's ``focus`` if it names a word of
    the prompt, else the global view; ``"global"`` selects the global view explicitly). A word
    that is not in the run raises :class:`UnknownWordError` naming the run's words, as soon as
    the run's words are known.
    """

    def __init__(self, word: str | None = None, view: str = "particles") -> None:
        if view not in VIEWS:
            raise PreviewError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        self.view = view
        self.requested_word = word
        self.paused = False
        self.run_header: dict[str, Any] | None = None
        self.words: list[str] = []
        self.focus: int | None = None      # index into words; None = global view
        self.step_header: dict[str, Any] | None = None
        self.textures: np.ndarray | None = None   # float32 [W+1, H, W]
        self.image: np.ndarray | None = None      # uint8 [h, w, 3]
        self.ended: dict[str, Any] | None = None  # header of the current run's end packet
        self.steps_seen = 0
        self._dirty = False

    # ------------------------------------------------------------------ packets
    @property
    def run_id(self) -> str | None:
        return (self.run_header or {}).get("run_id")

    def feed(self, packet: Any) -> None:
        """Take one Packet (run, step, image, end; others are ignored)."""
        kind, header, arrays = packet.kind, dict(packet.header), packet.arrays
        if kind == "run":
            if self.run_header is not None and header.get("run_id") == self.run_id:
                return  # a re-sent run header (late-joiner cache) is a no-op
            self._start_run(header)
        elif kind == "step":
            if not self._same_run(header) and header.get("words"):
                # joined mid-run without the run packet: take the words from the step header
                self._start_run({"run_id": header.get("run_id"), "words": list(header["words"]),
                                 "total_steps": header.get("total_steps")})
            tex = arrays.get("textures")
            if tex is None:
                log.warning("step packet without a 'textures' array (step %s): ignored", header.get("step"))
                return
            tex = _as_unit_float(tex)
            if tex.ndim != 3:
                raise PreviewError(f"step textures must be [words + 1, H, W], got shape {tex.shape}")
            self.step_header, self.textures = header, tex
            self.steps_seen += 1
            self._dirty = True
        elif kind == "image":
            if self.run_header is not None and not self._same_run(header):
                return  # an image of another run
            img = arrays.get("image")
            if img is None:
                return
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
                raise PreviewError(f"image packets must hold uint8 [h, w, 3], got {img.dtype} {img.shape}")
            self.image = img[:, :, :3]
            self._dirty = True
        elif kind == "end":
            if self._same_run(header):
                self.ended = header

    def feed_all(self, packets: Iterable[Any]) -> None:
        for p in packets:
            self.feed(p)

    def _same_run(self, header: dict[str, Any]) -> bool:
        rid = header.get("run_id")
        return self.run_header is not None and (rid is None or self.run_id is None or rid == self.run_id)

    def _start_run(self, header: dict[str, Any]) -> None:
        previous = self.focus_word if self.run_header is not None else None
        self.run_header = header
        self.words = [str(w) for w in header.get("words") or []]
        self.step_header, self.textures, self.image, self.ended = None, None, None, None
        self._dirty = True
        if self.requested_word is not None:
            self.focus = self._resolve(self.requested_word)
        elif previous is not None and previous in self.words:
            self.focus = self.words.index(previous)   # keep a word picked with the arrow keys
        else:
            self.focus = self._default_focus(header)

    def _default_focus(self, header: dict[str, Any]) -> int | None:
        focus = header.get("focus")
        candidates = [focus] if isinstance(focus, str) else list(focus or [])
        for f in candidates:  # the daemon sends word indices; hand-made streams may send words
            if isinstance(f, int) and not isinstance(f, bool) and 0 <= f < len(self.words):
                return f
            if isinstance(f, str) and (found := word_index(self.words, f)) is not None:
                return found
        return None

    def _resolve(self, word: str) -> int | None:
        if word.lower() == GLOBAL:
            return None
        found = word_index(self.words, word)  # the protocol's rule: case-insensitive, "a#2" = the second "a"
        if found is not None:
            return found
        raise UnknownWordError(
            f"word {word!r} is not in the run's prompt; its words are: "
            f"{', '.join(repr(w) for w in self.words) or '(none)'} (or 'global' for the global view)")

    # ------------------------------------------------------------------ controls
    @property
    def focus_word(self) -> str:
        return GLOBAL if self.focus is None else self.words[self.focus]

    def set_word(self, word: str | None) -> None:
        """Focus ``word`` (None = the run's default); raises UnknownWordError once words are known."""
        self.requested_word = word
        if self.run_header is not None:
            self.focus = self._resolve(word) if word is not None else self._default_focus(self.run_header)
            self._dirty = True

    def cycle_word(self, delta: int) -> str:
        """Move the focus ``delta`` places through words + global (arrow keys); returns its name."""
        n = len(self.words) + 1
        cur = len(self.words) if self.focus is None else self.focus
        nxt = (cur + delta) % n
        self.focus = None if nxt == len(self.words) else nxt
        self.requested_word = None  # a later run keeps this word if it has it (see _start_run)
        self._dirty = True
        return self.focus_word

    def set_view(self, view: str) -> None:
        if view not in VIEWS:
            raise PreviewError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        self.view = view

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        return self.paused

    # ------------------------------------------------------------------ renderer inputs
    def stability(self) -> np.ndarray | None:
        """The focus word's texture ``[H, W]`` (the global view when focus is None)."""
        if self.textures is None:
            return None
        n = self.textures.shape[0]
        idx = n - 1 if self.focus is None else self.focus
        if idx >= n - 1 and self.focus is not None:
            log.warning("step textures have %d maps for %d words: showing the global view", n, len(self.words))
            idx = n - 1
        return self.textures[idx]

    def phase_weights(self) -> tuple[float, float, float]:
        h = self.step_header or {}
        w = h.get("phase_weights")
        if w is not None and len(w) == 3:
            return tuple(float(x) for x in w)  # type: ignore[return-value]
        phase = int(h.get("phase", 0) or 0)
        return tuple(1.0 if i == phase else 0.0 for i in range(3))  # type: ignore[return-value]

    def hud(self) -> dict[str, Any]:
        h = self.step_header or {}
        out: dict[str, Any] = {"word": self.focus_word}
        if "step" in h:
            out["step"] = int(h["step"])
            total = h.get("total_steps") or (self.run_header or {}).get("total_steps")
            if total:
                out["total"] = int(total)
        if "phase" in h:
            p = h["phase"]
            out["phase"] = PHASE_NAMES[int(p)] if isinstance(p, (int, np.integer)) and 0 <= p < 3 else p
        return out

    def inputs(self) -> PreviewInputs | None:
        """Current renderer inputs, or None before any step or image arrived."""
        if self.textures is None and self.image is None:
            return None
        s = self.stability()
        if s is None:
            s = np.zeros((64, 64), np.float32)
        return PreviewInputs(s, self.image, self.phase_weights(), self.hud())

    def take_inputs(self) -> PreviewInputs | None:
        """Like :meth:`inputs`, but only when something changed since the last call."""
        if not self._dirty:
            return None
        self._dirty = False
        return self.inputs()


class PreviewLoop:
    """One frame at a time: poll the source, feed the player, update and draw the renderer.

    ``renderer`` needs ``set_inputs``, ``update``, ``render`` and ``draw`` (PreviewRenderer).
    The clock ``t`` advances by ``dt`` per :meth:`tick` and stops while paused.
    """

    def __init__(self, source: Any, player: PreviewPlayer, renderer: Any) -> None:
        self.source, self.player, self.renderer = source, player, renderer
        self.t = 0.0
        self.frames = 0

    def tick(self, dt: float) -> None:
        """Advance by ``dt`` seconds (no particle motion and no trace progress while paused)."""
        if not self.player.paused:
            self.player.feed_all(self.source.poll(self.t))
        inp = self.player.take_inputs()
        if inp is not None:
            self.renderer.set_inputs(inp.stability, inp.image, inp.phase_weights, inp.hud)
        if not self.player.paused:
            self.renderer.update(dt)
            self.t += dt
        self.frames += 1

    @property
    def done(self) -> bool:
        """No more packets will come (a trace played to its end, or a live run ended)."""
        return self.source.finished or self.player.ended is not None


def render_headless(loop: PreviewLoop, write: Callable[[np.ndarray], None], *, fps: float,
                    frames: int | None = None, hold: float = 1.0,
                    sleep: Callable[[float], None] | None = None,
                    clock: Callable[[], float] | None = None) -> int:
    """Render ``frames`` frames (or until the stream is done, plus ``hold`` seconds) into ``write``.

    A realtime source is paced to the wall clock (``sleep``/``clock``); a trace runs on the
    virtual clock as fast as frames render. Returns the number of frames written.
    """
    import time
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    dt = 1.0 / fps
    realtime = getattr(loop.source, "realtime", False)
    hold_frames = max(0, int(round(hold * fps)))
    t0, written, after_end = clock(), 0, 0
    while frames is None or written < frames:
        if realtime:
            wait = t0 + written * dt - clock()
            if wait > 0:
                sleep(wait)
        loop.tick(dt)
        write(loop.renderer.render(loop.player.view))
        written += 1
        if frames is None and loop.done:
            after_end += 1
            if after_end > hold_frames:
                break
    return written


def parse_size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> (512, 384); a clear error otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 512x512), got {text!r}") from None
    if w < 16 or h < 16:
        raise ValueError(f"size must be at least 16x16, got {text!r}")
    return w, h

