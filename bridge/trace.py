"""Traces: recorded runs on disk, one append-only file of CRC-framed wire Packets.

Why this shape: every record is exactly the bytes a ZeroMQ subscriber receives
(``bridge.protocol``), so there is one array format, not two, and replay can send the
stored bytes as they are. A length + CRC32 frame per record makes truncation and bit rot
detectable and nameable (record number, byte offset). The writer fsyncs each record and
renames ``PATH.partial`` -> ``PATH`` only after an ``end`` packet, so a file named ``PATH``
always ends with a finished run and a crash leaves a readable ``PATH.partial``.

Version 2 adds a CRC of each record's frame header, so a reader that meets a damaged record
(a flipped bit, a torn write) can tell a true frame from payload bytes that happen to look like
one and resynchronise at the next 8-aligned record mark: one bad record costs that record, not
the rest of the file. Version 1 files (no frame CRC) still read; their resync relies on the
payload CRC alone.

Layout (little-endian; docs/TRACE.md has the byte table and a numpy-only reader)::

    preamble  8s magic b"STPXTRAC", u16 version, u16 flags, u32 json_len,
              json_len bytes of a UTF-8 JSON line ("\\n"-terminated), 0x00 pad to 8
    record    v2: 4s b"SXRC", u32 payload_len, u32 crc32(payload), u32 record_index,
                  u32 reserved (0), u32 crc32(the 20 bytes before it),
              v1: the first four fields only (16 bytes);
              payload (one wire v1 message), 0x00 pad to 8          -- repeated
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bridge import protocol as wire

log = logging.getLogger(__name__)

MAGIC = b"STPXTRAC"
VERSION = 2
VERSIONS = (1, 2)  # what this reader reads
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, flags, json_len
RECORD_MARK = b"SXRC"
RECORD = struct.Struct("<4sIIIII")  # v2: mark, payload_len, crc32(payload), record_index, reserved, crc32(frame[:20])
RECORD_V1 = struct.Struct("<4sIII")  # v1: mark, payload_len, crc32(payload), record_index
FRAMES = {1: RECORD_V1, 2: RECORD}
MAX_RECORD = 1 << 31
#: Ranges of the header fields every tool reads from a file (a crafted trace gets a clear error).
MAX_STEPS = 100_000
MAX_SIDE = 16_384
MAX_WORDS = 4_096
MAX_ID = 256
PARTIAL_SUFFIX = ".partial"
#: what a writer does with a trace already at its path (see TraceWriter)
EXISTING = ("refuse", "append", "overwrite")
FORMAT_NAME = "stepx-trace"


class TraceError(ValueError):
    """The file is not a readable StepX trace; the message names the file, record and offset."""


class TraceFormatError(TraceError):
    """Not a trace at all, or a version this reader does not know (bad magic, bad preamble)."""


class TraceCorruptError(TraceError):
    """A record's bytes are damaged: CRC mismatch, bad record mark, or an undecodable payload."""


class TracePartialError(TraceError):
    """The trace stops early: a short record at the end, or a run without its ``end`` record."""


class TraceWriteError(OSError):
    """The recorder could not write (disk full, I/O error): it stopped, keeping every whole record."""


@dataclass(frozen=True)
class Skipped:
    """A stretch of a trace the reader could not use and stepped over (bytes ``offset`` to ``end``)."""

    offset: int
    end: int
    records: int  # record numbers that are missing there (from the indices either side; 0 if unknown)
    reason: str


def check_fields(kind: str, header: dict[str, Any]) -> None:
    """Raise ValueError unless the fields the project's tools read are of the right type and range.

    Every record read from a file passes through here, so a crafted ``step = 10**30`` is a clear
    error at the door of ``export``, ``replay`` and the preview, not a traceback deep inside them."""

    def whole(name: str, lo: int, hi: int) -> None:
        v = header.get(name)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{kind} field {name!r} = {_short(v)} is not a whole number in {lo}..{hi}")

    whole("step", 0, MAX_STEPS)
    whole("total_steps", 0, MAX_STEPS)
    if kind == "end":  # (elsewhere "steps" may name other things)
        whole("steps", 0, MAX_STEPS)
    whole("width", 0, MAX_SIDE)
    whole("height", 0, MAX_SIDE)
    rid = header.get("run_id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_ID):
        raise ValueError(f"{kind} field 'run_id' = {_short(rid)} is not a string of at most {MAX_ID} characters")
    words = header.get("words")
    if words is not None and (not isinstance(words, list) or len(words) > MAX_WORDS
                              or not all(isinstance(w, str) for w in words)):
        raise ValueError(f"{kind} field 'words' = {_short(words)} is not a list of at most {MAX_WORDS} strings")
    size = header.get("map_size")
    sides = size if isinstance(size, list) and len(size) == 2 else [size]  # [H, W], or one side (square)
    if size is not None and any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE for v in sides):
        raise ValueError(f"{kind} field 'map_size' = {_short(size)} is not [H, W] with sides in 1..{MAX_SIDE}")
    for name in ("progress", "timestep", "guidance"):
        v = header.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) > 1e12):
            raise ValueError(f"{kind} field {name!r} = {_short(v)} is not a finite number")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _align8(n: int) -> int:
    return (n + 7) & ~7


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where a trace lives while it is being written: ``PATH.partial``."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def _set_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to a free ``NAME.<why>-<time>[-N]<rest>`` beside it and return the new path."""
    head, dot, rest = path.name.partition(".")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    for n in range(1000):
        target = path.with_name(f"{head}.{why}-{stamp}{f'-{n}' if n else ''}{dot}{rest}")
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"no free name beside {path} to keep it")


def encode_preamble(info: dict[str, Any], version: int = VERSION) -> bytes:
    """The file preamble: magic, version, and one JSON line describing the format."""
    line = (json.dumps(info, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")
    head = PREAMBLE.pack(MAGIC, version, 0, len(line)) + line
    return head + b"\x00" * (_align8(len(head)) - len(head))


def encode_record(payload: bytes, index: int, version: int = VERSION) -> bytes:
    """One framed record: mark, length, CRC32 of the payload, index (v2: reserved and the
    frame's own CRC32), payload, pad to 8."""
    crc, index = zlib.crc32(payload) & 0xFFFFFFFF, index & 0xFFFFFFFF
    if version == 1:
        head = RECORD_V1.pack(RECORD_MARK, len(payload), crc, index)
    else:
        first = RECORD_V1.pack(RECORD_MARK, len(payload), crc, index) + b"\x00" * 4
        head = first + struct.pack("<I", zlib.crc32(first) & 0xFFFFFFFF)
    return head + payload + b"\x00" * (_align8(len(payload)) - len(payload))


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


class TraceWriter:
    """Record Packets to ``path``; a fan-out Sink (``name``, ``encoding``, ``send``, ``close``).

    Writes go to ``PATH.partial``, each record written whole and fsynced; an ``end`` packet
    renames the file atomically to ``PATH`` (and a later ``run`` packet renames it back while
    that run is written, so ``PATH`` always names a file whose last run finished).

    ``existing`` says what happens when ``PATH`` is already there (a recording is never
    destroyed unless asked): ``"refuse"`` (the default) raises :class:`FileExistsError` naming
    the choices, ``"append"`` continues it (a daemon session: one file, many runs; a damaged
    or unfinished file is refused, never appended to), ``"overwrite"`` replaces it when the
    first run ends. ``append=True`` is ``existing="append"``.

    ``skip_kinds`` are not recorded (status heartbeats by default), nor packets marked
    ``"replay": true`` (the daemon's idle loop re-sends a run already recorded) unless
    ``skip_replays=False``.

    A write that fails (disk full, I/O error) stops the recorder: the file is cut back to the
    last whole record, the error is logged once, ``failed`` says why, and every later ``send``
    raises :class:`TraceWriteError`. What was recorded before stays readable.

    The same holds when the file is taken away under the writer (its folder removed, the file
    deleted: writes would go on into an unlinked file and be lost): a rename that fails, or a
    file found unlinked when a run starts, stops the recorder the same way.

    ``exclusive=True`` creates a new file only: :class:`FileExistsError` if ``PATH`` or
    ``PATH.partial`` is already there (``PATH.partial`` is created with ``O_EXCL``, so two
    writers never take the same name). A rotating recorder claims its numbered files so.

    ``lossless = True`` tells a fan-out that this sink must see every packet (FanOut's
    latest-wins slots would otherwise drop steps when a disk stalls).
    """

    lossless = True  # Sink (bridge.stream.fanout): every packet, in order, on its own thread
    inline = False

    def __init__(self, path: str | os.PathLike[str], *, encoding: str = "float16", append: bool = False,
                 existing: str = "refuse", fsync: bool = True, skip_kinds: tuple[str, ...] = ("status",),
                 skip_replays: bool = True, name: str = "record", exclusive: bool = False) -> None:
        if encoding not in wire.ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(wire.ENCODINGS)}")
        existing = "append" if append else existing
        if existing not in EXISTING:
            raise ValueError(f"existing={existing!r}; expected one of {', '.join(EXISTING)}")
        self.name, self.encoding = name, encoding
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.fsync, self.skip_kinds, self.skip_replays = fsync, frozenset(skip_kinds), skip_replays
        self.records = 0
        self.runs = 0  # run packets in the file (appended-to runs included)
        self.failed: str | None = None
        self.version = VERSION
        self._lock = threading.Lock()
        self._open_run = False  # a run packet was written and its end not yet
        self._run_start = (0, 0)  # (byte offset, record index) of the open run's run record
        self._has_run = False  # at least one run packet is in the file
        self._named_final = False  # the open file is currently called PATH (not PATH.partial)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder; name a trace file inside it")
        try:  # (a new file of a rotating recording never makes its folder: one removed stops the recorder)
            if not exclusive:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(f"{self.path.parent} is not a folder (a file is in the way)") from None
        there = self.path.exists()
        if exclusive:
            self._f = self._claim()
            self._good_end = 0
            self._write_preamble(encoding)
            return
        if there and existing == "refuse":
            raise FileExistsError(f"{self.path} already holds a recording; refusing to replace it. Choose another "
                                  f"path, or say what to do with it: append (add the new runs to it) or overwrite")
        if self.partial.exists():  # an earlier writer stopped mid-run (a crash): keep what it wrote
            aside = _set_aside(self.partial, "interrupted")
            log.warning("%s was left by a recording that never finished; kept as %s", self.partial, aside)
        if there and existing == "append":
            try:
                reader = TraceReader(self.path)  # raises if damaged or unfinished: never append to those
            except TraceError as exc:
                raise TraceError(f"cannot append to {self.path}: {exc}") from None
            self.records, self._has_run, self.version = len(reader.index), True, reader.version
            self.runs = len(reader.runs)
            end = reader.data_end
            reader.close()
            os.replace(self.path, self.partial)
            self._f = open(self.partial, "r+b", buffering=0)
            self._f.truncate(end)
            self._f.seek(end)
            self._good_end = end
        else:
            self._f = open(self.partial, "wb", buffering=0)
            self._good_end = 0
            self._write_preamble(encoding)

    def _claim(self) -> io.FileIO:
        """Create ``PATH.partial`` with O_EXCL, unless ``PATH`` or it exists (FileExistsError)."""
        taken = FileExistsError(f"{self.path} (or {self.partial.name}) already exists; not replacing it")
        if self.path.exists():
            raise taken
        f = open(self.partial, "xb", buffering=0)  # O_CREAT | O_EXCL: atomic, one writer wins
        if self.path.exists():  # finished by another writer between the two looks
            f.close()
            self.partial.unlink(missing_ok=True)
            raise taken
        return f

    @property
    def current(self) -> Path:
        """The name the file has now: ``PATH`` once its last run ended, else ``PATH.partial``."""
        return self.path if self._named_final else self.partial

    @property
    def bytes(self) -> int:
        """Bytes of the file that hold whole records (what a reader would read)."""
        return self._good_end

    def _write_preamble(self, encoding: str) -> None:
        self._write(encode_preamble({
                "format": FORMAT_NAME, "version": VERSION, "payload": "stepx wire v1 (docs/PROTOCOL.md)",
                "record": "<4sIIIII: b'SXRC', payload_len, crc32(payload), record_index, 0, crc32(these 20 bytes); "
                          "payload; pad to 8",
                "encoding": encoding, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }), "the preamble")

    def _write(self, data: builtins.bytes, what: str) -> None:  # (``bytes`` here is the property above)
        """Write ``data`` whole and sync it, or cut the file back to the last whole record and stop."""
        try:
            view, done = memoryview(data), 0
            while done < len(view):  # an unbuffered write may be partial
                done += self._f.write(view[done:])
            if self.fsync:
                os.fsync(self._f.fileno())
        except OSError as exc:
            self._fail(exc, what)
        self._good_end += len(data)

    def _fail(self, exc: OSError, what: str) -> None:
        kept = "nothing" if self.records == 0 else f"the {self.records} whole records before it"
        try:
            self._f.truncate(self._good_end)
            if self.fsync:
                os.fsync(self._f.fileno())
            cut = f"cut back to byte {self._good_end}, keeping {kept}"
        except OSError as exc2:
            cut = f"could not cut back to byte {self._good_end} ({exc2}); readers skip the torn record"
        self._f.close()
        if self._good_end == 0:  # not even the preamble: nothing worth keeping
            self.partial.unlink(missing_ok=True)
        where = self.path if self._named_final else self.partial
        self.failed = f"writing {what} to {where} failed ({exc.strerror or exc}): recording stopped; {cut}"
        log.error("trace %s", self.failed)
        raise TraceWriteError(exc.errno, self.failed) from exc

    def _sync_dir(self) -> None:
        if self.fsync and hasattr(os, "O_DIRECTORY"):
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_bytes(self, payload: builtins.bytes, kind: str) -> None:
        """Append one encoded Packet (``kind`` drives the PATH/PATH.partial renames)."""
        with self._lock:
            if self.failed:
                raise TraceWriteError(self.failed)
            if self._f.closed:
                raise ValueError(f"trace {self.path} is closed")
            if kind == "run":
                self._check_still_there()
            if self._named_final:  # being written again: unfinished until the next end
                self._rename(self.path, self.partial, f"record #{self.records} ({kind})")
                self._named_final = False
            if kind == "run":
                self._run_start = (self._good_end, self.records)
            self._write(encode_record(payload, self.records, self.version), f"record #{self.records} ({kind})")
            self.records += 1
            if kind == "run":
                self._open_run = self._has_run = True
                self.runs += 1
            elif kind == "end":
                self._open_run = False
            if self._has_run and not self._open_run:
                self._finalise()

    @property
    def open_run(self) -> bool:
        """Whether a run was started in this file and has not ended yet."""
        return self._open_run

    def move_open_run(self, to: "TraceWriter") -> int:
        """Move the open run's records (from its ``run`` packet on) to the writer ``to``, then cut
        them from this file, which then ends with its last finished run and takes its final name.

        Why: a rotating recorder moves a run that outgrew a file holding earlier runs, so no run is
        split and a file passes its cap only when it holds a single run. ``to`` gets the records
        (fsynced) before they leave here: a crash in between leaves the run in both files, never in
        neither. Returns the number of records moved; TraceWriteError if either side fails."""
        with self._lock:
            if not self._open_run or self.runs < 2:
                raise ValueError(f"{self.path}: no open run after a finished one to move")
            start, first = self._run_start
            with open(self.partial, "rb") as f:  # (this writer's own handle is write-only)
                f.seek(start)
                block = f.read(self._good_end - start)
            fr, off, moved = FRAMES[self.version], 0, 0
            while off < len(block):
                n = fr.unpack_from(block, off)[1]
                payload = block[off + fr.size: off + fr.size + n]
                kind = payload[:payload.index(b"\x00")].decode("ascii", "replace").removeprefix(wire.TOPIC_ROOT)
                to.write_bytes(payload, kind)
                off, moved = off + fr.size + _align8(n), moved + 1
            try:
                self._f.truncate(start)
                if self.fsync:
                    os.fsync(self._f.fileno())
            except OSError as exc:
                self._fail(exc, "the cut of a run moved to the next file")
            self._good_end, self.records, self.runs, self._open_run = start, first, self.runs - 1, False
            self._finalise()
            return moved

    def _check_still_there(self) -> None:
        """Stop if the open file was unlinked (deleted, or its folder removed): Linux would take
        every later write into a file no one can open again."""
        try:
            gone = os.fstat(self._f.fileno()).st_nlink == 0
        except OSError as exc:
            self._fail(exc, "a run")
        if gone:
            self._fail(FileNotFoundError(2, "the file was deleted, or its folder removed"), "a run")

    def _rename(self, src: Path, dst: Path, what: str) -> None:
        try:
            os.replace(src, dst)
        except OSError as exc:  # the folder was removed, or the file taken away
            self._fail(exc, what)

    def _finalise(self) -> None:
        """Atomically give the file its final name (every run in it has ended)."""
        self._rename(self.partial, self.path, f"the final name {self.path.name}")
        self._named_final = True
        try:
            self._sync_dir()
        except OSError as exc:
            self._fail(exc, f"the folder of {self.path.name}")

    def send(self, packet: wire.Packet, data: builtins.bytes | None = None) -> None:
        """Sink interface: record the pre-encoded ``data`` (encoded here if not given)."""
        if packet.kind in self.skip_kinds or (self.skip_replays and packet.header.get("replay") is True):
            return
        self.write_bytes(data if data is not None else wire.encode(packet, self.encoding), packet.kind)

    def close(self) -> None:
        """Close. Without a final ``end`` the file stays ``PATH.partial`` (on purpose)."""
        with self._lock:
            if self._f.closed:
                return
            self._f.close()
            if self.records == 0:  # nothing was recorded: leave no empty file behind
                self.partial.unlink(missing_ok=True)
                return
            if not self._named_final and self._has_run and not self._open_run:
                self._finalise()
            if not self._named_final:
                log.warning("trace %s closed without an end packet: left as %s (partial)", self.path, self.partial)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordInfo:
    """Where one record lives and what it holds (from the wire header, arrays not decoded)."""

    index: int
    offset: int  # byte offset of the record frame in the file
    length: int  # payload bytes
    kind: str
    run_id: str | None
    step: int | None


@dataclass
class RunInfo:
    """One run of a trace: its ``run`` header and the positions (into ``index``) of its records."""

    number: int
    run_id: str | None
    header: dict[str, Any]
    records: list[int] = field(default_factory=list)
    ended: bool = False


class TraceReader:
    """Read a trace written by :class:`TraceWriter`, checking every frame, CRC and field on open.

    Opening scans the file once and builds ``index`` (one :class:`RecordInfo` per record) and
    ``runs``. A damaged record (bad mark, frame or payload CRC, an undecodable payload, a field
    out of range) does not end the scan: the reader resynchronises at the next true record and
    lists what it stepped over in ``skipped`` (:class:`Skipped`). By default any damage then
    raises :class:`TraceCorruptError` naming the first bad record and how many intact records
    ``allow_partial=True`` would recover; with it, ``partial`` is True, ``problem`` says what
    was skipped or is missing, and every intact record is there.

    A file that stops early (short last record, or a last run without ``end``) raises
    :class:`TracePartialError` unless ``allow_partial=True``. Not a trace at all, or an unknown
    version: :class:`TraceFormatError`. If ``PATH`` does not exist but ``PATH.partial`` does,
    that file is opened (with ``allow_partial``) or named in the error.
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_partial: bool = False) -> None:
        path = Path(path)
        if not path.exists():
            alt = partial_path(path)
            if not alt.exists():
                raise FileNotFoundError(f"no trace at {path}")
            if not allow_partial:
                raise TracePartialError(
                    f"{path} does not exist but {alt} does: that recording never finished "
                    f"(no end record); open it with allow_partial=True / --allow-partial to use what is there")
            path = alt
        if path.is_dir():
            raise TraceFormatError(f"{path} is a folder, not a trace file")
        self.path = path
        self.index: list[RecordInfo] = []
        self.runs: list[RunInfo] = []
        self.skipped: list[Skipped] = []
        self.problem: str | None = None
        self.truncated_at: int | None = None
        self._f = open(path, "rb")
        try:
            self.info, self.data_start = self._read_preamble()
            self._frame = FRAMES[self.version]
            self._scan()
        except BaseException:
            self._f.close()
            raise
        last = self.index[-1] if self.index else None
        self.data_end = last.offset + self._frame.size + _align8(last.length) if last else self.data_start
        if self.skipped:
            first = self.skipped[0]
            lost = sum(k.records for k in self.skipped)
            self.problem = (f"skipped {len(self.skipped)} damaged stretch(es) ({lost} record(s) lost), the first "
                            f"{first.reason}" + (f"; also {self.problem}" if self.problem else ""))
            for k in self.skipped if allow_partial else ():  # strict: the error below says it
                log.warning("%s: %s; skipped bytes %d..%d (%d record(s))", path, k.reason, k.offset, k.end, k.records)
            if not allow_partial:
                self._f.close()
                raise TraceCorruptError(
                    f"{path}: {first.reason}; {len(self.skipped)} damaged stretch(es) in all; "
                    f"pass allow_partial=True / --allow-partial to use the {len(self.index)} intact records")
        if self.problem is None:
            if not self.runs:
                self.problem = "the trace holds no run packet"
            elif not self.runs[-1].ended:
                r = self.runs[-1]
                last_steps = [self.index[i].step for i in r.records if self.index[i].kind == "step"]
                self.problem = (f"run {r.run_id!r} (run #{r.number}) has no end record: it stops after "
                                f"{len(last_steps)} step packets (last step {last_steps[-1] if last_steps else None} "
                                f"of {r.header.get('total_steps')})")
        self.partial = self.problem is not None or path.name.endswith(PARTIAL_SUFFIX)
        if self.partial and self.problem is None:
            self.problem = f"the file is still named {path.name} (the writer never renamed it)"
        if self.partial and not allow_partial:
            self._f.close()
            raise TracePartialError(f"{path}: partial trace: {self.problem}; "
                                    f"pass allow_partial=True / --allow-partial to use the {len(self.index)} "
                                    f"complete records")

    # -- scanning ----------------------------------------------------------------------
    def _read_preamble(self) -> tuple[dict[str, Any], int]:
        raw = self._f.read(PREAMBLE.size)
        if len(raw) < PREAMBLE.size:
            raise TraceFormatError(f"{self.path}: {len(raw)} bytes, too short for a trace preamble "
                                   f"({PREAMBLE.size} bytes); not a StepX trace")
        magic, version, _flags, jlen = PREAMBLE.unpack(raw)
        if magic != MAGIC:
            raise TraceFormatError(f"{self.path}: bad magic {magic!r} at byte 0; a StepX trace starts with {MAGIC!r}")
        if version not in VERSIONS:
            raise TraceFormatError(f"{self.path}: trace version {version}; this reader reads versions "
                                   f"{', '.join(map(str, VERSIONS))}")
        self.version = version
        line = self._f.read(jlen)
        try:
            if len(line) < jlen:
                raise ValueError(f"only {len(line)} of {jlen} bytes")
            info = json.loads(line.decode("utf-8"))
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise TraceFormatError(f"{self.path}: preamble JSON line at byte {PREAMBLE.size} is unreadable: {exc}") from None
        return info, _align8(PREAMBLE.size + jlen)

    def _frame_at(self, mm: mmap.mmap, off: int, size: int) -> tuple[int, int, int] | str:
        """``(payload_len, crc, index)`` of a frame that checks out at ``off``, else why not (a
        string; ``"short"`` when the file ends inside the frame or its payload)."""
        fr = self._frame
        if off + fr.size > size:
            return "short"
        fields = fr.unpack_from(mm, off)
        mark, n, crc, idx = fields[:4]
        if mark != RECORD_MARK:
            return f"bad record mark {bytes(mark)!r} (expected {RECORD_MARK!r})"
        if self.version >= 2 and zlib.crc32(mm[off:off + 20]) & 0xFFFFFFFF != fields[5]:
            return "frame CRC mismatch (the length or index field is damaged)"
        if n > MAX_RECORD:
            return f"impossible length {n}"
        if off + fr.size + n > size:
            return "short"
        got = zlib.crc32(mm[off + fr.size:off + fr.size + n]) & 0xFFFFFFFF
        if got != crc:
            return f"CRC mismatch (stored {crc:08x}, computed {got:08x}); the record is corrupt"
        return n, crc, idx

    def _resync(self, mm: mmap.mmap, start: int, size: int) -> int:
        """Offset of the next 8-aligned frame after ``start`` that checks out (or ``size``)."""
        at = start + 8
        while (at := mm.find(RECORD_MARK, at)) >= 0:
            if at % 8 == 0 and not isinstance(self._frame_at(mm, at, size), str):
                return at
            at += 8 - at % 8 if at % 8 else 8
        return size

    def _scan(self) -> None:
        size = os.fstat(self._f.fileno()).st_size
        if size <= self.data_start:
            return
        with mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            off, expect = self.data_start, 0
            while off < size:
                got = self._frame_at(mm, off, size)
                if got == "short" and self._resync(mm, off, size) == size:  # the file ends inside this record
                    have = size - off - self._frame.size
                    what = (f"only {size - off} of the {self._frame.size} frame bytes" if have < 0 else
                            f"payload has {have} of {RECORD_V1.unpack_from(mm, off)[1]} bytes")
                    self._truncated(off, expect, f"record #{expect} at byte {off}: {what}")
                    return
                if isinstance(got, str):  # damaged: step over it to the next true frame
                    nxt = self._resync(mm, off, size)
                    reason = "the frame is cut short" if got == "short" else got
                    self._skip(off, nxt, 0, f"record #{expect} at byte {off}: {reason}")
                    off = nxt
                    continue
                n, _crc, idx = got
                nxt = off + self._frame.size + _align8(n)
                if idx != expect & 0xFFFFFFFF:
                    if idx < expect and self.index:
                        self._skip(off, nxt, 0, f"record #{expect} at byte {off}: frame says index {idx}; "
                                                f"records are out of order")
                        off = nxt
                        continue
                    missing = idx - expect
                    if self.skipped and self.skipped[-1].end == off:  # the records lost in the stretch just skipped
                        last = self.skipped.pop()
                        self.skipped.append(Skipped(last.offset, last.end, missing, last.reason))
                    else:
                        self._skip(off, off, missing, f"record #{expect} at byte {off}: frame says index {idx}; "
                                                      f"records are missing or out of order")
                    expect = idx
                payload = mm[off + self._frame.size: off + self._frame.size + n]
                why = self._record(off, expect, n, payload)
                lost = self.skipped[-1] if self.skipped else None
                if why and why.startswith("orphan") and lost and lost.end == off and "its run packet" in lost.reason:
                    self.skipped[-1] = Skipped(lost.offset, nxt, lost.records + 1, lost.reason)  # the same lost run
                elif why:
                    self._skip(off, nxt, 1, f"record #{expect} at byte {off}: {why.removeprefix('orphan: ')}")
                off, expect = nxt, expect + 1

    def _record(self, off: int, i: int, n: int, payload: bytes) -> str | None:
        """Index one record whose frame checked out; why it cannot be used, else None."""
        try:
            _topic, head, _block = wire.split(payload)
            wire.decode(payload)  # validates the array table against the data block
        except (wire.WireError, RecursionError) as exc:
            return f"bad wire payload: {exc}"
        h = head.get("header") or {}
        try:
            check_fields(head["kind"], h)
        except ValueError as exc:
            return f"field out of range: {exc}"
        rec = RecordInfo(i, off, n, head["kind"], h.get("run_id"), h.get("step"))
        if rec.kind == "run":
            self.runs.append(RunInfo(len(self.runs), rec.run_id, dict(h)))
        elif rec.kind == "status":
            pass
        elif not self.runs:
            return f"a {rec.kind!r} packet before any run packet"
        elif rec.run_id is not None and rec.run_id != self.runs[-1].run_id:
            return (f"orphan: a {rec.kind!r} packet of run {rec.run_id!r} inside run {self.runs[-1].run_id!r} "
                    f"(its run packet was lost; the run's later records are skipped with it)")
        pos = len(self.index)
        self.index.append(rec)
        if self.runs:
            self.runs[-1].records.append(pos)
            if rec.kind == "end":
                self.runs[-1].ended = True
        return None

    def _skip(self, off: int, end: int, records: int, reason: str) -> None:
        self.skipped.append(Skipped(off, end, records, reason))

    def _truncated(self, off: int, i: int, what: str) -> None:
        self.truncated_at = off
        self.problem = f"truncated at {what} (file ends at byte {os.fstat(self._f.fileno()).st_size})"

    # -- access ------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """The first run's ``run`` header (prompt, words, total_steps, seed, model, ...)."""
        if not self.runs:
            raise TraceError(f"{self.path}: no run packet in this trace")
        return self.runs[0].header

    def run(self, run: int | str = 0) -> RunInfo:
        """A run by number (0-based, negative from the end) or by ``run_id``."""
        if isinstance(run, str):
            for r in self.runs:
                if r.run_id == run:
                    return r
            raise KeyError(f"no run {run!r} in {self.path}; runs: {[r.run_id for r in self.runs]}")
        try:
            return self.runs[run]
        except IndexError:
            raise IndexError(f"run #{run} not in {self.path}: it holds {len(self.runs)} run(s)") from None

    def read_bytes(self, pos: int) -> bytes:
        """The wire payload of ``index[pos]`` (the exact bytes a subscriber would receive)."""
        rec, fr = self.index[pos], self._frame
        self._f.seek(rec.offset)
        raw = self._f.read(fr.size + rec.length)
        data = raw[fr.size:]
        if len(data) != rec.length or zlib.crc32(data) & 0xFFFFFFFF != fr.unpack_from(raw)[2]:
            raise TraceCorruptError(f"{self.path}: record #{rec.index} at byte {rec.offset} changed since it was opened")
        return data

    def read(self, pos: int) -> wire.Packet:
        """Decode ``index[pos]`` into a Packet (arrays are read-only views on fresh bytes)."""
        return wire.decode(self.read_bytes(pos))

    def positions(self, run: int | str | None = None, start_step: int | None = None) -> list[int]:
        """Index positions to play: all records, or one run's; with ``start_step``, a seek:
        the run's ``run`` packet, the latest image before the start, then everything from the
        first step >= ``start_step`` on (end and timeline included)."""
        runs = self.runs if run is None else [self.run(run)]
        out: list[int] = []
        for r in runs:
            recs = list(r.records)
            if start_step is None:
                out += recs
                continue
            first = next((k for k, p in enumerate(recs) if self.index[p].kind == "step"
                          and (self.index[p].step or 0) >= start_step), None)
            if first is None:
                first = next((k for k, p in enumerate(recs) if self.index[p].kind in ("timeline", "end")), len(recs))
            before = [p for p in recs[:first] if self.index[p].kind == "image"]
            out += [recs[0]] + before[-1:] + recs[first:]
        return out

    def packets(self, run: int | str | None = None, start_step: int | None = None) -> Iterator[wire.Packet]:
        """Decoded Packets in file order (see :meth:`positions` for ``run`` / ``start_step``)."""
        for pos in self.positions(run, start_step):
            yield self.read(pos)

    def steps(self, run: int | str | None = None, start_step: int | None = None) -> Iterator[wire.Packet]:
        """Only the ``step`` Packets (optionally of one run, from ``start_step`` on)."""
        for pos in self.positions(run, start_step):
            if self.index[pos].kind == "step":
                yield self.read(pos)

    def seek(self, step: int, run: int | str = 0) -> int:
        """Index position of the first ``step`` record with step >= ``step`` in ``run``."""
        r = self.run(run)
        for p in r.records:
            if self.index[p].kind == "step" and (self.index[p].step or 0) >= step:
                return p
        have = [self.index[p].step for p in r.records if self.index[p].kind == "step"]
        raise IndexError(f"no step >= {step} in run {r.run_id!r}; recorded steps: "
                         f"{have[0] if have else None}..{have[-1] if have else None}")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.index)
