"""The show's recorder: a trace Sink that rotates into numbered files and reports its health.

Why: a show runs all night. One file that grows forever fills the disk, and a recorder that
fails (disk full, file removed) must say so where the operator looks (the daemon's status), not
only in a log. :class:`Recorder` wraps :class:`~bridge.trace.TraceWriter`:

* **Rotation, at run boundaries only.** When a run starts and the open file already holds a run,
  the file is closed and the next numbered one (``show.stepx`` → ``show.0001.stepx``,
  :mod:`bridge.trace_files`) opened if ``max_runs`` runs are in it, or if the file plus one more
  run as large as the last one would pass ``max_bytes``. A run is never split; a run larger than
  the cap goes whole into a file of its own. Each file is a complete trace on its own.
* **Never over a file.** A numbered file is created with ``O_EXCL`` at a number above every one
  in use beside it (finished or ``.partial``), so nothing is overwritten and the numbers keep
  recording order.
* **Old files go only when asked.** With ``keep``, after each rotation the oldest finished files
  of the recording beyond ``keep`` (the open one counts) are deleted, each named in the log.
* **Health.** :meth:`recording` is a small JSON-able dict for the status packet (docs/PROTOCOL.md,
  ``recording``): ``state`` (``off`` / ``recording`` / ``failed``), ``path``, ``files``, ``runs``,
  ``bytes``, ``error``. A failed write, a next file that cannot be made, or a disk under
  ``min_free`` bytes when a run starts stops the recorder (``state`` ``failed``, one error line); the rest of the
  show goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from bridge.protocol import RECORDING_STATES
from bridge.trace import TraceError, TraceWriteError, TraceWriter
from bridge.trace_files import highest_number, numbered, rotated_files

log = logging.getLogger(__name__)

#: what a show without a recorder reports
RECORDING_OFF: dict[str, Any] = {"state": "off"}
MAX_ERROR = 400  # characters of an error kept in the status (it travels once a second)


@runtime_checkable
class RecordingReport(Protocol):
    """A sink that reports the recording's health for the daemon's status (the :class:`Recorder`)."""

    def recording(self) -> dict[str, Any]: ...


def free_bytes(folder: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem of ``folder`` (its nearest existing parent)."""
    for p in [folder, *folder.parents]:
        if p.exists():
            return shutil.disk_usage(p).free
    return shutil.disk_usage(".").free


def check_free(path: Path, min_free: int) -> None:
    """OSError (ENOSPC) naming the numbers if the disk of ``path`` has less than ``min_free`` bytes free."""
    if min_free <= 0:
        return
    free = free_bytes(path.parent)
    if free < min_free:
        raise OSError(28, f"only {free / 2**20:.0f} MB free on the disk of {path.parent}, under the "
                          f"{min_free / 2**20:.0f} MB --record-min-free-mb asks for")


class Recorder:
    """A fan-out Sink (``lossless``: every packet, in order) recording to ``path`` and rotating;
    see the module docstring. ``existing`` applies to ``path`` itself, as for a plain TraceWriter;
    with rotation on and ``append``, the newest file of the recording is continued."""

    name = "record"
    encoding = "float16"
    inline = False
    lossless = True

    def __init__(self, path: str | os.PathLike[str], *, existing: str = "append", max_bytes: int | None = None,
                 max_runs: int | None = None, keep: int | None = None, min_free: int = 0, fsync: bool = True,
                 writer: Callable[..., TraceWriter] = TraceWriter) -> None:
        for label, v in (("max_bytes", max_bytes), ("max_runs", max_runs), ("keep", keep)):
            if v is not None and v < 1:
                raise ValueError(f"{label} must be at least 1, got {v}")
        self.base = Path(path)
        self.max_bytes, self.max_runs, self.keep, self.min_free = max_bytes, max_runs, keep, min_free
        self._new_writer = writer
        self._fsync = fsync
        self.files = 1
        self.deleted: list[Path] = []
        self._last_run_bytes = 0  # size of the last whole run written (the estimate for the next)
        self._run_start = 0
        check_free(self.base, min_free)
        self._writer = self._open_first(existing)
        if self._writer.runs:  # continuing a file: its runs so far say how large the next may be
            self._last_run_bytes = self._writer.bytes // self._writer.runs
        self._error = ""

    @property
    def rotating(self) -> bool:
        return self.max_bytes is not None or self.max_runs is not None

    def _open_first(self, existing: str) -> TraceWriter:
        """``existing`` applies to the named file and, under ``refuse``, to its numbered files too
        (they are the same recording); a rotating recording appended to continues in its newest
        file, or in a new one after it if that one was cut off mid-run (left as it is)."""
        top = highest_number(self.base)
        if top and existing == "refuse":
            raise FileExistsError(f"{numbered(self.base, top)} (or its .partial) already holds part of a rotated "
                                  f"recording named {self.base.name}; refusing to start another under that name. "
                                  f"Choose another path, or say what to do with it: append (continue it) or overwrite")
        if top and existing == "overwrite":
            log.warning("--record-existing overwrite replaces %s only; the numbered files beside it (up to %s) "
                        "stay, and new ones are numbered after them", self.base, numbered(self.base, top).name)
        if not (self.rotating and existing == "append"):
            top = 0
        if top == 0:
            return self._new_writer(self.base, existing=existing, fsync=self._fsync)
        newest = numbered(self.base, top)
        if newest.is_file():
            log.info("recording continues in %s, the newest file of %s", newest, self.base)
            return self._new_writer(newest, existing="append", fsync=self._fsync)
        log.warning("%s.partial was cut off mid-run; kept as it is, recording continues after it", newest)
        return self._claim(top + 1)

    def _claim(self, number: int) -> TraceWriter:
        """A writer on a new numbered file, ``number`` or the next free one above it (O_EXCL)."""
        for _attempt in range(100):  # another writer may take a number between our look and our claim
            try:
                return self._new_writer(numbered(self.base, number), fsync=self._fsync, exclusive=True)
            except FileExistsError:
                number += 1
        raise FileExistsError(f"no free numbered file beside {self.base}")

    @property
    def writer(self) -> TraceWriter:
        """The writer of the file now open."""
        return self._writer

    @property
    def failed(self) -> str | None:
        """Why the recorder stopped, or None while it records."""
        return self._error or None

    # -- health --------------------------------------------------------------------------------
    def recording(self) -> dict[str, Any]:
        """The status packet's ``recording`` object: a fresh dict, read from the writer when asked
        (about once a second, from any thread), not rebuilt at every packet."""
        w = self._writer
        state = "failed" if self._error else "recording"
        assert state in RECORDING_STATES
        return {"state": state, "path": str(w.current), "files": self.files, "runs": w.runs,
                "bytes": w.bytes, "error": self._error[:MAX_ERROR]}

    def _stop(self, why: str) -> None:
        if not self._error:
            self._error = why
            log.error("recording stopped: %s", why)

    # -- sink ----------------------------------------------------------------------------------
    def send(self, packet: Any, data: bytes | None = None) -> None:
        """Record ``packet`` (rotating first if it starts a run that should go to a new file);
        once the recorder has failed, packets are dropped (the status says so) and nothing raises."""
        if self._error:
            return
        starts = packet.kind == "run" and not self._replay(packet)
        if starts:  # the disk's floor before every run, rotated or not: stop here, not at ENOSPC mid-run
            try:
                check_free(self.base, self.min_free)
            except OSError as exc:
                self._stop(str(exc.strerror or exc))
                return
        try:
            if starts and self._writer.runs and self._should_rotate():
                self._rotate()
            before = self._writer.bytes
            self._writer.send(packet, data)
            if packet.kind == "run" and self._writer.bytes > before:
                self._run_start = before
            elif packet.kind == "end" and self._writer.bytes > before:
                self._last_run_bytes = self._writer.bytes - self._run_start
            w = self._writer
            if self.max_bytes is not None and w.open_run and w.runs > 1 and w.bytes > self.max_bytes:
                self._move_open_run()
        except TraceWriteError as exc:  # the writer cut the file back and logged the one line
            self._error = str(exc.strerror or exc)
            return
        except (OSError, TraceError) as exc:  # the next file could not be made
            self._stop(f"cannot open the next file of {self.base}: {getattr(exc, 'strerror', None) or exc}")
            return

    def _replay(self, packet: Any) -> bool:
        return self._writer.skip_replays and packet.header.get("replay") is True

    def _should_rotate(self) -> bool:
        w = self._writer
        if self.max_runs is not None and w.runs >= self.max_runs:
            return True
        return self.max_bytes is not None and w.bytes + self._last_run_bytes > self.max_bytes

    def _rotate(self) -> None:
        """Close the open file (its last run ended: it has its final name) and open the next number."""
        self._writer.close()
        self._open_next()
        self._run_start = self._writer.bytes
        self._drop_oldest()

    def _move_open_run(self) -> None:
        """The open run outgrew a file that holds earlier runs: carry it whole into the next file."""
        old = self._writer
        self._open_next()
        self._run_start = self._writer.bytes
        try:
            moved = old.move_open_run(self._writer)
        finally:  # moved or not, the old file is whole: its runs (and, if the move failed, this one) stay
            old.close()
        self._drop_oldest()
        log.info("run moved whole (%d records) from %s to %s: it would have taken the file past %d bytes",
                 moved, old.path, self._writer.path, self.max_bytes)

    def _open_next(self) -> None:
        """Open the next numbered file of the recording (O_EXCL, above every number in use)."""
        self._writer = self._claim(highest_number(self.base) + 1)
        self.files += 1
        log.info("recording continues in %s", self._writer.path)

    def _drop_oldest(self) -> None:
        """Delete the oldest finished files of the recording beyond ``keep`` (asked for by the user)."""
        if self.keep is None:
            return
        files = [p for p in rotated_files(self.base) if p != self._writer.path]
        for old in files[: max(0, len(files) - (self.keep - 1))]:  # the open file is one of the kept
            try:
                old.unlink()
                self.deleted.append(old)
                log.info("deleted %s (--record-keep %d)", old, self.keep)
            except OSError as exc:
                log.warning("could not delete %s (--record-keep): %s", old, exc.strerror or exc)

    def close(self) -> None:
        self._writer.close()
