"""``stepx doctor``: every check reports, a missing thing comes with its fix, and the command runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from bridge import doctor

ROOT = Path(__file__).resolve().parents[1]


def test_busy_port_is_named_with_its_fix():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        got = doctor.check_ports([("ZeroMQ data", port, socket.SOCK_STREAM)])
    assert not got.ok and f"ZeroMQ data {port}" in got.detail and "--zmq" in got.fix
    assert doctor.check_ports([("ZeroMQ data", port, socket.SOCK_STREAM)]).ok  # released: free again


def test_missing_programs_say_how_to_install(tmp_path):
    empty = str(tmp_path)  # a PATH with nothing on it
    osc = doctor.check_oscdump(path=empty)
    assert not osc.ok and "liblo-tools" in osc.fix
    if sys.platform not in ("darwin", "win32"):
        browser = doctor.check_browser(path=empty)
        assert not browser.ok and "chromium" in browser.fix
    exe = tmp_path / "oscdump"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert doctor.check_oscdump(path=empty).detail == str(exe)


def test_missing_extra_names_the_extra():
    got = doctor.check_extra("objects", "no_such_module_stepx", "objects", "text-guided detection")
    assert not got.ok and got.fix == "pip install 'stepx-bridge[objects]'"


def test_fused_maps_wants_triton_on_cuda_only(monkeypatch):
    import importlib.util

    import torch

    assert doctor.check_fused_maps().ok or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    got = doctor.check_fused_maps()
    assert not got.ok and got.fix == "pip install 'stepx-bridge[gpu]'" and "op by op" in got.detail


def test_a_crashing_check_is_reported_not_raised():
    def check_boom() -> doctor.Check:
        raise OSError("no /dev/dri")

    (got,) = doctor.run_checks([check_boom])
    assert got.name == "boom" and not got.ok and "OSError: no /dev/dri" in got.detail
    text = doctor.format_report([got, doctor.Check("torch", True, "fine")])
    assert text.splitlines()[0].startswith("--  boom") and "fix: " in text.splitlines()[1]


def test_stepx_doctor_runs_every_check():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "doctor", "--json"], capture_output=True, text=True,
                          env=env, timeout=300)
    checks = json.loads(proc.stdout)
    names = [c["name"] for c in checks]
    for want in ("python", "torch", "threads", "preview (EGL)", "preview video", "ports", "oscdump", "pyzmq",
                 "Spout/Syphon/NDI", "browser"):
        assert want in names
    by = {c["name"]: c for c in checks}
    assert by["torch"]["ok"] and "torch " in by["torch"]["detail"]
    assert "1 thread" in by["threads"]["detail"]
    assert all(c["ok"] or c["fix"] for c in checks), [c for c in checks if not c["ok"] and not c["fix"]]
    assert proc.returncode == (1 if any(c["required"] and not c["ok"] for c in checks) else 0), proc.stderr
