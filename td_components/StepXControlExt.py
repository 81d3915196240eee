"""StepXControlExt: the extension class of the StepX control Base COMP (thin TD glue).

What: pulse parameters Generate / Cancel / Status send JSON requests to the daemon through
``stepx_td.control`` (a ZeroMQ REQ socket to the daemon's ROUTER, or OSC when Transport is ``osc``); ``OnFrameStart``
polls replies without blocking and shows the last one in the ``Lastreply`` parameter.

Parameters (custom page "StepX Control"): Address, Controlport (ZeroMQ, default 5561),
Oscport (default 7001), Transport (zmq / osc), Prompt, Seed (-1 = random), Steps (0 = the daemon's
``serve --steps``), Guidance (< 0 = the daemon's), Width and Height (0 = the model's), Focuswords
(space separated), Token, Libpath, and the pulses Generate, Cancel, Status. Values are checked by
the daemon's own schema before anything is sent (``stepx_td.request``).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _par(owner: Any, name: str, default: Any) -> Any:
    p = getattr(owner.par, name, None)
    return default if p is None else p.eval()


def _import_control(libpath: str) -> Any:
    if libpath and libpath not in sys.path:
        sys.path.insert(0, libpath)
    from stepx_td import control  # noqa: PLC0415 (after the path is set)

    return control


class StepXControlExt:
    """Control extension: promoted ``Generate``, ``Cancel``, ``Status``, ``OnFrameStart``."""

    def __init__(self, ownerComp: Any) -> None:
        self.ownerComp = ownerComp
        self.client: Any = None
        self._conn: tuple[str, int] | None = None
        self.control = _import_control(str(_par(ownerComp, "Libpath", "")))

    def _client(self) -> Any:
        conn = (str(_par(self.ownerComp, "Address", "127.0.0.1")), int(_par(self.ownerComp, "Controlport", 5561)))
        if self.client is None or conn != self._conn:
            if self.client is not None:
                self.client.close()
            token = str(_par(self.ownerComp, "Token", "")) or None
            self.client, self._conn = self.control.ControlClient(*conn, token=token), conn
        return self.client

    def _send(self, request: dict[str, Any]) -> Any:
        if str(_par(self.ownerComp, "Transport", "zmq")) == "osc":
            token = str(_par(self.ownerComp, "Token", "")) or None
            if token:
                request = {**request, "token": token}
            self.control.send_osc(request, str(_par(self.ownerComp, "Address", "127.0.0.1")),
                                  int(_par(self.ownerComp, "Oscport", 7001)))
            self._show({"sent": request.get("cmd"), "via": "osc"})
            return None
        return self._client().send(request)

    def Generate(self) -> Any:
        """Send ``generate`` with the COMP's Prompt, Seed, Steps, Guidance, Width, Height and Focuswords."""
        o = self.ownerComp
        guidance = float(_par(o, "Guidance", -1.0))
        try:
            req = self.control.generate_request(
                str(_par(o, "Prompt", "")), seed=int(_par(o, "Seed", -1)), steps=int(_par(o, "Steps", 0)) or None,
                guidance=guidance if guidance >= 0 else None, width=int(_par(o, "Width", 0)),
                height=int(_par(o, "Height", 0)), focus=str(_par(o, "Focuswords", "")))
        except ValueError as exc:
            self._show({"ok": False, "error": str(exc)})
            return None
        return self._send(req)

    def Cancel(self) -> Any:
        """Send ``cancel``."""
        return self._send(self.control.simple_request("cancel"))

    def Status(self) -> Any:
        """Send ``status``."""
        return self._send(self.control.simple_request("status"))

    def OnFrameStart(self, frame: int | None = None) -> list[dict[str, Any]]:
        """Collect replies (never blocks); the newest goes to the Lastreply parameter."""
        if self.client is None:
            return []
        replies = self.client.poll()
        if replies:
            self._show(replies[-1])
        return replies

    def _show(self, reply: dict[str, Any]) -> None:
        p = getattr(self.ownerComp.par, "Lastreply", None)
        if p is not None:
            p.val = json.dumps(reply)[:1000]

    def onDestroyTD(self) -> None:
        """Release the socket before TD re-initialises the extension."""
        if self.client is not None:
            self.client.close()
            self.client = None
