"""Traces under damage and faults: resync past bad records, old versions, crafted fields, torn
writes on a full disk, recordings never replaced, idle replays never recorded."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bridge.protocol import Packet
from bridge.trace import (
    TraceCorruptError, TraceError, TraceReader, TraceWriter, encode_preamble, encode_record,
)
from bridge import protocol as wire
from tests.test_trace import run_packets, write

ROOT = Path(__file__).resolve().parents[1]


def three_runs() -> list[Packet]:
    return run_packets("r1", seed=1) + run_packets("r2", seed=2) + run_packets("r3", seed=3)


def same(a: Packet, b: Packet) -> bool:
    return a.kind == b.kind and a.header == b.header and all(
        np.array_equal(a.arrays[k], b.arrays[k].astype(a.arrays[k].dtype)) for k in b.arrays)


def test_any_single_flipped_bit_costs_at_most_one_record(tmp_path):
    """Flip one random bit after the preamble, 60 times: every intact record is returned, bit-exact,
    and the damage is reported, never a crash. (A damaged run packet costs its run: its records
    are never attributed to another run.)"""
    path = tmp_path / "t.stepx"
    pk = three_runs()
    write(path, pk)
    clean = path.read_bytes()
    with TraceReader(path) as tr:
        start, expected = tr.data_start, [tr.read(i) for i in range(len(tr))]
        bounds = [(r.offset, tr.index[i + 1].offset if i + 1 < len(tr) else len(clean)) for i, r in enumerate(tr.index)]
        run_size = {r.records[0]: len(r.records) for r in tr.runs}
    rng = random.Random(7)
    damaged = 0
    for _ in range(60):
        data = bytearray(clean)
        at = rng.randrange(start, len(data))
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        hit = next(i for i, (a, b) in enumerate(bounds) if a <= at < b)
        with TraceReader(path, allow_partial=True) as tr:
            got = [tr.read(i) for i in range(len(tr))]
            assert len(got) >= len(pk) - run_size.get(hit, 1)
            assert len(got) + sum(k.records for k in tr.skipped) == len(pk)
            for rec, p in zip(tr.index, got):
                assert same(p, expected[rec.index])
            if tr.skipped:
                damaged += 1
                assert tr.partial and "skipped" in tr.problem
                with pytest.raises(TraceCorruptError, match=r"record #\d+ at byte \d+: .*allow-partial"):
                    TraceReader(path)
    assert damaged > 40  # padding bytes carry no data: a flip there is harmless


def test_a_lost_run_packet_never_lends_its_steps_to_another_run(tmp_path):
    path = tmp_path / "t.stepx"
    write(path, three_runs())
    with TraceReader(path) as tr:
        second = tr.runs[1].records[0]
        off = tr.index[second].offset
    data = bytearray(path.read_bytes())
    data[off] ^= 0xFF  # the mark of run r2's run packet
    path.write_bytes(bytes(data))
    with TraceReader(path, allow_partial=True) as tr:
        assert [r.run_id for r in tr.runs] == ["r1", "r3"]
        assert {tr.index[p].run_id for p in tr.runs[0].records} == {"r1"}
        assert tr.runs[0].ended and tr.runs[1].ended
        reasons = " ".join(k.reason for k in tr.skipped)
        assert "bad record mark" in reasons and "its run packet was lost" in reasons


def test_version_1_traces_still_read(tmp_path):
    pk = run_packets()
    path = tmp_path / "old.stepx"
    path.write_bytes(encode_preamble({"format": "stepx-trace", "version": 1}, version=1)
                     + b"".join(encode_record(wire.encode(p, "float16"), i, version=1) for i, p in enumerate(pk)))
    with TraceReader(path) as tr:
        assert tr.version == 1 and [p.kind for p in tr.packets()] == [p.kind for p in pk]
    with TraceWriter(path, existing="append") as w:  # appending keeps the file's own framing
        for p in run_packets("r2"):
            w.send(p)
    with TraceReader(path) as tr:
        assert tr.version == 1 and [r.run_id for r in tr.runs] == ["r1", "r2"]
    data = bytearray(path.read_bytes())
    with TraceReader(path) as tr:
        data[tr.index[3].offset + 20] ^= 4
    path.write_bytes(bytes(data))
    with TraceReader(path, allow_partial=True) as tr:  # v1 resyncs on the payload CRC alone
        assert len(tr) == 2 * len(pk) - 1 and [k.records for k in tr.skipped] == [1]


@pytest.mark.parametrize("field,value", [("step", 10**30), ("step", -1), ("total_steps", 1.5), ("words", "cat"),
                                         ("map_size", [10**9, 2]), ("run_id", ["x"]), ("timestep", 1e300)])
def test_crafted_fields_are_range_checked(tmp_path, field, value):
    pk = run_packets()
    target = 2 if field in ("step", "timestep") else 0
    pk[target] = Packet(pk[target].kind, {**pk[target].header, field: value}, pk[target].arrays)
    path = tmp_path / "crafted.stepx"
    path.write_bytes(encode_preamble({"format": "stepx-trace", "version": 2})
                     + b"".join(encode_record(wire.encode(p, "float16"), i) for i, p in enumerate(pk)))
    with pytest.raises(TraceCorruptError, match=rf"record #{target} at byte \d+: field out of range: .*'{field}'"):
        TraceReader(path)


def test_export_replay_and_preview_refuse_a_crafted_trace_with_one_clear_line(tmp_path):
    pk = run_packets()
    pk[2] = Packet("step", {**pk[2].header, "step": 10**30}, pk[2].arrays)
    path = tmp_path / "crafted.stepx"
    path.write_bytes(encode_preamble({"format": "stepx-trace", "version": 2})
                     + b"".join(encode_record(wire.encode(p, "float16"), i) for i, p in enumerate(pk)))
    for cmd in (["export", str(path), "-o", str(tmp_path / "x")],
                ["replay", str(path), "--fps", "0", "--delay", "0", "--zmq", "tcp://127.0.0.1:0"],
                ["preview", "--trace", str(path), "--headless", "--out", str(tmp_path / "p"), "--frames", "1"]):
        r = subprocess.run([sys.executable, "-m", "bridge.cli", *cmd], capture_output=True, text=True, timeout=120,
                           cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert r.returncode != 0, (cmd, r.stderr)
        assert "Traceback" not in r.stderr and "field out of range" in r.stderr and "10000000000" in r.stderr, r.stderr


# --- writing ------------------------------------------------------------------------------------

FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, sys.argv[3])
    from tests.test_trace import run_packets
    from bridge.trace import TraceWriter, TraceWriteError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    w = TraceWriter(sys.argv[1])
    pk = run_packets("r1", steps=4, size=8) + run_packets("r2", steps=40, size=64)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    try:
        for p in pk:
            w.send(p)
    except TraceWriteError as exc:
        print("FAILED", w.records, exc)
    try:
        w.send(pk[0])
    except TraceWriteError:
        print("STILL-STOPPED")
    w.close()
""")


def test_a_full_disk_stops_the_writer_at_the_last_whole_record(tmp_path):
    """RLIMIT_FSIZE is the full disk: the kernel refuses the write that crosses it (EFBIG)."""
    path = tmp_path / "full.stepx"
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(path), "60000", str(ROOT)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FAILED" in r.stdout and "STILL-STOPPED" in r.stdout, r.stdout + r.stderr
    kept = int(r.stdout.split()[1])
    assert "recording stopped" in r.stderr and f"keeping the {kept} whole records" in r.stderr
    assert not path.exists()  # run r2 never ended: it is not given the final name
    with TraceReader(path, allow_partial=True) as tr:  # no torn record: nothing to skip
        assert not tr.skipped and len(tr) == kept and tr.truncated_at is None
        assert [r.run_id for r in tr.runs] == ["r1", "r2"] and tr.runs[0].ended and not tr.runs[1].ended
    assert (tmp_path / "full.stepx.partial").stat().st_size == TraceReader(path, allow_partial=True).data_end


def test_existing_recordings_are_refused_appended_or_overwritten_only_as_asked(tmp_path):
    path = tmp_path / "night.stepx"
    write(path, run_packets("r1"))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to replace it.*append.*overwrite"):
        TraceWriter(path)
    assert path.read_bytes() == before
    write(path, run_packets("r2"), existing="append")
    with TraceReader(path) as tr:
        assert [r.run_id for r in tr.runs] == ["r1", "r2"]
    w = TraceWriter(path, existing="overwrite")
    for p in run_packets("r3")[:-1]:
        w.send(p)
    with TraceReader(path) as tr:  # the old file stays until the new run has ended
        assert [r.run_id for r in tr.runs] == ["r1", "r2"]
    w.send(run_packets("r3")[-1])
    w.close()
    with TraceReader(path) as tr:
        assert [r.run_id for r in tr.runs] == ["r3"]
    damaged = bytearray(path.read_bytes())
    damaged[-20] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(TraceError, match="cannot append to"):
        TraceWriter(path, existing="append")
    assert path.read_bytes() == bytes(damaged)


def test_replayed_packets_are_not_recorded(tmp_path):
    path = tmp_path / "r.stepx"
    pk = run_packets("r1")
    with TraceWriter(path) as w:
        for p in pk + [Packet(p.kind, {**p.header, "replay": True}, p.arrays) for p in pk]:
            w.send(p)
    with TraceReader(path) as tr:
        assert len(tr) == len(pk) and len(tr.runs) == 1
