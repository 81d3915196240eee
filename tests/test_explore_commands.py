"""``stepx explore`` and ``stepx serve --explore`` as a user runs them: real processes, free ports,
the Live WebSocket read by an independent client (the ``websockets`` library), SIGTERM to stop."""

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

pytest.importorskip("starlette", reason="the explorer extra (starlette, uvicorn) is not installed")

from explore_helpers import call, record_trace

from bridge.protocol import decode

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str]) -> tuple[subprocess.Popen, str]:
    """Start ``stepx ARGS`` and return it with the explorer URL it prints."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{") and "explorer" in (doc := json.loads(line)):
            return proc, doc["explorer"]
    proc.kill()
    raise AssertionError(f"no explorer URL; stderr: {proc.stderr.read()[-2000:]}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_explore_opens_traces_and_follows_a_publisher(sd_pipe, tmp_path):
    """``stepx explore TRACE --live ENDPOINT``: the trace is open in the page, and what a StepX
    publisher sends reaches the Live WebSocket as it was sent."""
    from websockets.sync.client import connect

    from bridge.protocol import Packet
    from bridge.protocol import encode
    from bridge.transport.zmq_pub import ZmqPublisher

    trace = record_trace(sd_pipe, tmp_path / "a.stepx", "a red circle", steps=3)
    port = free_port()
    pub = ZmqPublisher(f"tcp://127.0.0.1:{port}")
    proc, url = start(["explore", str(trace), "--port", "0", "--live", f"tcp://127.0.0.1:{port}"])
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        status, info = call(url + "api/info")
        (run,) = info["runs"]
        assert status == 200 and run["source"] == "trace" and run["words"] == ["Global", "a", "red", "circle"]
        assert info["live"] == f"tcp://127.0.0.1:{port}"
        status, png = call(url + f"api/runs/{run['id']}/overlay.png?word=red&step=2")
        assert status == 200 and png[:4] == b"\x89PNG"
        sent = encode(Packet("run", {"run_id": "live1", "prompt": "a blue square", "words": ["a", "blue", "square"]}), "float16")
        with connect(url.replace("http", "ws") + "ws/live", open_timeout=20) as ws:
            got = None
            deadline = time.monotonic() + 30
            while got is None and time.monotonic() < deadline:  # a SUB socket joins late: publish until it hears
                pub.send_bytes(sent)
                try:
                    got = ws.recv(timeout=0.3)
                except TimeoutError:
                    pass
        assert got == sent
    finally:
        pub.close()
        assert stop(proc) == 0


def test_explore_refuses_a_network_address_unless_asked():
    out = subprocess.run([sys.executable, "-m", "bridge.cli", "explore", "--host", "0.0.0.0", "--port", "0"], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--allow-remote" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_serve_explore_streams_every_step_to_a_websocket(sink_process="off"):
    """The explorer's sink in the daemon's fan-out (with the outputs in a sink process it follows
    the ZeroMQ stream instead: tests/test_explore.py checks that feed)."""
    from websockets.sync.client import connect

    pub, ctl, osc = free_port(), free_port(), free_port()
    proc, url = start(["serve", "--model", "tiny", "--steps", "6", "--prompt", "a red circle", "--zmq", f"tcp://127.0.0.1:{pub}",
                       "--control", f"tcp://127.0.0.1:{ctl}", "--osc-control", f"127.0.0.1:{osc}", "--sink-process", sink_process,
                       "--explore", "127.0.0.1:0"])
    try:
        kinds, steps = [], set()
        with connect(url.replace("http", "ws") + "ws/live", open_timeout=20) as ws:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not ({"run", "step", "image"} <= set(kinds) and len(steps) >= 3):
                p = decode(ws.recv(timeout=30))
                kinds.append(p.kind)
                if p.kind == "step":
                    steps.add(p.step)
                    assert p.arrays["textures"].shape[0] == 4  # 3 words + the global view
        assert {"run", "step", "image"} <= set(kinds) and len(steps) >= 3, kinds
        status, answer = call(url + "api/generate", {"prompt": "a blue square"})
        assert status == 400 and "belongs to `stepx serve`" in answer["error"]
    finally:
        assert stop(proc) == 0


def test_serve_explore_with_a_sink_process_follows_the_daemons_zeromq_stream():
    """With the outputs in the sink process, the explorer subscribes to the daemon's ZeroMQ stream
    (asked for if no --zmq was given); here the daemon's publisher is a real PUB socket."""
    import argparse

    from bridge.commands.serve import start_explorer
    from bridge.protocol import Packet, encode
    from bridge.transport.zmq_pub import ZmqPublisher

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = argparse.Namespace(explore="127.0.0.1:0", allow_remote=False, zmq=endpoint, concepts=None)
    explorer = start_explorer(args, outputs_in_child=True)
    pub = ZmqPublisher(endpoint)
    try:
        assert explorer.sink is None and explorer.feed is not None
        hub = explorer.server.server.config.app.state.explorer.hub
        deadline = time.monotonic() + 30
        while hub.received == 0 and time.monotonic() < deadline:
            pub.send_bytes(encode(Packet("run", {"run_id": "r"})))
            time.sleep(0.05)
        assert hub.received > 0
        status, live = call(explorer.server.url + "api/live")
        assert status == 200 and live["source"] == endpoint
    finally:
        pub.close()
        explorer.close()
    bad = argparse.Namespace(explore="0.0.0.0:0", allow_remote=False, zmq=None, concepts=None)
    with pytest.raises(ValueError, match="--allow-remote"):
        start_explorer(bad, outputs_in_child=False)
