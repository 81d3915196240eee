"""Traces: recorded runs on disk, one append-only file of CRC-framed wire Packets.

Why this shape: every record is exactly the bytes a ZeroMQ subscriber receives
(``bridge.protocol``), so there is one array format, not two, and replay can send the
stored bytes as they are. A length + CRC32 frame per record makes truncation and bit rot
detectable and nameable (record number, byte offset). The writer fsyncs each record and
renames ``PATH.partial`` -> ``PATH`` only after an ``end`` packet, so a file named ``PATH``
always ends with a finished run and a crash leaves a readable ``PATH.partial``.

Layout (little-endian; docs/TRACE.md has the byte table and a numpy-only reader)::

    preamble  8s magic b"STPXTRAC", u16 version, u16 flags, u32 json_len,
              json_len bytes of a UTF-8 JSON line ("\\n"-terminated), 0x00 pad to 8
    record    4s b"SXRC", u32 payload_len, u32 crc32(payload), u32 record_index,
              payload (one wire v1 message), 0x00 pad to 8          -- repeated
"""

from __future__ import annotations

import json
import logging
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
VERSION = 1
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, flags, json_len
RECORD_MARK = b"SXRC"
RECORD = struct.Struct("<4sIII")  # mark, payload_len, crc32, record_index
MAX_RECORD = 1 << 31
PARTIAL_SUFFIX = ".partial"
FORMAT_NAME = "stepx-trace"


class TraceError(ValueError):
    """The file is not a readable StepX trace; the message names the file, record and offset."""


class TraceFormatError(TraceError):
    """Not a trace at all, or a version this reader does not know (bad magic, bad preamble)."""


class TraceCorruptError(TraceError):
    """A record's bytes are damaged: CRC mismatch, bad record mark, or an undecodable payload."""


class TracePartialError(TraceError):
    """The trace stops early: a short record at the end, or a run without its ``end`` record."""


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


def encode_preamble(info: dict[str, Any]) -> bytes:
    """The file preamble: magic, version, and one JSON line describing the format."""
    line = (json.dumps(info, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")
    head = PREAMBLE.pack(MAGIC, VERSION, 0, len(line)) + line
    return head + b"\x00" * (_align8(len(head)) - len(head))


def encode_record(payload: bytes, index: int) -> bytes:
    """One framed record: mark, length, CRC32 of the payload, index, payload, pad to 8."""
    head = RECORD.pack(RECORD_MARK, len(payload), zlib.crc32(payload) & 0xFFFFFFFF, index & 0xFFFFFFFF)
    return head + payload + b"\x00" * (_align8(len(payload)) - len(payload))


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


class TraceWriter:
    """Record Packets to ``path``; a fan-out Sink (``name``, ``encoding``, ``send``, ``close``).

    Writes go to ``PATH.partial``, each record flushed and fsynced; an ``end`` packet renames
    the file atomically to ``PATH`` (and a later ``run`` packet renames it back while that run
    is written, so ``PATH`` always names a file whose last run finished). ``append=True``
    continues an existing finished trace (a daemon session: one file, many runs).
    ``skip_kinds`` are not recorded (status heartbeats by default).

    ``lossless = True`` tells a fan-out that this sink must see every packet (FanOut's
    latest-wins slots would otherwise drop steps when a disk stalls).
    """

    lossless = True  # Sink (bridge.stream.fanout): every packet, in order, on its own thread
    inline = False

    def __init__(self, path: str | os.PathLike[str], *, encoding: str = "float16", append: bool = False,
                 fsync: bool = True, skip_kinds: tuple[str, ...] = ("status",), name: str = "record") -> None:
        if encoding not in wire.ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(wire.ENCODINGS)}")
        self.name, self.encoding = name, encoding
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.fsync, self.skip_kinds = fsync, frozenset(skip_kinds)
        self.records = 0
        self._lock = threading.Lock()
        self._open_run = False  # a run packet was written and its end not yet
        self._has_run = False  # at least one run packet is in the file
        self._named_final = False  # the open file is currently called PATH (not PATH.partial)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():  # an earlier writer stopped mid-run (a crash): keep what it wrote
            aside = _set_aside(self.partial, "interrupted")
            log.warning("%s was left by a recording that never finished; kept as %s", self.partial, aside)
        if append and self.path.exists():
            reader = TraceReader(self.path)  # raises if damaged or unfinished: never append to those
            self.records, self._has_run = len(reader.index), True
            reader.close()
            os.replace(self.path, self.partial)
            self._f = open(self.partial, "r+b")
            self._f.seek(reader.data_end)
            self._f.truncate()
        else:
            self._f = open(self.partial, "wb")
            self._f.write(encode_preamble({
                "format": FORMAT_NAME, "version": VERSION, "payload": "stepx wire v1 (docs/PROTOCOL.md)",
                "record": "<4sIII: b'SXRC', payload_len, crc32(payload), record_index; payload; pad to 8",
                "encoding": encoding, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }))
            self._sync()

    def _sync(self) -> None:
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def _sync_dir(self) -> None:
        if self.fsync and hasattr(os, "O_DIRECTORY"):
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_bytes(self, payload: bytes, kind: str) -> None:
        """Append one encoded Packet (``kind`` drives the PATH/PATH.partial renames)."""
        with self._lock:
            if self._f.closed:
                raise ValueError(f"trace {self.path} is closed")
            if self._named_final:  # being written again: unfinished until the next end
                os.replace(self.path, self.partial)
                self._named_final = False
            self._f.write(encode_record(payload, self.records))
            self.records += 1
            self._sync()
            if kind == "run":
                self._open_run = self._has_run = True
            elif kind == "end":
                self._open_run = False
            if self._has_run and not self._open_run:
                self._finalise()

    def _finalise(self) -> None:
        """Atomically give the file its final name (every run in it has ended)."""
        os.replace(self.partial, self.path)
        self._named_final = True
        self._sync_dir()

    def send(self, packet: Any, data: bytes | None = None) -> None:
        """Sink interface: record the pre-encoded ``data`` (encoded here if not given)."""
        if packet.kind in self.skip_kinds:
            return
        self.write_bytes(data if data is not None else wire.encode(packet, self.encoding), packet.kind)

    def close(self) -> None:
        """Flush and close. Without a final ``end`` the file stays ``PATH.partial`` (on purpose)."""
        with self._lock:
            if self._f.closed:
                return
            self._sync()
            self._f.close()
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
    """Read a trace written by :class:`TraceWriter`, checking every frame and CRC on open.

    Opening scans the file once and builds ``index`` (one :class:`RecordInfo` per record) and
    ``runs``. A damaged file raises :class:`TraceFormatError` / :class:`TraceCorruptError`; a
    file that stops early (short last record, or a last run without ``end``) raises
    :class:`TracePartialError` unless ``allow_partial=True``, in which case ``partial`` is True
    and ``problem`` says what is missing. If ``PATH`` does not exist but ``PATH.partial`` does,
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
        self.path = path
        self.index: list[RecordInfo] = []
        self.runs: list[RunInfo] = []
        self.problem: str | None = None
        self.truncated_at: int | None = None
        self._f = open(path, "rb")
        try:
            self.info, self.data_start = self._read_preamble()
            self._scan()
        except BaseException:
            self._f.close()
            raise
        self.data_end = self.index[-1].offset + RECORD.size + _align8(self.index[-1].length) if self.index \
            else self.data_start
        if self.problem is None:
            if not self.runs:
                self.problem = "the trace holds no run packet"
            elif not self.runs[-1].ended:
                r = self.runs[-1]
                last = [self.index[i].step for i in r.records if self.index[i].kind == "step"]
                self.problem = (f"run {r.run_id!r} (run #{r.number}) has no end record: it stops after "
                                f"{len(last)} step packets (last step {last[-1] if last else None} of "
                                f"{r.header.get('total_steps')})")
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
        if version != VERSION:
            raise TraceFormatError(f"{self.path}: trace version {version}; this reader reads version {VERSION}")
        line = self._f.read(jlen)
        try:
            if len(line) < jlen:
                raise ValueError(f"only {len(line)} of {jlen} bytes")
            info = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TraceFormatError(f"{self.path}: preamble JSON line at byte {PREAMBLE.size} is unreadable: {exc}") from None
        return info, _align8(PREAMBLE.size + jlen)

    def _scan(self) -> None:
        f, off, i = self._f, self.data_start, 0
        size = os.fstat(f.fileno()).st_size
        while off < size:
            f.seek(off)
            raw = f.read(RECORD.size)
            if len(raw) < RECORD.size:
                self._truncated(off, i, f"record #{i} at byte {off}: only {len(raw)} of the {RECORD.size} frame bytes")
                return
            mark, n, crc, idx = RECORD.unpack(raw)
            if mark != RECORD_MARK:
                raise TraceCorruptError(f"{self.path}: record #{i} at byte {off}: bad record mark {mark!r} "
                                        f"(expected {RECORD_MARK!r}); the file is corrupt here")
            if n > MAX_RECORD:
                raise TraceCorruptError(f"{self.path}: record #{i} at byte {off}: impossible length {n}")
            payload = f.read(n)
            if len(payload) < n:
                self._truncated(off, i, f"record #{i} at byte {off}: payload has {len(payload)} of {n} bytes")
                return
            if zlib.crc32(payload) & 0xFFFFFFFF != crc:
                raise TraceCorruptError(f"{self.path}: record #{i} at byte {off}: CRC mismatch "
                                        f"(stored {crc:08x}, computed {zlib.crc32(payload) & 0xFFFFFFFF:08x}); "
                                        f"the record is corrupt")
            if idx != i & 0xFFFFFFFF:
                raise TraceCorruptError(f"{self.path}: record #{i} at byte {off}: frame says index {idx}; "
                                        f"records are missing or out of order")
            try:
                _topic, head, _block = wire.split(payload)
                wire.decode(payload)  # validates the array table against the data block
            except wire.WireError as exc:
                raise TraceCorruptError(f"{self.path}: record #{i} at byte {off}: bad wire payload: {exc}") from None
            h = head.get("header") or {}
            step = h.get("step")
            rec = RecordInfo(i, off, n, head["kind"], h.get("run_id"), step if isinstance(step, int) else None)
            self._add(rec, h)
            off += RECORD.size + _align8(n)
            i += 1

    def _truncated(self, off: int, i: int, what: str) -> None:
        self.truncated_at = off
        self.problem = f"truncated at {what} (file ends at byte {os.fstat(self._f.fileno()).st_size})"

    def _add(self, rec: RecordInfo, header: dict[str, Any]) -> None:
        pos = len(self.index)
        self.index.append(rec)
        if rec.kind == "run":
            self.runs.append(RunInfo(len(self.runs), rec.run_id, dict(header)))
        elif not self.runs:
            if rec.kind != "status":
                raise TraceCorruptError(f"{self.path}: record #{rec.index} at byte {rec.offset}: a {rec.kind!r} "
                                        f"packet before any run packet")
            return
        self.runs[-1].records.append(pos)
        if rec.kind == "end":
            self.runs[-1].ended = True

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
        rec = self.index[pos]
        self._f.seek(rec.offset)
        raw = self._f.read(RECORD.size + rec.length)
        data = raw[RECORD.size:]
        if len(data) != rec.length or zlib.crc32(data) & 0xFFFFFFFF != RECORD.unpack_from(raw)[2]:
            raise TraceCorruptError(f"{self.path}: record #{rec.index} at byte {rec.offset} changed since it was opened")
        return data

    def read(self, pos: int) -> Any:
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

    def packets(self, run: int | str | None = None, start_step: int | None = None) -> Iterator[Any]:
        """Decoded Packets in file order (see :meth:`positions` for ``run`` / ``start_step``)."""
        for pos in self.positions(run, start_step):
            yield self.read(pos)

    def steps(self, run: int | str | None = None, start_step: int | None = None) -> Iterator[Any]:
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
