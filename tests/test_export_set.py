"""`stepx export` of a rotated recording: the whole set (as replay resolves it), `--run` counted
across the files, one folder per run that no two files can share, no earlier export written
over, `.partial` files named. Real rotated files from the recorder the rotation tests use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.stream.recorder import Recorder
from bridge.trace import partial_path
from bridge.trace_files import numbered
from tests.test_trace import run_packets


def record(base: Path, run_ids: list[str], max_runs: int) -> None:
    rec = Recorder(base, max_runs=max_runs)
    for i, rid in enumerate(run_ids):
        for p in run_packets(rid, steps=3, size=8, seed=i):
            rec.send(p)
    rec.close()


def exported(out: Path) -> dict[str, str]:
    """folder (relative to ``out``) -> run_id, from every export.json under ``out``."""
    return {m.parent.relative_to(out).as_posix(): json.loads(m.read_text())["run_id"] for m in out.rglob("export.json")}


def export(capsys, *args: str) -> tuple[int, str]:
    code = main(["export", *args])
    return code, capsys.readouterr().err


@pytest.fixture
def show(tmp_path: Path) -> Path:
    base = tmp_path / "rec" / "show.stepx"
    base.parent.mkdir()
    record(base, ["r0", "r1", "r2", "r3", "r4"], max_runs=2)  # [r0 r1] [r2 r3] [r4]
    assert numbered(base, 2).is_file() and not numbered(base, 3).exists()
    return base


def test_the_first_file_exports_every_run_of_the_set_numbered_across_it(show, tmp_path, capsys):
    out = tmp_path / "all"
    code, err = export(capsys, str(show), "-o", str(out), "--csv", "--zip")
    assert code == 0, err
    assert exported(out) == {f"run{i:02d}_r{i}": f"r{i}" for i in range(5)}
    assert "3 files" in err
    # the same run read through its own file gives the same bytes: nothing shifted between files
    alone = tmp_path / "alone"
    code, err = export(capsys, str(numbered(show, 1)), "-o", str(alone), "--run", "1", "--csv")
    assert code == 0, err
    assert exported(alone) == {".": "r3"}
    for f in ("measures.csv", "final.png", "frames/01_table/step_002.png"):
        assert (alone / f).read_bytes() == (out / "run03_r3" / f).read_bytes(), f


def test_globs_only_this_file_and_run_follow_replay(show, tmp_path, capsys):
    glob = sorted(str(p) for p in show.parent.glob("show*.stepx"))
    assert glob[0].endswith("show.0001.stepx")  # the shell's order is not the recording's
    code, err = export(capsys, *glob, "-o", str(tmp_path / "g"))
    assert code == 0, err
    assert exported(tmp_path / "g") == {f"run{i:02d}_r{i}": f"r{i}" for i in range(5)}
    code, err = export(capsys, str(show), "--only-this-file", "-o", str(tmp_path / "o"))
    assert code == 0 and exported(tmp_path / "o") == {"run00_r0": "r0", "run01_r1": "r1"}
    code, err = export(capsys, str(numbered(show, 2)), "-o", str(tmp_path / "n"))  # a numbered file: itself only
    assert code == 0 and exported(tmp_path / "n") == {".": "r4"}
    for sel, rid in (("3", "r3"), ("-1", "r4"), ("r2", "r2")):
        code, err = export(capsys, str(show), "--run", sel, "-o", str(tmp_path / f"run{sel}"))
        assert code == 0 and exported(tmp_path / f"run{sel}") == {".": rid}, err
    code, err = export(capsys, str(show), "--run", "5", "-o", str(tmp_path / "none"))
    assert code == 2 and "3 file(s): they hold 5 run(s)" in err and not (tmp_path / "none").exists()
    code, err = export(capsys, str(show), "--run", "r9", "-o", str(tmp_path / "none"))
    assert code == 2 and "no run 'r9'" in err and not (tmp_path / "none").exists()


def test_the_same_run_id_in_two_files_gets_two_folders(tmp_path, capsys):
    base = tmp_path / "take.stepx"
    record(base, ["same", "same", "other"], max_runs=1)
    out = tmp_path / "out"
    code, err = export(capsys, str(base), "-o", str(out))
    assert code == 0, err
    assert exported(out) == {"run00_same": "same", "run01_same": "same", "run02_other": "other"}
    a, b = (out / d / "frames" / "00_cat" / "step_000.png" for d in ("run00_same", "run01_same"))
    assert a.read_bytes() != b.read_bytes()  # two different runs, both kept


def test_an_earlier_export_is_never_written_over(show, tmp_path, capsys):
    out = tmp_path / "out"
    assert export(capsys, str(show), "-o", str(out))[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = export(capsys, str(show), "-o", str(out), "--alpha", "0.9")
    assert code == 2 and "earlier export" in err and "run00_r0" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, err = export(capsys, str(show), "--run", "0", "-o", str(out / "run00_r0"))  # one run into a used folder
    assert code == 2 and "earlier export" in err
    # a fresh run folder beside the others is fine (nothing of the earlier export is touched)
    code, err = export(capsys, str(show), "--run", "0", "-o", str(out / "again"))
    assert code == 0, err


def test_a_partial_file_is_named_not_skipped_silently(show, tmp_path, capsys):
    partial_path(numbered(show, 3)).write_bytes(b"cut off")  # a crash's leftover
    code, err = export(capsys, str(show), "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "show.0003.stepx.partial is unfinished" in err and "not exported" in err
    assert len(exported(tmp_path / "out")) == 5


def test_record_export_refuses_an_earlier_export_before_the_model_loads(show, tmp_path, capsys):
    out = tmp_path / "out"
    assert export(capsys, str(show), "--run", "0", "-o", str(out))[0] == 0
    trace = tmp_path / "new.stepx"
    code = main(["record", "a cat", "-o", str(trace), "--export", str(out)])
    assert code == 2 and "earlier export" in capsys.readouterr().err
    assert not trace.exists()
