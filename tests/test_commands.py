"""The commands as a user runs them: record (+ export), serve under control and signals, bench."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from bridge.cli import main
from bridge.trace import TraceReader
from bridge.transport.zmq_sub import ZmqSubscriber

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_record_writes_a_trace_and_exports(tmp_path, capsys):
    trace, out = tmp_path / "run.stepx", tmp_path / "export"
    rc = main(["record", "a red circle above a blue square", "--model", "tiny", "--steps", "4", "--seed", "1",
               "-o", str(trace), "--export", str(out), "--focus", "circle"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["words"][2] == "circle"
    with TraceReader(trace) as tr:
        kinds = [p.kind for p in tr.packets()]
        run = tr.metadata
    assert kinds[0] == "run" and kinds.count("step") == 4 and kinds[-1] == "end"
    assert run["focus"] == [2] and run["model"] == "tiny-random-sd"
    assert (out / "final.png").is_file() and (out / "measures.csv").is_file() and (out / "gifs" / "02_circle.gif").is_file()


def test_record_bad_focus_word_fails_clearly(tmp_path, capsys):
    rc = main(["record", "a red circle", "--model", "tiny", "--steps", "2", "-o", str(tmp_path / "x.stepx"), "--focus", "dog"])
    assert rc == 2 and not list(tmp_path.iterdir())  # refused at the door: nothing written
    err = capsys.readouterr().err
    assert "'dog' is not a word of the prompt" in err and "'circle'" in err


@pytest.mark.slow
@pytest.mark.parametrize("sink_process,step_ring", [("off", "off"), ("on", "off"), ("on", None)])  # None: the default, on
def test_serve_control_and_sigterm_finalises_the_trace(tmp_path, sink_process, step_ring):
    pub, ctl, osc = free_port(), free_port(), free_port()
    trace = tmp_path / "show.stepx"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--steps", "400", "--prompt", "a red circle", "--stop-grace", "120",
         "--zmq", f"tcp://127.0.0.1:{pub}", "--control", f"tcp://127.0.0.1:{ctl}", "--osc-control", f"127.0.0.1:{osc}",
         "--record", str(trace), "--no-idle-replay", "--sink-process", sink_process, *(["--step-ring", step_ring] if step_ring else [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sub = ZmqSubscriber(f"tcp://127.0.0.1:{pub}", topics=["stepx/"])
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 20000)
    req.connect(f"tcp://127.0.0.1:{ctl}")
    try:
        steps = 0
        t0 = time.monotonic()
        while steps < 3:
            assert time.monotonic() - t0 < 90, "no steps from the daemon"
            p = sub.recv(timeout=0.5)
            steps += p is not None and p.kind == "step"
        req.send(b'{"cmd": "generate", "steps": -5}')
        bad = json.loads(req.recv())
        assert bad["ok"] is False and "prompt" in bad["error"]
        req.send(b"not json at all")
        assert json.loads(req.recv())["ok"] is False
        req.send(json.dumps({"cmd": "generate", "prompt": "a blue square", "steps": 400, "seed": 3}).encode())
        assert json.loads(req.recv())["ok"] is True
        t0 = time.monotonic()
        while True:  # the new prompt preempts the first within a step
            assert time.monotonic() - t0 < 60
            p = sub.recv(timeout=0.5)
            if p is not None and p.kind == "run" and p.header["prompt"] == "a blue square":
                break
        req.send(b'{"cmd": "status"}')
        status = json.loads(req.recv())
        assert status["ok"] and status["result"]["state"] in ("generating", "idle")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0
        start = next(json.loads(line) for line in proc.stdout.read().splitlines() if '"serving"' in line)
        assert start["phases"] == ("sink process" if sink_process == "on" else "packet worker")  # CPU: phases on the host
        assert start["step_ring"] is (sink_process == "on" and step_ring != "off")
    finally:
        if proc.poll() is None:
            proc.kill()
        req.close()
        sub.close()
    assert trace.is_file() and not Path(str(trace) + ".partial").exists()
    with TraceReader(trace) as tr:
        ends = [p.header["status"] for p in tr.packets() if p.kind == "end"]
        prompts = [r.header["prompt"] if hasattr(r, "header") else None for r in tr.packets() if r.kind == "run"]
    assert ends == ["cancelled", "cancelled"]
    assert prompts == ["a red circle", "a blue square"]


def test_bench_prints_ratios(capsys):
    assert main(["bench", "--arch", "tiny", "--runs", "2", "--warmup", "1", "--steps", "2", "--variants", "capture"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["median_ratio_vs_plain"]) == {"plain", "capture"}
    assert result["median_ratio_vs_plain"]["plain"] == 1.0 and result["median_ratio_vs_plain"]["capture"] > 0


def test_toml_config_fills_options_and_flags_win(tmp_path):
    import argparse

    from bridge.commands import serve
    from bridge.commands.common import apply_config_file, given_flags

    cfg = tmp_path / "show.toml"
    cfg.write_text('steps = 7\nimage-every = 3\nprompt = "a red circle"\nfocus = ["circle"]\n')
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    argv = ["--config", str(cfg), "--steps", "12"]
    args = apply_config_file(parser, given_flags(argv), parser.parse_args(argv), str(cfg))
    assert (args.steps, args.image_every, args.prompt, args.focus) == (12, 3, "a red circle", ["circle"])
    cfg.write_text("stepz = 3\n")
    with pytest.raises(SystemExit):
        apply_config_file(parser, set(), parser.parse_args([]), str(cfg))
