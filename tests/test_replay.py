"""stepx replay: the recorded Packets reach a real ZeroMQ subscriber in order; bad traces refused."""

from __future__ import annotations

import argparse
import socket
import threading
import time

import numpy as np
import pytest

from bridge.commands import replay
from bridge.protocol import Packet
from bridge.stream.sinks import SinkError, build_sinks, zmq_endpoint
from bridge.trace import RECORD, TraceReader, TraceWriter, partial_path
from bridge.transport.zmq_sub import ZmqSubscriber

WORDS = ["sun", "sea"]


def make_trace(path, steps=8, end=True, run_id="r1"):
    rng = np.random.default_rng(3)
    pk = [Packet("run", {"run_id": run_id, "prompt": "sun over sea", "words": WORDS, "total_steps": steps,
                         "seed": 3, "model": "synthetic", "width": 8, "height": 8, "map_size": [4, 4]})]
    for s in range(steps):
        pk.append(Packet("step", {"run_id": run_id, "step": s, "total_steps": steps, "words": WORDS, "phase": 0},
                         {"textures": rng.random((3, 4, 4), dtype=np.float32)}))
        if s % 3 == 2:
            pk.append(Packet("image", {"run_id": run_id, "step": s, "final": False},
                             {"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)}))
    if end:
        pk.append(Packet("end", {"run_id": run_id, "status": "done"}))
    w = TraceWriter(path)
    for p in pk:
        w.send(p)
    w.close()
    return pk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    replay.add_arguments(p)
    return p.parse_args(list(argv))


def test_replay_delivers_same_packets_in_order_to_zmq_subscriber(tmp_path):
    path = tmp_path / "show.trace"
    pk = make_trace(path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = ZmqSubscriber(endpoint, topics=["stepx/"])  # connects before the replay binds; zmq retries
    got: list = []
    result: dict = {}
    args = parse(str(path), "--zmq", endpoint, "--fps", "10", "--delay", "0", "--wait-subscriber", "60")
    t = threading.Thread(target=lambda: result.setdefault("rc", replay.run(args)))
    t0 = time.monotonic()
    t.start()
    try:
        while time.monotonic() - t0 < 60 and not (got and got[-1].kind == "end"):  # a hang guard
            m = sub.recv(timeout=0.2)
            if m is not None:
                got.append(m)
    finally:
        t.join(timeout=60)
        sub.close()
    assert result.get("rc") == 0
    assert [(g.kind, g.step) for g in got] == [(p.kind, p.step) for p in pk]
    with TraceReader(path) as tr:
        stored = list(tr.packets())
    for g, s in zip(got, stored):
        assert {k: v for k, v in g.header.items() if k != "sent"} == {k: v for k, v in s.header.items() if k != "sent"}
        assert g.kind != "step" or g.header["sent"] >= s.header.get("sent", 0)  # a replayed step's send time is the replay's
        for name, arr in s.arrays.items():
            assert g.arrays[name].dtype == arr.dtype and np.array_equal(g.arrays[name], arr)


class _Collect:
    def __init__(self):
        self.items: list = []

    def __call__(self, packet):
        self.items.append((time.monotonic(), packet.kind, packet.step))


def test_play_paces_steps_and_speed_scales(tmp_path):
    path = tmp_path / "p.trace"
    make_trace(path, steps=6)
    with TraceReader(path) as tr:
        pos = tr.positions()
        slow, fast = _Collect(), _Collect()
        replay.play(tr, pos, slow, replay.step_interval(20, 1.0))
        replay.play(tr, pos, fast, replay.step_interval(20, 4.0))
    step_t = [t for t, k, _ in slow.items if k == "step"]
    assert step_t[-1] - step_t[0] >= 5 * 0.05 * 0.95  # 6 steps at 20 fps: at least 5 intervals
    fast_t = [t for t, k, _ in fast.items if k == "step"]
    assert fast_t[-1] - fast_t[0] >= 5 * 0.0125 * 0.95  # paced at 4 x 20 fps too (a lower bound: a busy machine only adds)
    assert replay.step_interval(20, 4.0) == pytest.approx(replay.step_interval(20, 1.0) / 4)  # not timed: no stall can fail it
    assert [k for _, k, _ in slow.items] == [k for _, k, _ in fast.items]
    with pytest.raises(ValueError, match="--speed"):
        replay.step_interval(10, 0)


def test_play_stops_when_asked(tmp_path):
    path = tmp_path / "s.trace"
    make_trace(path, steps=20)
    stop = threading.Event()
    seen = _Collect()

    def publish(p):
        seen(p)
        if p.kind == "step" and p.step == 2:
            stop.set()

    with TraceReader(path) as tr:
        n = replay.play(tr, tr.positions(), publish, 0.01, stop)
    assert n == len(seen.items) and seen.items[-1][2] == 2


def test_partial_trace_refused_unless_allowed(tmp_path, capsys):
    path = tmp_path / "cut.trace"
    make_trace(path, end=False)
    assert partial_path(path).exists() and not path.exists()
    assert replay.run(parse(str(path), "--fps", "0", "--delay", "0")) == 2
    err = capsys.readouterr().err
    assert "refusing to play a partial trace" in err and "--allow-partial" in err
    port = free_port()
    rc = replay.run(parse(str(partial_path(path)), "--fps", "0", "--delay", "0", "--allow-partial",
                          "--zmq", f"tcp://127.0.0.1:{port}"))
    err = capsys.readouterr().err
    assert rc == 0 and "warning: partial trace" in err and "no end record" in err


def test_truncated_and_corrupt_traces_give_clear_errors(tmp_path, capsys):
    path = tmp_path / "bad.trace"
    make_trace(path)
    with TraceReader(path) as tr:
        rec, total = tr.index[4], len(tr.index)
    data = path.read_bytes()
    path.write_bytes(data[: rec.offset + 7])
    assert replay.run(parse(str(path), "--delay", "0")) == 2
    assert f"truncated at record #4 at byte {rec.offset}" in capsys.readouterr().err
    bad = bytearray(data)
    bad[rec.offset + RECORD.size + 30] ^= 0xFF
    path.write_bytes(bytes(bad))
    assert replay.run(parse(str(path), "--delay", "0")) == 2  # damage is refused by default, naming the record
    err = capsys.readouterr().err
    assert f"record #4 at byte {rec.offset}: CRC mismatch" in err and "--allow-partial" in err
    # with --allow-partial the reader steps over the bad record and plays every intact one
    assert replay.run(parse(str(path), "--delay", "0", "--fps", "0", "--allow-partial",
                            "--zmq", f"tcp://127.0.0.1:{free_port()}")) == 0
    err = capsys.readouterr().err
    assert f"record #4 at byte {rec.offset}: CRC mismatch" in err and f"sent {total - 1} packets" in err


def test_sink_options():
    assert zmq_endpoint("tcp://127.0.0.1:5560", False) == "tcp://127.0.0.1:5560"
    with pytest.raises(SinkError, match="--bind-any"):
        zmq_endpoint("tcp://0.0.0.0:5560", False)
    assert zmq_endpoint("tcp://127.0.0.1:5560", True) == "tcp://*:5560"
    args = parse("x.trace", "--spout", "stepx")
    with pytest.raises(SinkError, match="--zmq"):
        build_sinks(args)  # no Spout on this platform / not installed: names what works
    with pytest.raises(SystemExit):
        parse("x.trace", "--osc", "nohost:notaport")
    a = parse("x.trace", "--osc", "127.0.0.1:9", "--zmq", f"tcp://127.0.0.1:{free_port()}")
    sinks = build_sinks(a)
    try:
        assert sorted(s.name for s in sinks) == ["osc", "zmq"]
    finally:
        for s in sinks:
            s.close()


def test_replay_waits_for_a_subscriber_then_warns_and_plays_without_one(tmp_path, capsys):
    path = tmp_path / "show.trace"
    pk = make_trace(path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # no subscriber: a short wait, a warning, and the whole trace played anyway
    assert replay.run(parse(str(path), "--zmq", endpoint, "--fps", "0", "--delay", "0", "--wait-subscriber", "0.3")) == 0
    err = capsys.readouterr().err
    assert "waiting up to 0.3 s for a subscriber" in err and "no subscriber after 0.3 s; playing anyway" in err
    assert f"sent {len(pk)} packets" in err
