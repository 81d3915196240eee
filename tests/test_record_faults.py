"""`stepx record` when things go wrong: an existing file, a full disk, SIGTERM, an error mid-step."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path


from bridge.cli import main
from bridge.runner import Request, Runner
from bridge.trace import TraceReader, partial_path
from tests.test_trace import run_packets, write

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def record(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", "record", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_record_refuses_an_existing_trace_unless_told(tmp_path, capsys):
    path = tmp_path / "take.stepx"
    write(path, run_packets("r1"))
    before = path.read_bytes()
    assert main(["record", "a red circle", "--model", "tiny", "--steps", "2", "-o", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to replace it" in err and "--record-existing append|overwrite" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before
    assert main(["record", "a red circle", "--model", "tiny", "--steps", "2", "-o", str(path),
                 "--record-existing", "append"]) == 0
    with TraceReader(path) as tr:
        assert [r.header["prompt"] for r in tr.runs] == ["a cat on a table", "a red circle"]
    capsys.readouterr()
    assert main(["record", "a red circle", "--model", "tiny", "--steps", "2", "-o", str(tmp_path / "take.stepx" / "x")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_record_on_a_full_disk_fails_without_a_success_summary(tmp_path):
    out = tmp_path / "full.stepx"

    def full_disk() -> None:  # RLIMIT_FSIZE: the kernel refuses a write past 40 kB (EFBIG), as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = record("a red circle above a blue square", "--model", "tiny", "--steps", "30", "-o", str(out),
                  preexec_fn=full_disk)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert '"trace"' not in stdout and "recording stopped" in stderr and "File too large" in stderr
    assert not out.exists()
    with TraceReader(out, allow_partial=True) as tr:  # what fitted is there, whole
        assert not tr.skipped and tr.truncated_at is None and tr.runs and not tr.runs[0].ended
        assert partial_path(out).stat().st_size == tr.data_end <= 40_000


def test_sigterm_during_record_finalises_the_trace(tmp_path):
    out = tmp_path / "long.stepx"
    proc = record("a red circle", "--model", "tiny", "--steps", "500", "-o", str(out), "--stop-grace", "120")  # finalised, not forced
    try:
        t0 = time.monotonic()
        while True:  # wait until steps are on disk
            assert time.monotonic() - t0 < 120 and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
            try:
                with TraceReader(out, allow_partial=True) as tr:
                    if sum(r.kind == "step" for r in tr.index) >= 3:
                        break
            except Exception:
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "finalised" in stderr and '"trace"' not in stdout and "Traceback" not in stderr
    assert out.is_file() and not partial_path(out).exists()
    with TraceReader(out) as tr:
        end = tr.read(tr.runs[0].records[-1])
        assert end.kind == "end" and end.header["status"] == "cancelled" and 3 <= end.header["steps"] < 500


def test_an_error_mid_step_is_reported_as_itself(sd_pipe):
    """A self-attention layer fails in step 2, before any cross-attention of that step ran (a
    half-captured step): the run reports that error, not one raised by a half-built step frame
    while unwinding (it was ``TypeError: 'NoneType' object is not subscriptable``)."""
    calls = [0]

    def fail_on_third(_module, _args, _out):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("the GPU fell over")

    attn = next(m for n, m in sd_pipe.unet.named_modules() if n.endswith("attn1"))
    handle = attn.register_forward_hook(fail_on_third)
    try:
        packets = []
        result = Runner(sd_pipe, packets.append, "tiny").run(Request("a red circle", steps=4, seed=1))
    finally:
        handle.remove()
    assert result.status == "error" and result.error == "RuntimeError: the GPU fell over"
    ends = [p for p in packets if p.kind == "end"]
    assert [e.header["status"] for e in ends] == ["error"] and "fell over" in ends[0].header["error"]


STUCK = """
import sys, time
sys.path.insert(0, sys.argv[1])
from bridge.commands.common import stop_on_signals
stop_on_signals(lambda: print("stopping", flush=True), grace=1.0, before_exit=lambda: print("closed", flush=True))
print("ready", flush=True)
time.sleep(120)  # a step that never ends: stop() cannot reach it
"""


def test_a_stop_is_honoured_even_when_the_work_cannot_be_cancelled():
    proc = subprocess.Popen([sys.executable, "-c", STUCK, str(ROOT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)  # the grace is 1 s; 30 s only bounds a hung test
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert stdout.split() == ["stopping", "closed"] and "exiting now" in stderr
