"""A short soak: the daemon cycles a playlist with a slow and a failing receiver, and its memory
stays flat (the all-night case, bounded to a few seconds here)."""

from __future__ import annotations

import gc
import pytest
import os
import threading
import time

from bridge.daemon import Daemon, DaemonOptions
from bridge.stream.fanout import FanOut
from bridge.runner import Request, Runner
from waiting import ARRIVAL_S, wait_until


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Slow:
    name, encoding, inline, lossless = "slow", "float16", False, False

    def __init__(self) -> None:
        self.steps = 0

    def send(self, packet, data) -> None:
        time.sleep(0.02)
        self.steps += packet.kind == "step"

    def close(self) -> None:
        pass


class Broken:
    name, encoding, inline, lossless = "broken", None, False, False

    def send(self, packet, data) -> None:
        raise BrokenPipeError("the receiver is gone")

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_daemon_memory_stays_flat_over_many_runs(sd_pipe):
    slow = Slow()
    fan = FanOut([slow, Broken()])
    daemon = Daemon(Runner(sd_pipe, fan.publish, "tiny", image_every=1), fan.publish,
                    DaemonOptions(idle_replay=False, heartbeat=0.5, playlist_pause=0.0))
    daemon.set_playlist([Request("a red circle", steps=3, seed=1), Request("a blue square on a green background", steps=3, seed=2)],
                        loop=True)
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while daemon.runs_done < 10:
            assert time.monotonic() < deadline, "the daemon stopped making progress"
            time.sleep(0.05)
        gc.collect()
        warm = rss_mb()
        target = daemon.runs_done + 40
        while daemon.runs_done < target:
            assert time.monotonic() < deadline, "the daemon stopped making progress"
            time.sleep(0.05)
        gc.collect()
        grown = rss_mb() - warm
    finally:
        daemon.stop()
        thread.join(30)
        fan.close()
    assert not thread.is_alive()
    statuses = [r.status for r in daemon.results]
    assert set(statuses[:-1]) == {"done"} and statuses[-1] in ("done", "cancelled")  # stop() cancels the run in flight
    assert len(statuses) == 32
    assert slow.steps > 0 and fan.stats["broken"].errors > 0
    print(f"RSS grew {grown:.1f} MiB over 40 runs")
    assert grown < 40, f"memory grew {grown:.1f} MiB over 40 runs"


# --- the show soak: a real `stepx serve` under everything a night brings -------------------------

import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import zmq  # noqa: E402

from bridge.trace import TraceReader  # noqa: E402
from bridge.transport.osc_encode import message as osc_message  # noqa: E402
from bridge.protocol import decode  # noqa: E402
from bridge.transport.zmq_sub import ZmqSubscriber  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLOW_READ = 0.3  # seconds per packet of the slow subscribers (issue 25)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_of(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024


class _Reader(threading.Thread):
    """One subscriber on its own thread: ``mode`` fast (plain SUB, as fast as packets come), plain
    (plain SUB, one packet per SLOW_READ), drain (the documented recipe, one drain per SLOW_READ),
    vanish (connects, reads a little, disappears without a goodbye, again and again)."""

    def __init__(self, endpoint: str, mode: str) -> None:
        super().__init__(daemon=True, name=f"soak-{mode}")
        self.endpoint, self.mode = endpoint, mode
        self.got: list[tuple[float, object]] = []  # (arrival time, Packet) of every non-status packet
        self.halt = threading.Event()
        self.vanished = 0

    def run(self) -> None:
        if self.mode == "drain":
            sub = ZmqSubscriber(self.endpoint, topics=["stepx/"])
            while not self.halt.wait(SLOW_READ):
                now = time.monotonic()
                self.got += [(now, p) for p in sub.drain(timeout=0) if p.kind != "status"]
            sub.close()
            return
        ctx = zmq.Context()
        while not self.halt.is_set():
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"stepx/")
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            t_end = time.monotonic() + (random.uniform(0.5, 3) if self.mode == "vanish" else 1e9)
            while not self.halt.is_set() and time.monotonic() < t_end:
                if sock.poll(50):
                    p = decode(sock.recv())
                    if p.kind != "status":
                        self.got.append((time.monotonic(), p))
                    if self.mode == "plain":
                        self.halt.wait(SLOW_READ)
            sock.close(linger=0)
            self.vanished += self.mode == "vanish"
        ctx.term()


def _ask(ctx: zmq.Context, endpoint: str, payload: bytes, timeout: float = ARRIVAL_S) -> dict | None:
    """One request on a fresh REQ socket; the reply, or None if none came in ``timeout``."""
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    req.connect(endpoint)
    try:
        req.send(payload)
        return json.loads(req.recv())
    except (zmq.Again, ValueError):
        return None
    finally:
        req.close()


def _loops(fast: list) -> tuple[list[dict], list[dict]]:
    """The runs and replay loops in a subscriber's packets, and those that are whole."""
    loops: list[dict] = []
    current: dict | None = None
    for p in fast:
        same = current is not None and p.header.get("run_id") == current["run"].header["run_id"]
        if p.kind == "run" and not (same and current["end"] is None):
            current = {"run": p, "steps": [], "end": None, "timeline": False}
            loops.append(current)
        elif same and p.kind == "step":
            current["steps"].append(p.header["step"])
        elif same and p.kind == "timeline":
            current["timeline"] = True
        elif same and p.kind == "end" and current["end"] is None:
            current["end"] = p
    whole = [l for l in loops if l["end"] is not None and (l["steps"] or l["timeline"])]  # not a re-sent run + end
    return loops, whole


def _watched_enough(readers: dict) -> bool:
    """What the soak's assertions count has happened: runs and replay loops, vanished readers."""
    _, whole = _loops([p for _, p in list(readers["fast"].got)])
    replays = sum(1 for l in whole if l["run"].header.get("replay"))
    return len(whole) > 20 and replays >= 5 and readers["vanish"].vanished >= 10


def _fuzz_payloads(rng: random.Random) -> list[bytes]:
    """A light control fuzz: junk, huge numbers, huge payloads, deep nesting, wrong types."""
    out = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(20)]
    out += [json.dumps({"cmd": "generate", "prompt": "a red circle", k: v}).encode() for k, v in [
        ("guidance", 10 ** 300), ("seed", -10 ** 300), ("steps", 10 ** 30), ("width", 1e308), ("steps", "many"),
        ("focus", [[[]]]), ("phase_boundaries", [2, -1]), ("head_weights", {"x": [1e400 if False else 1e308]})]]
    out += [b'{"cmd": "generate", "guidance": 1' + b"7" * 300 + b"}", b"[" * 5000 + b"]" * 5000,
            json.dumps({"cmd": "generate", "prompt": "x" * 300_000}).encode(), b'{"cmd": "\\ud800"}', b"{}", b"null"]
    return out


@pytest.mark.slow
@pytest.mark.soak
def test_show_soak(tmp_path):
    """`stepx serve` with idle replay and recording on, for a few minutes: a live playlist, idle
    replay, a flood of preempting requests and a light control fuzz (ZeroMQ and OSC), watched by a
    fast, a slow plain, a slow draining and a vanishing subscriber. Asserts: the fast one loses no
    packet of any run or replay loop; the drain recipe's frames stay young; the daemon's RSS and
    the recording stay bounded; the recording holds each generation once and reads back strictly."""
    pub, ctl, osc = _port(), _port(), _port()
    trace = tmp_path / "night.stepx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny", "--steps", "8", "--image-every", "2", "--stop-grace", "120",
         "--zmq", f"tcp://127.0.0.1:{pub}", "--control", f"tcp://127.0.0.1:{ctl}", "--osc-control", f"127.0.0.1:{osc}",
         "--record", str(trace), "--replay-fps", "20", "--pause", "0.3"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    endpoint, control = f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{ctl}"
    readers = {m: _Reader(endpoint, m) for m in ("fast", "plain", "drain", "vanish")}
    for r in readers.values():
        r.start()
    ctx, rng, figures = zmq.Context(), random.Random(25), {}
    try:
        t0 = time.monotonic()
        while _ask(ctx, control, b'{"cmd": "ping"}', 2.0) is None:
            assert time.monotonic() - t0 < 120 and proc.poll() is None, proc.stderr.read() if proc.poll() else "no start"
        # 1. a live playlist: unique (run_id, step) keys, so frame ages can be measured
        items = [{"prompt": p, "steps": 8, "seed": i} for i, p in enumerate(
            ["a red circle", "a blue square on a green background", "a yellow triangle above a red circle"])]
        assert _ask(ctx, control, json.dumps({"cmd": "playlist", "items": items, "loop": True}).encode())["ok"]
        time.sleep(45)
        rss_warm = _rss_of(proc.pid)
        # 2. a flood of preempting requests, each answered; the last one runs to its end
        for i in range(150):
            reply = _ask(ctx, control, json.dumps({"cmd": "generate", "prompt": f"a red circle {i % 7}",
                                                   "steps": 8, "seed": i}).encode())
            assert reply is not None and reply["ok"], reply
        # 3. a light control fuzz over ZeroMQ and OSC; the control loop must keep answering
        answered = sum(_ask(ctx, control, p, 5.0) is not None for p in _fuzz_payloads(rng))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(200):
            udp.sendto(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))), ("127.0.0.1", osc))
        for big in (10 ** 300, -(10 ** 30)):
            udp.sendto(osc_message("/stepx/control", json.dumps({"cmd": "generate", "prompt": "a", "seed": big})),
                       ("127.0.0.1", osc))
        udp.close()
        figures["fuzz_answered"] = answered
        assert _ask(ctx, control, b'{"cmd": "ping"}')["ok"], "control stopped answering after the fuzz"
        # 4. idle: the last run loops (idle replay) while the subscribers watch
        time.sleep(40)  # (the fast subscriber's replay loops are counted below)
        wait_until(lambda: _watched_enough(readers), timeout=120, interval=0.5,  # a busy machine: more time,
                   what="20 whole runs and loops, 5 replay loops, 10 vanished readers")  # never a false failure
        rss_end = _rss_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0, proc.stderr.read()[-3000:]
    finally:
        for r in readers.values():
            r.halt.set()
        for r in readers.values():
            r.join(5)
        if proc.poll() is None:
            proc.kill()
        ctx.term()

    fast = [p for _, p in readers["fast"].got]
    # no packet loss for the fast subscriber: every run (live or replay loop) is whole and in order
    # (a subscriber joining re-sends the cached run, and end, to everyone: PROTOCOL.md says repeated
    # run/end packets of the same run are no-ops, and so they are here)
    loops, whole = _loops(fast)
    assert len(whole) > 20
    for l in whole:
        n = l["end"].header.get("steps", 8) if not l["run"].header.get("replay") else 8
        assert l["steps"] == list(range(n)), (l["run"].header.get("replay"), l["steps"], l["end"].header)
        assert l["timeline"] or l["end"].header.get("status") == "cancelled"
    live = {l["run"].header["run_id"] for l in loops if not l["run"].header.get("replay")}
    replays = [l for l in whole if l["run"].header.get("replay")]
    assert len(replays) >= 5, "the idle replay did not loop"

    # frame age: when each subscriber got a live step, against when the fast one got it
    first = {}
    for t, p in readers["fast"].got:
        if p.kind == "step" and not p.header.get("replay"):
            first.setdefault((p.header["run_id"], p.header["step"]), t)

    def ages(mode: str) -> list[float]:
        return [t - first[(p.header["run_id"], p.header["step"])] for t, p in readers[mode].got
                if p.kind == "step" and not p.header.get("replay") and (p.header["run_id"], p.header["step"]) in first]

    drain, plain = ages("drain"), ages("plain")
    assert drain and max(drain) < 3 * SLOW_READ + 1.0, f"drain recipe frames aged up to {max(drain):.1f}s"
    figures.update(drain_age_max=round(max(drain), 2), plain_age_max=round(max(plain), 2) if plain else None,
                   rss_warm_mb=round(rss_warm), rss_growth_mb=round(rss_end - rss_warm, 1),
                   vanished=readers["vanish"].vanished, live_runs=len(live), replay_loops=len(replays))
    assert readers["vanish"].vanished >= 10
    assert rss_end - rss_warm < 150, figures

    # the recording: each generation once, no replay, strictly readable, bounded in size
    with TraceReader(trace) as tr:
        assert {r.run_id for r in tr.runs} == live and len(tr.runs) == len(live)
        assert not any(tr.read(i).header.get("replay") for i in range(len(tr)))
        per_run = trace.stat().st_size / len(tr.runs)
    figures.update(trace_mb=round(trace.stat().st_size / 2**20, 2), trace_kb_per_run=round(per_run / 1024, 1))
    assert per_run < 2 * 2**20, figures
    print("soak figures:", json.dumps(figures))
