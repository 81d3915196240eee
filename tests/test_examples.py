"""examples/README.md's three commands, end to end: ``stepx serve --config show.toml`` (on free
ports; flags win over the file), a headless ``stepx preview`` of the live stream, and
TouchDesigner's own receiver and control client (td_components/stepx_td) sending a prompt and
seeing it run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "td_components"))

from stepx_td.control import ControlClient  # noqa: E402
from stepx_td.decoder import StreamReceiver  # noqa: E402


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_show_toml_keys_are_serve_options_and_the_playlist_exists():
    import argparse

    from bridge.commands import serve
    from bridge.commands.common import apply_config_file

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = apply_config_file(parser, set(), parser.parse_args([]), str(EXAMPLES / "show.toml"))  # unknown keys exit
    assert (EXAMPLES / args.playlist).is_file()
    prompts = [line for line in (EXAMPLES / args.playlist).read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(prompts) >= 3


@pytest.mark.slow
def test_three_command_walkthrough(tmp_path):
    data, ctl, osc_ctl, osc_out = free_port(), free_port(), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    stepx = [sys.executable, "-m", "bridge.cli"]
    serve = subprocess.Popen(
        [*stepx, "serve", "--config", "show.toml", "--steps", "6", "--stop-grace", "120", "--zmq", f"tcp://127.0.0.1:{data}",
         "--control", f"tcp://127.0.0.1:{ctl}", "--osc-control", f"127.0.0.1:{osc_ctl}", "--osc", f"127.0.0.1:{osc_out}",
         "--sink-process", "off"],
        cwd=EXAMPLES, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    td = StreamReceiver("127.0.0.1", data)
    control = ControlClient("127.0.0.1", ctl, timeout_s=60.0)
    try:
        # 2. the preview, headless, of the live stream (the playlist is running)
        out = tmp_path / "show.gif"
        preview = subprocess.run([*stepx, "preview", "--zmq", f"tcp://127.0.0.1:{data}", "--out", str(out),
                                  "--frames", "6", "--size", "128x128", "--particles", "2048", "--wait", "120"],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert preview.returncode == 0, preview.stderr
        from PIL import Image
        assert Image.open(out).n_frames == 6
        # 3. TouchDesigner: its control client sends a prompt, its receiver sees that run's steps
        control.send({"cmd": "generate", "prompt": "a green star right of a blue circle", "focus": ["star"], "steps": 6})
        seen_prompt, steps = False, 0
        deadline = time.monotonic() + 180  # a hang guard
        while not (seen_prompt and steps >= 2):
            assert time.monotonic() < deadline, "TouchDesigner's receiver never saw the prompt it sent"
            control.poll()
            upd = td.poll()
            if upd.new_run:
                seen_prompt = (td.run or {}).get("prompt") == "a green star right of a blue circle"
                steps = 0
            steps += seen_prompt and "step" in upd.kinds
            time.sleep(0.02)
        assert control.last_reply is not None and control.last_reply.get("ok") is True
        assert td.run["words"][td.run["focus"][0]] == "star"
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            rc = serve.wait(timeout=180)
        finally:
            if serve.poll() is None:
                serve.kill()
            td.sock.close()
    assert rc == 0, serve.stderr.read()
