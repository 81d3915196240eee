"""StepXReceiverExt: the extension class of the StepX receiver Base COMP (thin TD glue).

What: once per frame (from the Execute DAT's ``onFrameStart``) it polls
``stepx_td.decoder.StreamReceiver`` without blocking, keeps the newest arrays and channels and
asks the Script TOPs / CHOPs to re-cook; each one's ``onCook`` calls back ``CookTop`` /
``CookChop``, which copy the data in (``copyNumpyArray`` and channel values are written from
inside the operator's own cook). The phase weights the piece's shaders read (``w_noise``,
``w_structure``, ``w_detail`` of the phase CHOP) ease towards each step's weights over ``Morph``
seconds (stepx_td.morph), so the three phases morph instead of cutting; until the first step
the phase CHOP holds stepx_td.morph.PHASE_DEFAULTS, so expressions never see a missing channel.

Why thin: everything that can be tested without TouchDesigner lives in ``stepx_td``; this
class only reads the COMP's parameters and touches operators. It reaches ``td`` only through
``stepx_td.tdseam`` and operators only through ``ownerComp.op(name)``.

Parameters of the owner COMP (custom page "StepX"): Address, Port, Focusword, Encoding
(auto / float32 / uint8: the texture format handed to the TOPs), Morph (seconds), Libpath
(folder holding ``stepx_td``), Active.

Recorder health (custom page "Recording", written here, read by the operator; docs/PROTOCOL.md
"Recording health"): Recording (one line, ``RECORDING FAILED: why`` when failed), Recstate,
Recfiles, Recruns, Recsize, Recpath, Recerror; the phase CHOP always carries ``rec_state`` (-1 no
report yet, 0 off, 1 recording, 2 failed) and ``rec_failed``, and a failed recorder is appended to ``Status``.
Fed by the ZeroMQ ``status`` packets, or by OSC through ``OnOsc(address, args)`` from an OSC In DAT.
"""

from __future__ import annotations

import sys
import time
from typing import Any

#: Operator names inside the COMP (build_network.py creates them).
TOPS = {"word": "word_tex", "masks": "masks_rgba", "image": "step_image"}
CHOPS = {"phase": "phase_chop", "words": "words_chop", "timeline": "timeline_chop"}
#: Custom parameter -> RecordingHealth attribute (``summary`` is called): the "Recording" page.
RECORDING_PARS = {"Recording": "summary", "Recstate": "state", "Recfiles": "files", "Recruns": "runs",
                  "Recsize": "size", "Recpath": "path", "Recerror": "error"}


def _par(owner: Any, name: str, default: Any) -> Any:
    """Evaluated custom parameter ``name`` of ``owner``, or ``default`` if it does not exist."""
    p = getattr(owner.par, name, None)
    return default if p is None else p.eval()


def _import_lib(libpath: str) -> tuple[Any, Any, Any]:
    if libpath and libpath not in sys.path:
        sys.path.insert(0, libpath)
    from stepx_td import decoder, morph, recording  # noqa: PLC0415 (after the path is set)

    return decoder, morph, recording


class StepXReceiverExt:
    """Receiver extension: ``OnFrameStart`` polls; ``CookChop`` fills a Script CHOP."""

    def __init__(self, ownerComp: Any) -> None:
        self.ownerComp = ownerComp
        self.receiver: Any = None
        self._conn: tuple[str, int] | None = None
        self._pushed: tuple[Any, ...] | None = None
        self.channels: dict[str, dict[str, Any]] = {k: {} for k in CHOPS}
        self.arrays: dict[str, Any] = {}
        self.decoder, morph, self.recording_lib = _import_lib(str(_par(ownerComp, "Libpath", "")))
        self.recording: Any = None  # recording.RecordingHealth, once the daemon reported it
        self.morph = morph.PhaseMorph()
        self.phase_defaults = dict(morph.PHASE_DEFAULTS)
        self.weight_names = morph.WEIGHTS
        self._raw_phase: dict[str, float] = {}
        self._last_frame_time: float | None = None
        self.Status = "idle"
        self.Frames = 0

    # -- connection ------------------------------------------------------------------------
    def Connect(self) -> None:
        """(Re)open the subscriber with the current Address/Port."""
        self.Disconnect()
        decoder = self.decoder
        address = str(_par(self.ownerComp, "Address", "127.0.0.1"))
        port = int(_par(self.ownerComp, "Port", 5560))
        self.receiver = decoder.StreamReceiver(address, port, output=str(_par(self.ownerComp, "Encoding", "auto")))
        self._conn, self._pushed = (address, port), None
        self.Status = f"listening on {self.receiver.endpoint}"

    def Disconnect(self) -> None:
        """Close the subscriber, if any."""
        if self.receiver is not None:
            self.receiver.close()
        self.receiver, self._conn = None, None

    def onDestroyTD(self) -> None:
        """TD calls this before re-initialising the extension: release the socket."""
        self.Disconnect()

    # -- per frame -------------------------------------------------------------------------
    def OnFrameStart(self, frame: int | None = None, dt: float | None = None) -> bool:
        """Poll once (never blocks) and update the TOPs/CHOPs; True when something new arrived.

        ``dt``: seconds since the last frame (default: measured), for the phase morph."""
        if not _par(self.ownerComp, "Active", True):
            return False
        now = time.monotonic()
        if dt is None:
            dt = 0.0 if self._last_frame_time is None else min(now - self._last_frame_time, 0.25)
        self._last_frame_time = now
        self._advance_morph(dt)
        conn = (str(_par(self.ownerComp, "Address", "127.0.0.1")), int(_par(self.ownerComp, "Port", 5560)))
        if self.receiver is None or conn != self._conn:
            self.Connect()
        rx = self.receiver
        rx.output = str(_par(self.ownerComp, "Encoding", "auto"))
        rx.focus = str(_par(self.ownerComp, "Focusword", "0"))
        upd = rx.poll()
        if upd.errors:
            self.Status = "; ".join(upd.errors)[-300:]
        if "status" in upd.kinds and rx.recording is not None:
            self._show_recording(rx.recording)
        key = (id(rx.latest.get("step")), id(rx.latest.get("image")), rx.focus, rx.output)
        if not rx.latest or (key == self._pushed and "timeline" not in upd.kinds):
            return False  # nothing received yet, or nothing new
        self._pushed = key
        self.Frames += 1
        self._push_textures(rx)
        self._update_channels(rx)
        return True

    def _push_textures(self, rx: Any) -> None:
        try:
            arrays = {"word": rx.word_texture(), "masks": rx.masks_rgba(), "image": rx.step_image()}
        except ValueError as exc:  # a focus word not in the prompt: the message lists the words
            self.Status = str(exc)
            arrays = {"word": None, "masks": None, "image": rx.step_image()}
        else:
            if rx.latest.get("step") is not None:
                self.Status = f"run {(rx.run or {}).get('run_id')} step {rx.latest['step'].header.get('step')} ({rx.encoding})"
                if self.recording is not None and self.recording.failed:
                    self.Status += " | " + self.recording.summary()
        for key, arr in arrays.items():
            top = self.ownerComp.op(TOPS[key])
            if arr is not None:
                self.arrays[key] = arr
                if top is not None:
                    top.cook(force=True)

    def CookTop(self, scriptOp: Any, which: str) -> None:
        """Copy the newest ``which`` array ('word', 'masks', 'image') into ``scriptOp`` (from its onCook)."""
        arr = self.arrays.get(which)
        if arr is not None:
            scriptOp.copyNumpyArray(arr)

    def _update_channels(self, rx: Any) -> None:
        self._raw_phase = {k: float(v[0]) for k, v in rx.phase_channels().items()}
        self._raw_phase["has_image"] = 1.0 if rx.latest.get("image") is not None else 0.0
        if rx.latest.get("step") is not None or self.morph.current is not None:
            # the weights come from steps: an image or timeline that lands before the first step
            # leaves the morph unset, so that step's weights are taken as is, not eased towards
            self.morph.set_target([self._raw_phase.get(n, d) for n, d in zip(self.weight_names, (1.0, 0.0, 0.0))])
        self.channels = {"phase": self._phase_channels(), "words": rx.word_channels(), "timeline": rx.timeline_channels()}
        for name in CHOPS.values():
            chop = self.ownerComp.op(name)
            if chop is not None:
                chop.cook(force=True)

    def _phase_channels(self) -> dict[str, list[float]]:
        """Stream channels + defaults for what has not arrived, with the eased weights."""
        out = {**self.phase_defaults, **self._raw_phase}
        out.update(self._rec_channels())
        weights = self.morph.current or self.morph.target
        out.update({f"target_{n}": out[n] for n in self.weight_names})
        out.update(dict(zip(self.weight_names, weights)))
        return {k: [v] for k, v in out.items()}

    def _rec_channels(self) -> dict[str, float]:
        """``rec_state`` (-1 no report yet, else the RECORDING_STATES index) and ``rec_failed``."""
        rec = self.recording
        return {"rec_state": -1.0 if rec is None else float(rec.code), "rec_failed": float(rec is not None and rec.failed)}

    def _advance_morph(self, dt: float) -> None:
        """Ease the weights; re-cook the phase CHOP while they move."""
        if self.morph.current is None or self.morph.settled:
            return
        self.morph.advance(dt, float(_par(self.ownerComp, "Morph", 0.6)))
        self.channels["phase"] = self._phase_channels()
        chop = self.ownerComp.op(CHOPS["phase"])
        if chop is not None:
            chop.cook(force=True)

    # -- recorder health -------------------------------------------------------------------
    def OnOsc(self, address: str, args: Any) -> bool:
        """Take one OSC message (an OSC In DAT's ``onReceiveOSC``); True when it was recorder health."""
        try:
            health = self.recording_lib.from_osc(address, list(args), self.recording)
        except ValueError as exc:
            self.Status = str(exc)[:300]
            return False
        if health is None:
            return False
        self._show_recording(health)
        return True

    def _show_recording(self, health: Any) -> None:
        """Write the health to the Recording page, the phase CHOP and (when failed) Status."""
        self.recording = health
        for name, attr in RECORDING_PARS.items():
            par = getattr(self.ownerComp.par, name, None)
            if par is not None:
                value = getattr(health, attr)
                par.val = value() if callable(value) else value
        self.channels["phase"] = self._phase_channels()
        chop = self.ownerComp.op(CHOPS["phase"])
        if chop is not None:
            chop.cook(force=True)
        if health.failed:
            self.Status = health.summary()

    def CookChop(self, scriptOp: Any, which: str) -> None:
        """Fill ``scriptOp`` (a Script CHOP, from its ``onCook``) with the ``which`` channels."""
        scriptOp.clear()
        chans = self.channels.get(which) or (
            {k: [v] for k, v in {**self.phase_defaults, **self._rec_channels()}.items()} if which == "phase" else {})
        if not chans:
            return
        scriptOp.numSamples = max(len(v) for v in chans.values())
        for name, values in chans.items():
            scriptOp.appendChan(name).vals = [float(x) for x in values]
