"""The daemon's recorder health, as TouchDesigner shows it (docs/PROTOCOL.md "Recording health").

What: ``from_status`` reads the ``recording`` object of a ZeroMQ ``status`` packet (or of a
``status``/``ping`` control reply); ``from_osc`` reads the OSC pair ``/stepx/recording i state,
i files`` and ``/stepx/recording/error s why`` as an OSC In DAT hands them over (address, args).
Both give a ``RecordingHealth``; ``summary`` is the one line an operator reads.

Why here: pure standard-library code, so it runs in TouchDesigner's Python and is tested
without it; the state names come from the vendored ``protocol.RECORDING_STATES`` (stated once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

try:  # imported as part of the stepx_td package (tests, TD with the folder on sys.path)
    from .protocol import RECORDING_STATES
except ImportError:  # pragma: no cover - loaded as a loose module
    from protocol import RECORDING_STATES  # type: ignore[no-redef]

OSC_STATE = "/stepx/recording"
OSC_ERROR = "/stepx/recording/error"


@dataclass(frozen=True)
class RecordingHealth:
    """One reading of the recorder: ``state`` in RECORDING_STATES, the rest as the daemon sent it
    (OSC carries only ``state``, ``files`` and ``error``; the others stay empty there)."""

    state: str = "off"
    path: str = ""
    files: int = 0
    runs: int = 0
    bytes: int = 0
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    @property
    def code(self) -> int:
        """The state's index in RECORDING_STATES (0 off, 1 recording, 2 failed), as on OSC."""
        return RECORDING_STATES.index(self.state)

    @property
    def size(self) -> str:
        """``bytes`` for people: ``0 B``, ``12.3 MB``, ``1.2 GB`` (decimal units)."""
        n = float(self.bytes)
        for unit in ("B", "kB", "MB", "GB"):
            if n < 1000 or unit == "GB":
                return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1000
        raise AssertionError("unreachable")

    def summary(self) -> str:
        """One line: ``REC off``, ``REC 2 files, 3 runs, 12.3 MB``, ``RECORDING FAILED: why``."""
        if self.state == "off":
            return "REC off"
        if self.failed:
            return f"RECORDING FAILED: {self.error or 'no reason given'}"
        return f"REC {self.files} file{'s' * (self.files != 1)}, {self.runs} run{'s' * (self.runs != 1)}, {self.size}"


def _count(obj: dict[str, Any], key: str) -> int:
    val = obj.get(key, 0)
    if isinstance(val, bool) or not isinstance(val, int) or val < 0:
        raise ValueError(f"recording.{key} must be a count (an int >= 0), not {val!r}")
    return val


def from_status(header: dict[str, Any]) -> RecordingHealth | None:
    """The health in a status packet's header / control reply; None when it has no ``recording``
    (a daemon older than the field). Raises ValueError (one line) on a malformed object."""
    rec = header.get("recording")
    if rec is None:
        return None
    if not isinstance(rec, dict):
        raise ValueError(f"recording must be an object, not {type(rec).__name__}")
    state = rec.get("state")
    if state not in RECORDING_STATES:
        raise ValueError(f"unknown recording state {state!r}; known: {', '.join(RECORDING_STATES)}")
    path, error = rec.get("path", ""), rec.get("error", "")
    if not isinstance(path, str) or not isinstance(error, str):
        raise ValueError("recording.path and recording.error must be strings")
    return RecordingHealth(state, path, _count(rec, "files"), _count(rec, "runs"), _count(rec, "bytes"),
                           " ".join(error.split()))


def from_osc(address: str, args: Sequence[Any], prev: RecordingHealth | None = None) -> RecordingHealth | None:
    """Fold one OSC message into ``prev``; None when ``address`` is not a recording address.
    The daemon sends the state first and, while failed, the error next. Raises ValueError on bad args."""
    prev = prev or RecordingHealth()
    if address == OSC_STATE:
        if len(args) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise ValueError(f"{OSC_STATE} takes (i state, i files), not {list(args)!r}")
        code, files = args
        if not 0 <= code < len(RECORDING_STATES) or files < 0:
            raise ValueError(f"{OSC_STATE}: state {code} is not 0..{len(RECORDING_STATES) - 1} or files {files} < 0")
        state = RECORDING_STATES[code]
        return RecordingHealth(state, files=files, error=prev.error if state == "failed" else "")
    if address == OSC_ERROR:
        if len(args) != 1 or not isinstance(args[0], str):
            raise ValueError(f"{OSC_ERROR} takes (s why), not {list(args)!r}")
        return replace(prev, state="failed", error=" ".join(args[0].split()))
    return None
