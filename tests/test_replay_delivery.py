"""Idle replay and `stepx replay` lose no packet for a subscriber that keeps up, and the idle
replay records nothing (what was generated is recorded once)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import zmq

from bridge.daemon import Daemon, DaemonOptions
from bridge.protocol import Packet
from bridge.stream.fanout import FanOut
from bridge.runner import Request, Runner
from bridge.trace import TraceReader, TraceWriter
from bridge.protocol import decode, encode
from bridge.transport.zmq_pub import ZmqPublisher
from tests.test_trace import run_packets, write
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


class FastSub:
    """A plain SUB socket read as fast as packets come, on its own thread."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"stepx/")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.got: list[Packet] = []
        self.heard = threading.Event()  # any packet came, a status probe included
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(50):
                p = decode(self.sock.recv())
                self.heard.set()
                if p.kind != "status":
                    self.got.append(p)

    def close(self) -> None:
        self._stop.set()
        self._t.join(30)  # before its socket closes under it (returns within one 50 ms poll)
        self.sock.close()
        self.ctx.term()


def loops(packets: list[Packet]) -> list[list[str]]:
    out: list[list[str]] = []
    for p in packets:
        if p.kind == "run":
            out.append([])
        if out:
            out[-1].append(p.kind + ("" if p.kind not in ("step",) else str(p.header["step"])))
    return out


def test_idle_replay_is_lossless_for_a_fast_subscriber_and_not_recorded(sd_pipe, tmp_path):
    pub = ZmqPublisher("tcp://127.0.0.1:*")
    trace = tmp_path / "night.stepx"
    fan = FanOut([pub, TraceWriter(trace)])
    sub = FastSub(pub.endpoint)
    probe = encode(Packet("status", {"state": "probe"}))

    def joined() -> bool:  # PUB drops what it sends before the subscription arrives: probe until heard
        pub.send_bytes(probe)
        return sub.heard.is_set()

    wait_until(joined, interval=0.05, what="the subscriber joining")
    daemon = Daemon(Runner(sd_pipe, fan.publish, "tiny"), fan.publish, DaemonOptions(replay_fps=50.0))
    daemon.submit(Request("a red circle", steps=5, seed=1, width=64, height=64))
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(loops(sub.got)) >= 9, timeout=120, interval=0.1, what="9 replay loops")
    finally:
        daemon.stop()
        thread.join(30)
        fan.close(timeout=30)  # the recorder writes every packet before the trace is read below
        sub.close()
    seen = loops(sub.got)
    live = seen[0]
    assert live[:2] == ["run", "step0"] and live[-2:] == ["timeline", "end"]
    for n, loop in enumerate(seen[1:-1], 1):  # every finished replay loop is whole (the last may be cut by stop)
        assert loop == live, f"replay loop {n} lost packets: {loop}"
    replays = [p for p in sub.got if p.header.get("replay")]
    assert replays and {p.header["run_id"] for p in replays} == {live and sub.got[0].header["run_id"]}
    with TraceReader(trace) as tr:  # the generation, once; none of the replays
        assert len(tr.runs) == 1 and len(tr) == len(live)


def test_stepx_replay_delivers_the_last_timeline_and_end(tmp_path):
    path = tmp_path / "show.stepx"
    pk = run_packets("r1", steps=30)
    pk.insert(-1, Packet("timeline", {"run_id": "r1", "words": ["cat", "table"]}, {}))
    write(path, pk)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sub = FastSub(f"tcp://127.0.0.1:{port}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "bridge.cli", "replay", str(path), "--fps", "200", "--delay", "0", "--wait-subscriber", "60",
                        "--zmq", f"tcp://127.0.0.1:{port}"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: len(sub.got) >= len(pk), what="every replayed packet")  # sent; maybe not yet read
    finally:
        sub.close()
    assert [p.kind for p in sub.got] == [p.kind for p in pk], [p.kind for p in sub.got][-5:]
