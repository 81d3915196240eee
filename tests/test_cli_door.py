"""Inputs checked at the door: the CLI refuses what control refuses, in one line, before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bridge.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _refused(capsys, argv: list[str]) -> str:
    """Run ``stepx argv``; it must exit 2 with a short message (argparse's or ours)."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: usage + one error line
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) < 300
    return err


@pytest.mark.parametrize("args, message", [
    ([""], "'prompt' must not be empty"),
    (["a red circle", "--steps", "0"], "--steps = 0 is out of range; expected an integer in [1, 500]"),
    (["a red circle", "--steps", "-3"], "--steps = -3 is out of range"),
    (["a red circle", "--steps", "100000"], "--steps = 100000 is out of range"),
    (["a red circle", "--guidance", "nan"], "--guidance must be a number in [0, 50]"),
    (["a red circle", "--seed", "1" + "0" * 400], "--seed = a 401-digit number is out of range"),
    (["a red circle", "--width", "100"], "multiple of 8"),
])
def test_record_refuses_bad_options_before_loading_anything(tmp_path, capsys, args, message):
    out = tmp_path / "x.stepx"
    err = _refused(capsys, ["record", *args, "-o", str(out), "--model", "tiny"])
    assert message in err
    assert not list(tmp_path.iterdir())  # no trace, no .partial


def test_record_output_under_a_file_and_a_missing_device_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    err = _refused(capsys, ["record", "a red circle", "--model", "tiny", "-o", str(blocker / "x.stepx")])
    assert "is a file, not a folder" in err and blocker.read_text() == "mine"
    if not torch.cuda.is_available():
        err = _refused(capsys, ["record", "a red circle", "--model", "tiny", "--device", "cuda", "-o", str(tmp_path / "y.stepx")])
        assert "CUDA is not available here" in err
    err = _refused(capsys, ["record", "a red circle", "--model", "tiny", "--device", "gpu9", "-o", str(tmp_path / "y.stepx")])
    assert "is not a device name" in err


def test_record_reports_words_the_embedded_model_never_saw(tmp_path, capsys):
    assert main(["record", "a red dog above a blue car", "--steps", "2", "-o", str(tmp_path / "x.stepx")]) == 0
    err = capsys.readouterr().err
    assert "never saw 'dog', 'car'" in err
    from bridge.trace import TraceReader

    with TraceReader(tmp_path / "x.stepx") as tr:
        run = next(p for p in tr.packets() if p.kind == "run")
        step = next(p for p in tr.packets() if p.kind == "step")
    assert run.header["unseen_words"] == ["dog", "car"] and run.header["guidance"] == 4.0  # the model's one default
    assert step.header["step_end"] <= step.header["sent"] <= time.time()  # per-step timestamps on the wire


def test_a_stop_grace_that_is_not_a_positive_number_is_refused_at_the_door(capsys):
    for bad in ("0", "-1", "nan"):
        assert "--stop-grace must be a number of seconds > 0" in _refused(capsys, ["serve", "--model", "tiny", "--stop-grace", bad])
    assert "--stop-grace must be" in _refused(capsys, ["record", "x", "--model", "tiny", "--stop-grace", "0"])


def test_serve_refuses_remote_control_without_a_token(capsys):
    err = _refused(capsys, ["serve", "--model", "tiny", "--control", "tcp://0.0.0.0:*", "--osc-control", "",
                            "--allow-remote"])
    assert "without a token" in err and "--allow-remote-without-token" in err


def test_serve_run_for_honours_sigterm():
    """A clean stop (exit 0), not the forced one: ``--stop-grace`` is long enough for any load on the
    machine running the test (the default 5 s ran out on a busy CI machine: exit 143)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--run-for", "600",
                             "--control", "", "--osc-control", "", "--zmq", "tcp://127.0.0.1:*", "--no-idle-replay",
                             "--stop-grace", "120"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # the start-up line: serving
        assert '"serving"' in line, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0  # the --run-for timer no longer keeps the process alive
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_checks_its_playlist_before_loading(tmp_path, capsys):
    bad = tmp_path / "show.txt"
    bad.write_text("# tonight\na red circle\n" + "x" * 2001 + "\n")
    err = _refused(capsys, ["serve", "--model", "tiny", "--playlist", str(bad), "--control", "", "--osc-control", ""])
    assert "line 3: 'prompt' is 2001 characters; at most 2000" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert "holds no prompt" in _refused(capsys, ["serve", "--model", "tiny", "--playlist", str(empty)])
