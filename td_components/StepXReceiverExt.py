"""StepXReceiverExt: the extension class of the StepX receiver Base COMP (thin TD glue).

What: once per frame (from the Execute DAT's ``onFrameStart``) it polls
``stepx_td.decoder.StreamReceiver`` without blocking, pushes textures into Script TOPs with
``copyNumpyArray`` (the TOPs have "Modify Outside of Cook" on) and asks the Script CHOPs to
re-cook; each Script CHOP's ``onCook`` calls back ``CookChop`` to fill its channels (channel
values can only be written from inside a Script CHOP's cook).

Why thin: everything that can be tested without TouchDesigner lives in ``stepx_td``; this
class only reads the COMP's parameters and touches operators. It reaches ``td`` only through
``stepx_td.tdseam`` and operators only through ``ownerComp.op(name)``.

Parameters of the owner COMP (custom page "StepX"): Address, Port, Focusword, Encoding
(auto / float32 / uint8: the texture format handed to the TOPs), Libpath (folder holding
``stepx_td``), Active.
"""

from __future__ import annotations

import sys
from typing import Any

#: Operator names inside the COMP (build_network.py creates them).
TOPS = {"word": "word_tex", "masks": "masks_rgba", "image": "step_image"}
CHOPS = {"phase": "phase_chop", "words": "words_chop", "timeline": "timeline_chop"}


def _par(owner: Any, name: str, default: Any) -> Any:
    """Evaluated custom parameter ``name`` of ``owner``, or ``default`` if it does not exist."""
    p = getattr(owner.par, name, None)
    return default if p is None else p.eval()


def _import_decoder(libpath: str) -> Any:
    if libpath and libpath not in sys.path:
        sys.path.insert(0, libpath)
    from stepx_td import decoder  # noqa: PLC0415 (after the path is set)

    return decoder


class StepXReceiverExt:
    """Receiver extension: ``OnFrameStart`` polls; ``CookChop`` fills a Script CHOP."""

    def __init__(self, ownerComp: Any) -> None:
        self.ownerComp = ownerComp
        self.receiver: Any = None
        self._conn: tuple[str, int] | None = None
        self._pushed: tuple[Any, ...] | None = None
        self.channels: dict[str, dict[str, Any]] = {k: {} for k in CHOPS}
        self.Status = "idle"
        self.Frames = 0

    # -- connection ------------------------------------------------------------------------
    def Connect(self) -> None:
        """(Re)open the subscriber with the current Address/Port."""
        self.Disconnect()
        decoder = _import_decoder(str(_par(self.ownerComp, "Libpath", "")))
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
    def OnFrameStart(self, frame: int | None = None) -> bool:
        """Poll once (never blocks) and update the TOPs/CHOPs; True when something changed."""
        if not _par(self.ownerComp, "Active", True):
            return False
        conn = (str(_par(self.ownerComp, "Address", "127.0.0.1")), int(_par(self.ownerComp, "Port", 5560)))
        if self.receiver is None or conn != self._conn:
            self.Connect()
        rx = self.receiver
        rx.output = str(_par(self.ownerComp, "Encoding", "auto"))
        rx.focus = str(_par(self.ownerComp, "Focusword", "0"))
        upd = rx.poll()
        if upd.errors:
            self.Status = "; ".join(upd.errors)[-300:]
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
        for key, arr in arrays.items():
            top = self.ownerComp.op(TOPS[key])
            if arr is not None and top is not None:
                top.copyNumpyArray(arr)

    def _update_channels(self, rx: Any) -> None:
        self.channels = {"phase": rx.phase_channels(), "words": rx.word_channels(), "timeline": rx.timeline_channels()}
        for name in CHOPS.values():
            chop = self.ownerComp.op(name)
            if chop is not None:
                chop.cook(force=True)

    def CookChop(self, scriptOp: Any, which: str) -> None:
        """Fill ``scriptOp`` (a Script CHOP, from its ``onCook``) with the ``which`` channels."""
        scriptOp.clear()
        chans = self.channels.get(which) or {}
        if not chans:
            return
        scriptOp.numSamples = max(len(v) for v in chans.values())
        for name, values in chans.items():
            scriptOp.appendChan(name).vals = [float(x) for x in values]
