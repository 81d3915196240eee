"""The all-night recording: size and run caps with rotation into numbered files, `--record-keep`,
never a file overwritten, failures that stop the recorder cleanly, and replaying a rotated set.

Real files throughout; the full disk is the kernel's own (RLIMIT_FSIZE in a child: EFBIG) or a
folder really removed. The real `stepx serve` runs are in tests/test_record_serve.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.stream.recorder import Recorder
from bridge.stream.sinks import SinkError, open_recorder
from bridge.trace import TraceReader, partial_path
from bridge.trace_files import base_of, numbered, recording_order, rotated_files
from bridge.transport.osc_encode import message as osc_message
from tests.test_trace import run_packets, write

ROOT = Path(__file__).resolve().parents[1]


def feed(rec: Recorder, runs: list[list]) -> None:
    for packets in runs:
        for p in packets:
            rec.send(p)


def runs_of(path: Path) -> list[str]:
    with TraceReader(path) as tr:  # strict: every file is a complete trace on its own
        return [r.run_id for r in tr.runs]


def test_the_numbered_names_sort_in_recording_order(tmp_path):
    base = tmp_path / "night.show.stepx"
    assert numbered(base, 1).name == "night.show.0001.stepx" and numbered(base, 12345).name == "night.show.12345.stepx"
    assert numbered(tmp_path / "show", 2).name == "show.0002"
    assert base_of(numbered(base, 7)) == base and base_of(base) == base
    # one recording's files in the order written, whatever order the shell listed them in; other
    # recordings keep their place
    other = tmp_path / "other.stepx"
    order = recording_order([numbered(base, 10), other, numbered(base, 2), base, numbered(base, 10000)])
    assert order == [base, numbered(base, 2), numbered(base, 10), numbered(base, 10000), other]


def test_max_runs_rotates_at_run_boundaries_into_complete_numbered_traces(tmp_path):
    base = tmp_path / "show.stepx"
    rec = Recorder(base, max_runs=2)
    feed(rec, [run_packets(f"r{i}", seed=i) for i in range(5)])
    health = rec.recording()
    rec.close()
    files = rotated_files(base)
    assert [f.name for f in files] == ["show.stepx", "show.0001.stepx", "show.0002.stepx"]
    assert [runs_of(f) for f in files] == [["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert not list(tmp_path.glob("*.partial"))
    assert health["state"] == "recording" and health["files"] == 3 and health["runs"] == 1
    assert health["path"] == str(numbered(base, 2)) and health["bytes"] == numbered(base, 2).stat().st_size


def test_max_bytes_never_splits_a_run_and_a_big_run_gets_a_file_of_its_own(tmp_path):
    base = tmp_path / "show.stepx"
    small = [run_packets(f"s{i}", steps=4, size=8, seed=i) for i in range(7)]
    big = run_packets("big", steps=6, size=48, seed=99)
    write(tmp_path / "probe.stepx", small[0])
    one_small = (tmp_path / "probe.stepx").stat().st_size
    cap = int(one_small * 2.5)
    rec = Recorder(base, max_bytes=cap)
    feed(rec, small[:3] + [big] + small[3:])
    rec.close()
    files = rotated_files(base)
    got = [runs_of(f) for f in files]
    assert [r for runs in got for r in runs] == [f"s{i}" for i in range(3)] + ["big"] + [f"s{i}" for i in range(3, 7)]
    assert ["big"] in got  # larger than the cap: whole, alone
    for f, runs in zip(files, got):
        assert f.stat().st_size <= cap or len(runs) == 1, (f.name, f.stat().st_size, cap, runs)
    # every record arrived whole and unchanged, whichever file it ended up in
    with TraceReader(files[got.index(["big"])]) as tr:
        assert [p.header.get("step") for p in tr.packets() if p.kind == "step"] == list(range(6))
        tex = [p.arrays["textures"] for p in tr.packets() if p.kind == "step"]
    assert all((t == p.arrays["textures"].astype("float16")).all() for t, p in
               zip(tex, [p for p in big if p.kind == "step"]))


def test_a_run_that_outgrows_a_shared_file_is_moved_whole(tmp_path):
    """The first runs are small, so the estimate lets a large one start in the same file; when it
    passes the cap it is carried whole to the next file and the first file ends where it was."""
    base = tmp_path / "show.stepx"
    small = run_packets("small", steps=2, size=8)
    write(tmp_path / "probe.stepx", small)
    cap = (tmp_path / "probe.stepx").stat().st_size * 3
    rec = Recorder(base, max_bytes=cap)
    feed(rec, [small, run_packets("grows", steps=12, size=24, seed=3)])
    rec.close()
    assert [runs_of(f) for f in rotated_files(base)] == [["small"], ["grows"]]
    assert base.stat().st_size == (tmp_path / "probe.stepx").stat().st_size


def test_keep_deletes_only_the_oldest_files_and_only_when_asked(tmp_path):
    base = tmp_path / "show.stepx"
    rec = Recorder(base, max_runs=1, keep=2)
    feed(rec, [run_packets(f"r{i}", seed=i) for i in range(5)])
    rec.close()
    assert [f.name for f in rotated_files(base)] == ["show.0003.stepx", "show.0004.stepx"]
    assert [p.name for p in rec.deleted] == ["show.stepx", "show.0001.stepx", "show.0002.stepx"]
    other = tmp_path / "kept"
    rec = Recorder(other / "show.stepx", max_runs=1)  # no --record-keep: nothing is ever deleted
    feed(rec, [run_packets(f"r{i}", seed=i) for i in range(5)])
    rec.close()
    assert len(rotated_files(other / "show.stepx")) == 5 and not rec.deleted
    with pytest.raises(SinkError, match="--record-keep needs rotation"):
        open_recorder(tmp_path / "x.stepx", "append", keep=3)


def test_rotation_never_overwrites_and_numbers_past_what_is_there(tmp_path):
    base = tmp_path / "show.stepx"
    write(base, run_packets("old0"))
    write(numbered(base, 3), run_packets("old3"))
    stray = partial_path(numbered(base, 5))
    stray.write_bytes(b"a crash left this")
    kept = {p: p.read_bytes() for p in (base, numbered(base, 3), stray)}
    rec = Recorder(base, existing="append", max_runs=1)  # the newest file (5) was cut off: start after it
    feed(rec, [run_packets(f"n{i}", seed=i) for i in range(2)])
    rec.close()
    assert all(p.read_bytes() == b for p, b in kept.items())
    assert [f.name for f in rotated_files(base)] == ["show.stepx", "show.0003.stepx", "show.0006.stepx",
                                                     "show.0007.stepx"]
    assert runs_of(numbered(base, 6)) == ["n0"] and runs_of(numbered(base, 7)) == ["n1"]


def test_appending_to_a_rotated_recording_continues_its_newest_file(tmp_path):
    base = tmp_path / "show.stepx"
    rec = Recorder(base, max_runs=2)
    feed(rec, [run_packets(f"a{i}", seed=i) for i in range(3)])
    rec.close()
    rec = Recorder(base, existing="append", max_runs=2)  # a restarted show
    feed(rec, [run_packets(f"b{i}", seed=i) for i in range(2)])
    rec.close()
    assert [runs_of(f) for f in rotated_files(base)] == [["a0", "a1"], ["a2", "b0"], ["b1"]]


def test_a_removed_folder_stops_the_recorder_and_reports_it(tmp_path):
    folder = tmp_path / "night"
    rec = Recorder(folder / "show.stepx", max_runs=1)
    feed(rec, [run_packets("r0")])
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    feed(rec, [run_packets("r1"), run_packets("r2")])  # nothing raises: the show goes on
    health = rec.recording()
    rec.close()
    assert health["state"] == "failed" and "No such file or directory" in health["error"], health
    assert rec.failed and not folder.exists()  # and nothing recreated it behind the user's back


def test_a_deleted_file_stops_the_recorder_at_the_next_run(tmp_path):
    path = tmp_path / "show.stepx"
    rec = Recorder(path)
    feed(rec, [run_packets("r0")])
    path.unlink()  # Linux would take later writes into an unlinked file that no one can open
    feed(rec, [run_packets("r1")])
    assert rec.recording()["state"] == "failed" and "deleted" in rec.recording()["error"]
    rec.close()


FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, sys.argv[3])
    from tests.test_trace import run_packets
    from bridge.stream.recorder import Recorder
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk would
    rec = Recorder(sys.argv[1], max_runs=1)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    for i, steps in enumerate([2, 2, 40, 2]):
        for p in run_packets(f"r{i}", steps=steps, size=32, seed=i):
            rec.send(p)
    print(json.dumps(rec.recording()))
    rec.close()
""")


def test_a_full_disk_mid_run_keeps_every_whole_record_and_reports_the_error(tmp_path):
    import json

    base = tmp_path / "show.stepx"
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(base), "60000", str(ROOT)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    health = json.loads(r.stdout)
    assert health["state"] == "failed" and "File too large" in health["error"], health
    assert health["files"] == 3 and health["path"].endswith("show.0002.stepx.partial")
    assert r.stderr.count("recording stopped") == 1  # one error line, not one per packet
    assert [runs_of(f) for f in rotated_files(base)] == [["r0"], ["r1"]]
    with TraceReader(numbered(base, 2), allow_partial=True) as tr:  # the torn run: whole records, nothing to skip
        assert not tr.skipped and tr.truncated_at is None and tr.runs[0].run_id == "r2" and not tr.runs[0].ended
    assert not numbered(base, 3).exists() and not partial_path(numbered(base, 3)).exists()


def test_a_disk_under_the_floor_is_refused_at_the_door(tmp_path):
    with pytest.raises(SinkError, match="MB free on the disk"):
        open_recorder(tmp_path / "show.stepx", "append", min_free_mb=1e12)
    assert not list(tmp_path.iterdir())


def test_replay_plays_a_rotated_recording_in_order(tmp_path, capsys):
    base = tmp_path / "show.stepx"
    rec = Recorder(base, max_runs=1)
    feed(rec, [run_packets(f"r{i}", seed=i) for i in range(3)])
    rec.close()

    def replayed(*args: str) -> list[str]:
        out = tmp_path / f"copy{len(list(tmp_path.glob('copy*')))}.stepx"
        assert main(["replay", *args, "--fps", "0", "--delay", "0", "--record", str(out)]) == 0, capsys.readouterr().err
        return runs_of(out)

    assert replayed(str(base)) == ["r0", "r1", "r2"]  # the named file brings the rest of its recording
    shell_glob = sorted(str(p) for p in tmp_path.glob("show*.stepx"))  # show.0001.stepx sorts before show.stepx
    assert shell_glob[0].endswith("show.0001.stepx")
    assert replayed(*shell_glob) == ["r0", "r1", "r2"]
    assert replayed(str(base), "--only-this-file") == ["r0"]
    assert replayed(str(numbered(base, 2))) == ["r2"]
    assert replayed(str(base), "--run", "2") == ["r2"] and replayed(str(base), "--run", "r1") == ["r1"]
    assert main(["replay", str(base), "--run", "7", "--delay", "0"]) == 2
    assert "3 run(s)" in capsys.readouterr().err
    partial_path(numbered(base, 3)).write_bytes(b"cut off")  # a crash's leftover: named, not played
    assert replayed(str(base)) == ["r0", "r1", "r2"]
    assert "show.0003.stepx.partial is unfinished" in capsys.readouterr().err


def test_rotation_options_are_checked_at_the_door(capsys):
    for bad in (["--record-max-mb", "0"], ["--record-max-runs", "-1"], ["--record-keep", "x"], ["--record-max-mb", "nan"]):
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--model", "tiny", "--record", "x.stepx", *bad])
        assert exc.value.code == 2
        assert "number above 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["record", "a cat", "--record-max-mb", "5"])  # one run, one file: not an option of record
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_recording_health_goes_out_on_osc_too():
    from bridge.protocol import Packet
    from bridge.transport.osc_out import packet_messages

    ok = packet_messages(Packet("status", {"state": "idle", "recording": {"state": "recording", "files": 3}}))
    assert ok == [osc_message("/stepx/recording", 1, 3)]
    failed = packet_messages(Packet("status", {"recording": {"state": "failed", "files": 1, "error": "disk \udcff full"}}))
    assert failed[0] == osc_message("/stepx/recording", 2, 1) and b"disk" in failed[1]
    assert packet_messages(Packet("status", {"recording": {"state": "nonsense"}})) == []
    assert packet_messages(Packet("status", {"state": "idle"})) == []  # an older daemon: nothing new


def test_a_disk_under_the_floor_at_a_rotation_stops_the_recorder(tmp_path):
    base = tmp_path / "show.stepx"
    rec = Recorder(base, max_runs=1, min_free=1)
    feed(rec, [run_packets("r0")])
    rec.min_free = 1 << 60  # the disk has filled since the start
    feed(rec, [run_packets("r1")])
    health = rec.recording()
    rec.close()
    assert health["state"] == "failed" and "MB free on the disk" in health["error"], health
    assert [runs_of(f) for f in rotated_files(base)] == [["r0"]]


def test_a_disk_under_the_floor_stops_an_unrotated_recording_before_the_next_run(tmp_path):
    """Without rotation the floor is kept too: the recorder stops as a run would start, the file
    holding every whole run so far, instead of writing on until the disk is full mid-run."""
    base = tmp_path / "show.stepx"
    rec = Recorder(base, min_free=1)
    feed(rec, [run_packets("r0")])
    rec.min_free = 1 << 60  # the disk has filled since the start
    feed(rec, [run_packets("r1"), run_packets("r2")])
    health = rec.recording()
    rec.close()
    assert health["state"] == "failed" and "MB free on the disk" in health["error"], health
    assert rotated_files(base) == [base] and runs_of(base) == ["r0"]


def test_refuse_counts_the_numbered_files_and_config_values_are_checked(tmp_path):
    base = tmp_path / "show.stepx"
    write(numbered(base, 2), run_packets("old"))
    with pytest.raises(SinkError, match="part of a rotated recording"):
        open_recorder(base, "refuse", max_runs=1)
    for kw in ({"max_mb": "big"}, {"max_runs": 1.5}, {"keep": True, "max_runs": 1}, {"min_free_mb": float("nan")},
               {"max_mb": float("inf")}, {"max_runs": 0}):
        with pytest.raises(SinkError, match="expected"):
            open_recorder(tmp_path / "x.stepx", "append", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["show.0002.stepx"]


def test_serve_checks_the_recording_options_before_the_model_loads(tmp_path, capsys):
    assert main(["serve", "--model", "tiny", "--record", str(tmp_path / "s.stepx"), "--record-keep", "3"]) == 2
    assert "--record-keep needs rotation" in capsys.readouterr().err
    assert main(["serve", "--model", "tiny", "--record", str(tmp_path / "s.stepx"), "--record-min-free-mb", "nan"]) == 2
    assert "--record-min-free-mb = nan: expected a number of 0 or more" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
