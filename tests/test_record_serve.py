"""A real `stepx serve --record` through a night's trouble: rotation, the recording's folder
removed, a disk that fills (the kernel's EFBIG under RLIMIT_FSIZE), a full disk at the door. The
daemon keeps serving and says what happened in its status (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import zmq

from bridge.protocol import RECORDING_STATES, decode
from bridge.trace import TraceReader, partial_path
from bridge.trace_files import numbered, rotated_files
from tests.test_soak import _ask, _port
from waiting import ARRIVAL_S, wait_until

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def eventually(cond) -> None:
    """Wait for ``cond()`` (a hang guard, not a timing claim)."""
    wait_until(cond, interval=0.1)


class Serve:
    """One `stepx serve --model tiny` with its data and control ports; ``generate`` waits for the run's end."""

    def __init__(self, *flags: str, preexec_fn=None) -> None:
        self.pub, self.ctl = _port(), _port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--no-idle-replay", "--image-every", "0", "--stop-grace", "120",
             "--zmq", f"tcp://127.0.0.1:{self.pub}", "--control", f"tcp://127.0.0.1:{self.ctl}", "--osc-control", "",
             *flags], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=preexec_fn)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"stepx/")
        self.sub.connect(f"tcp://127.0.0.1:{self.pub}")
        self.control = f"tcp://127.0.0.1:{self.ctl}"
        t0 = time.monotonic()
        while self.ask({"cmd": "ping"}, 2.0) is None:
            assert time.monotonic() - t0 < 120 and self.proc.poll() is None, self.stderr()

    def ask(self, req: dict, timeout: float = ARRIVAL_S) -> dict | None:
        return _ask(self.ctx, self.control, json.dumps(req).encode(), timeout)

    def status(self) -> dict:
        reply = self.ask({"cmd": "status"})
        assert reply is not None and reply["ok"], reply
        return reply["result"]

    def generate(self, prompt: str, steps: int) -> dict:
        """Ask for a run and wait for its end packet on the data stream; the last status heartbeat seen."""
        assert self.ask({"cmd": "generate", "prompt": prompt, "steps": steps})["ok"]
        t0, beat = time.monotonic(), {}
        while time.monotonic() - t0 < 120:
            if self.sub.poll(500):
                p = decode(self.sub.recv())
                if p.kind == "status":
                    beat = p.header
                elif p.kind == "end" and p.header.get("replay") is not True:
                    assert p.header["status"] == "done", p.header
                    return beat
        raise AssertionError(f"no end for {prompt!r}: {self.stderr()}")

    def heartbeat(self) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < ARRIVAL_S:
            if self.sub.poll(500):
                p = decode(self.sub.recv())
                if p.kind == "status":
                    return p.header
        raise AssertionError("no heartbeat")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read()[-3000:]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=180)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.sub.close(linger=0)
            self.ctx.term()
        err = self.proc.stderr.read()
        assert code == 0, err[-3000:]
        return err


def test_serve_rotates_and_reports_a_removed_folder_in_its_status(tmp_path):
    folder = tmp_path / "night"
    base = folder / "show.stepx"
    osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the OSC heartbeat's listener
    osc.bind(("127.0.0.1", 0))
    osc.settimeout(ARRIVAL_S)  # the heartbeat's datagrams must come
    serve = Serve("--record", str(base), "--record-max-runs", "1", "--sink-process", "off",
                  "--osc", f"127.0.0.1:{osc.getsockname()[1]}")
    try:
        assert serve.status()["recording"]["state"] == "recording"
        serve.generate("a red circle", 2)
        serve.generate("a blue square", 2)
        rec = serve.status()["recording"]
        assert rec["state"] == "recording" and rec["files"] == 2 and rec["runs"] == 1 and not rec["error"], rec
        eventually(lambda: len(rotated_files(base)) == 2)  # (the recorder's thread may finish just after the stream)
        assert [len(TraceReader(f).runs) for f in rotated_files(base)] == [1, 1]
        shutil.rmtree(folder)  # someone cleans up the disk mid-show
        serve.generate("a green triangle", 2)  # the show goes on
        eventually(lambda: serve.status()["recording"]["state"] == "failed")
        rec = serve.status()["recording"]
        assert rec["state"] == "failed" and "No such file or directory" in rec["error"], rec
        assert serve.heartbeat()["recording"]["state"] == "failed"  # the heartbeat says it too, and on OSC:
        while b"/stepx/recording/error\x00" not in (datagram := osc.recv(65536)):
            pass
        assert b"No such file or directory" in datagram
        serve.generate("a yellow circle", 2)
        assert serve.ask({"cmd": "ping"})["ok"]
    finally:
        osc.close()
        err = serve.stop()
    assert err.count("recording stopped") == 1, err[-3000:]
    assert not folder.exists()


def test_serve_on_a_filling_disk_keeps_every_whole_record_and_keeps_serving(tmp_path):
    """The sink process path: the recorder lives in the child, its health reaches the daemon's status."""
    base = tmp_path / "show.stepx"

    def small_disk() -> None:  # RLIMIT_FSIZE: a write past 600 kB fails with EFBIG, as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    serve = Serve("--record", str(base), "--record-max-runs", "1", "--sink-process", "on", preexec_fn=small_disk)
    try:
        serve.generate("a red circle", 2)  # about 170 kB: fits
        serve.generate("a blue square", 30)  # about 2.4 MB: the disk fills mid-run
        eventually(lambda: serve.status()["recording"]["state"] == "failed")  # (health crosses from the child)
        rec = serve.status()["recording"]
        assert rec["state"] in RECORDING_STATES and "File too large" in rec["error"], rec
        assert rec["path"].endswith("show.0001.stepx.partial")
        serve.generate("a green triangle", 2)  # its end came: the daemon keeps serving
        assert serve.ask({"cmd": "ping"})["ok"]
    finally:
        err = serve.stop()
    assert "Traceback" not in err, err[-3000:]
    assert [len(TraceReader(f).runs) for f in rotated_files(base)] == [1]
    with TraceReader(numbered(base, 1), allow_partial=True) as tr:  # the torn run: whole records only
        assert not tr.skipped and tr.truncated_at is None and not tr.runs[0].ended
        assert partial_path(numbered(base, 1)).stat().st_size == tr.data_end <= 600_000


def test_serve_refuses_a_full_disk_at_the_door(tmp_path):
    base = tmp_path / "show.stepx"
    r = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--record", str(base),
                        "--record-min-free-mb", "1e12", "--control", "", "--osc-control", ""],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "MB free on the disk" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.iterdir())
