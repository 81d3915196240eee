"""Trace files: round trip, renames, multiple runs, crashes, corruption, the documented reader."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridge import protocol as wire
from bridge.protocol import Packet
from bridge.stream.fanout import FanOut
from bridge.trace import (
    RECORD, TraceCorruptError, encode_preamble, encode_record, TraceFormatError, TracePartialError, TraceReader, TraceWriter, partial_path,
)

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cat", "table"]


def run_packets(run_id: str = "r1", steps: int = 4, size: int = 8, seed: int = 0, end: bool = True) -> list[Packet]:
    """A synthetic run per docs/CONTRACTS.md: run, step (+ image on odd steps), end."""
    rng = np.random.default_rng(seed)
    out = [Packet("run", {"run_id": run_id, "prompt": "a cat on a table", "words": WORDS, "total_steps": steps,
                          "seed": seed, "model": "synthetic", "width": 16, "height": 12, "map_size": [size, size]})]
    for s in range(steps):
        tex = rng.random((len(WORDS) + 1, size, size), dtype=np.float32)
        out.append(Packet("step", {"run_id": run_id, "step": s, "total_steps": steps, "progress": (s + 1) / steps,
                                   "phase": 0, "words": WORDS}, {"textures": tex}))
        if s % 2:
            out.append(Packet("image", {"run_id": run_id, "step": s, "final": s == steps - 1},
                              {"image": rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)}))
    if end:
        out.append(Packet("end", {"run_id": run_id, "status": "done"}))
    return out


def write(path: Path, packets: list[Packet], **kw) -> None:
    with TraceWriter(path, **kw) as w:
        for p in packets:
            w.send(p)


def test_round_trip_is_bit_exact(tmp_path):
    path = tmp_path / "a.trace"
    pk = run_packets()
    write(path, pk)
    with TraceReader(path) as tr:
        got = list(tr.packets())
        assert not tr.partial and tr.metadata["words"] == WORDS and len(tr) == len(pk)
    assert [g.kind for g in got] == [p.kind for p in pk]
    for g, p in zip(got, pk):
        assert g.header == p.header
        for name, arr in p.arrays.items():
            if arr.dtype == np.float32:
                assert g.arrays[name].dtype == np.float16
                assert np.array_equal(g.arrays[name].view(np.uint16), arr.astype(np.float16).view(np.uint16))
            else:
                assert g.arrays[name].dtype == np.uint8 and np.array_equal(g.arrays[name], arr)


def test_partial_name_until_end_then_atomic_rename(tmp_path):
    path = tmp_path / "b.trace"
    pk = run_packets()
    w = TraceWriter(path)
    for p in pk[:-1]:
        w.send(p)
    assert partial_path(path).exists() and not path.exists()
    w.send(pk[-1])
    assert path.exists() and not partial_path(path).exists()
    w.send(run_packets("r2")[0])  # a second run in the same session: unfinished again
    assert partial_path(path).exists() and not path.exists()
    for p in run_packets("r2")[1:]:
        w.send(p)
    w.close()
    assert path.exists() and not partial_path(path).exists()
    with TraceReader(path) as tr:
        assert [r.run_id for r in tr.runs] == ["r1", "r2"] and all(r.ended for r in tr.runs)
        assert [p.step for p in tr.steps(run="r2")] == [0, 1, 2, 3]


def test_append_to_finished_trace(tmp_path):
    path = tmp_path / "c.trace"
    write(path, run_packets("r1"))
    n = len(TraceReader(path))
    write(path, run_packets("r2", seed=1), append=True)
    with TraceReader(path) as tr:
        assert [r.run_id for r in tr.runs] == ["r1", "r2"]
        assert [i.index for i in tr.index] == list(range(len(tr)))
        assert len(tr) == 2 * n


def test_seek_and_start_step(tmp_path):
    path = tmp_path / "d.trace"
    write(path, run_packets(steps=6))
    with TraceReader(path) as tr:
        assert tr.index[tr.seek(3)].step == 3
        kinds = [(p.kind, p.step) for p in tr.packets(start_step=4)]
        assert kinds[0] == ("run", None) and kinds[1] == ("image", 3) and kinds[2] == ("step", 4)
        assert kinds[-1][0] == "end"
        with pytest.raises(IndexError, match="no step >= 99"):
            tr.seek(99)


def test_killed_writer_leaves_readable_partial(tmp_path):
    path = tmp_path / "crash.trace"
    code = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_trace import run_packets\n"
        "from bridge.trace import TraceWriter\n"
        "w = TraceWriter(sys.argv[1])\n"
        "for p in run_packets(steps=10)[:6]:\n"
        "    w.send(p)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(ROOT / "tests")], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not path.exists() and partial_path(path).exists()
    with pytest.raises(TracePartialError, match="never finished"):
        TraceReader(path)
    with pytest.raises(TracePartialError, match=r"run 'r1' .* has no end record"):
        TraceReader(partial_path(path))
    with TraceReader(path, allow_partial=True) as tr:
        assert tr.partial and "no end record" in tr.problem
        assert [p.step for p in tr.steps()] == [0, 1, 2, 3]


def test_truncated_bytes_name_record_and_offset(tmp_path):
    path = tmp_path / "t.trace"
    write(path, run_packets())
    with TraceReader(path) as tr:
        last = tr.index[-2]  # cut inside the payload of the record before `end`
    data = path.read_bytes()
    path.write_bytes(data[: last.offset + RECORD.size + 10])
    with pytest.raises(TracePartialError, match=rf"record #{last.index} at byte {last.offset}: payload has 10 of"):
        TraceReader(path)
    with TraceReader(path, allow_partial=True) as tr:
        assert tr.partial and tr.truncated_at == last.offset and len(tr) == last.index
        assert len(list(tr.packets())) == last.index


def test_crc_mismatch_is_an_error_naming_the_record(tmp_path):
    path = tmp_path / "x.trace"
    write(path, run_packets())
    with TraceReader(path) as tr:
        rec = tr.index[3]
    data = bytearray(path.read_bytes())
    data[rec.offset + RECORD.size + rec.length - 5] ^= 0x40  # one flipped bit in the array data
    path.write_bytes(bytes(data))
    with pytest.raises(TraceCorruptError, match=rf"record #3 at byte {rec.offset}: CRC mismatch.*allow-partial"):
        TraceReader(path)
    with TraceReader(path, allow_partial=True) as tr:  # the reader steps over the bad record, keeps the rest
        assert tr.partial and [k.records for k in tr.skipped] == [1] and "CRC mismatch" in tr.problem
        assert [r.index for r in tr.index] == [i for i in range(len(run_packets())) if i != 3]


def test_bad_magic_and_bad_mark(tmp_path):
    path = tmp_path / "m.trace"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    with pytest.raises(TraceFormatError, match="bad magic"):
        TraceReader(path)
    good = tmp_path / "g.trace"
    write(good, run_packets())
    with TraceReader(good) as tr:
        rec = tr.index[2]
    data = bytearray(good.read_bytes())
    data[rec.offset: rec.offset + 4] = b"JUNK"
    good.write_bytes(bytes(data))
    with pytest.raises(TraceCorruptError, match=rf"record #2 at byte {rec.offset}: bad record mark"):
        TraceReader(good)


def test_trace_writer_as_fanout_sink(tmp_path):
    path = tmp_path / "f.trace"
    pk = run_packets()
    fan = FanOut([TraceWriter(path)])
    for p in pk:
        fan.publish(p)  # no pacing: the recorder is lossless, however far behind it falls
    fan.close(timeout=30)  # returns as soon as every packet is written
    with TraceReader(path) as tr:
        assert [(i.kind, i.step) for i in tr.index] == [(p.kind, p.step) for p in pk]


def test_documented_minimal_reader_runs_with_numpy_alone(tmp_path):
    doc = (ROOT / "docs" / "TRACE.md").read_text(encoding="utf-8")
    section = doc.split("## Minimal reader", 1)[1]
    listing = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 20 <= len(listing.strip().splitlines()) <= 45
    path = tmp_path / "m.trace"
    pk = run_packets()
    write(path, pk)
    probe = (
        "import sys, pickle\n"
        "sys.modules['bridge'] = None  # any import of the project fails\n"
        + listing +
        "\nout = list(read_trace(sys.argv[1]))\n"
        "kinds = [k for k, h, a in out]\n"
        "tex = [a['textures'] for k, h, a in out if k == 'step']\n"
        "img = [a['image'] for k, h, a in out if k == 'image']\n"
        "import numpy as np\n"
        "np.save(sys.argv[2], np.stack(tex)); np.save(sys.argv[3], np.stack(img))\n"
        "print(','.join(kinds))\n"
    )
    r = subprocess.run([sys.executable, "-I", "-c", probe, str(path), str(tmp_path / "t.npy"), str(tmp_path / "i.npy")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().split(",") == [p.kind for p in pk]
    tex = np.load(tmp_path / "t.npy")
    assert tex.dtype == np.float16
    assert np.array_equal(tex, np.stack([p.arrays["textures"].astype(np.float16) for p in pk if p.kind == "step"]))
    assert np.array_equal(np.load(tmp_path / "i.npy"), np.stack([p.arrays["image"] for p in pk if p.kind == "image"]))
    with TraceReader(path) as tr:
        at = tr.index[2].offset + 5  # the length field of record 2: the reader must resynchronise
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-I", "-c", probe, str(path), str(tmp_path / "t.npy"), str(tmp_path / "i.npy")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().split(",") == [p.kind for i, p in enumerate(pk) if i != 2]
    v1 = tmp_path / "v1.trace"  # a file written before the frame CRC reads with the same listing
    v1.write_bytes(encode_preamble({"format": "stepx-trace", "version": 1}, version=1)
                   + b"".join(encode_record(wire.encode(p, "float16"), i, version=1) for i, p in enumerate(pk)))
    r = subprocess.run([sys.executable, "-I", "-c", probe, str(v1), str(tmp_path / "t.npy"), str(tmp_path / "i.npy")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().split(",") == [p.kind for p in pk], r.stderr


def test_a_recording_left_unfinished_is_kept_aside_not_overwritten(tmp_path):
    path = tmp_path / "show.stepx"
    w = TraceWriter(path)
    for p in run_packets("r1", end=False):  # a writer that dies mid-run leaves PATH.partial
        w.send(p, None)
    w._f.close()
    write(path, run_packets("r2", seed=1))  # the next recording starts; the cut-off one stays
    kept = [f for f in tmp_path.iterdir() if f.name.startswith("show.interrupted-")]
    assert len(kept) == 1 and kept[0].name.endswith(".stepx.partial")
    with TraceReader(kept[0], allow_partial=True) as tr:
        assert tr.partial and [r.run_id for r in tr.runs] == ["r1"] and len(list(tr.steps())) == 4
    with TraceReader(path) as tr:
        assert [r.run_id for r in tr.runs] == ["r2"]
