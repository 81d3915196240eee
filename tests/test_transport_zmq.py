"""ZeroMQ publisher/subscriber on real loopback sockets."""

import threading
import time

import numpy as np

from bridge.protocol import Packet
from bridge import protocol as wire
from bridge.transport.zmq_pub import ZmqPublisher
from bridge.transport.zmq_sub import ZmqSubscriber, wait_joined


def pub():
    return ZmqPublisher("tcp://127.0.0.1:*", sndhwm=2)


def test_topic_filter_and_round_trip():
    p = pub()
    s = ZmqSubscriber(p.endpoint, topics=["stepx/step", "stepx/status"])
    try:
        wait_joined(p, s)
        p.send_bytes(wire.encode(Packet("image", {"step": 1}, {"image": np.zeros((4, 4, 3), np.uint8)})))
        p.send_bytes(wire.encode(Packet("step", {"step": 7}, {"textures": np.ones((2, 4, 4), np.float32)}), "float16"))
        got = s.recv(timeout=2.0)
        assert got.kind == "step" and got.step == 7 and got.arrays["textures"].dtype == np.float16
        assert s.recv(timeout=0.2) is None  # the image was filtered out by the subscription
    finally:
        s.close(); p.close()


def test_late_joiner_gets_run_packet_promptly():
    p = pub()
    try:
        run = Packet("run", {"run_id": "r42", "words": ["a"], "total_steps": 10})
        p.send_bytes(wire.encode(run))
        time.sleep(0.2)
        t0 = time.monotonic()
        s = ZmqSubscriber(p.endpoint, topics=["stepx/run"])
        got = s.recv(timeout=2.0)
        assert got is not None and got.kind == "run" and got.run_id == "r42"
        assert time.monotonic() - t0 < 0.5
        s.close()
    finally:
        p.close()


def test_late_joiner_gets_run_packet_from_the_sending_thread():
    """Mid-run, the next send re-sends the run packet to a new subscriber: no watcher needed
    (this one never looks), so nothing polls the socket at a high rate."""
    p = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=64, poll_interval=60.0)
    s = ZmqSubscriber(p.endpoint, topics=["stepx/run", "stepx/step"])
    try:
        p.send_bytes(wire.encode(Packet("run", {"run_id": "r7", "words": ["a"], "total_steps": 99})))
        got = []
        for step in range(99):  # until the subscription has reached the publisher
            p.send_bytes(wire.encode(Packet("step", {"run_id": "r7", "step": step})))
            if (pk := s.recv(timeout=0.05)) is not None:
                got.append(pk)
                break
        p.send_bytes(wire.encode(Packet("step", {"run_id": "r7", "step": 99})))
        while (pk := s.recv(timeout=0.3)) is not None:
            got.append(pk)
        kinds = [pk.kind for pk in got]
        # the run packet goes out before the first step sent after the subscription was seen; a
        # step racing the subscription inside the very send that saw it may come first
        assert "run" in kinds[:2], kinds
        assert kinds.count("run") == 1 and got[-1].step == 99
    finally:
        s.close(); p.close()


def test_publisher_never_blocks_on_a_stalled_subscriber():
    p = pub()
    s = ZmqSubscriber(p.endpoint, topics=["stepx/"], rcvhwm=2)  # connected, never reads
    try:
        wait_joined(p, s)
        big = wire.encode(Packet("step", {"step": 0}, {"t": np.zeros((77, 64, 64), np.float16)}), "float16")
        t0 = time.perf_counter()
        for _ in range(2000):
            p.send_bytes(big)
        elapsed = time.perf_counter() - t0
        assert elapsed < 2.0, f"2000 sends took {elapsed:.2f}s: the publisher blocked"
        time.sleep(0.3)
        queued = len(s._drain_raw(timeout=1.0))
        assert queued < 100, f"{queued} frames queued for a stalled subscriber: a backlog built up"
    finally:
        s.close(); p.close()


def test_slow_subscriber_latency_stays_bounded():
    """Publisher at 100 Hz, consumer takes 30 ms per frame (3x slower). With drain-to-latest
    the age of each consumed frame stays near one consumer period; a backlog would grow it
    by 20 ms per frame (to seconds over this run)."""
    p = pub()
    s = ZmqSubscriber(p.endpoint, topics=["stepx/step", "stepx/status"])
    try:
        wait_joined(p, s)
        stop = threading.Event()
        tex = np.zeros((77, 64, 64), np.float16)

        def produce():
            i = 0
            while not stop.is_set():
                p.send_bytes(wire.encode(Packet("step", {"step": i, "t": time.time()}, {"t": tex}), "float16"))
                i += 1
                time.sleep(0.01)

        th = threading.Thread(target=produce, daemon=True)
        th.start()
        ages, steps = [], []
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            pk = s.recv_latest(timeout=1.0)
            assert pk is not None
            ages.append(time.time() - pk.header["t"])
            steps.append(pk.step)
            time.sleep(0.03)  # the slow consumer
        stop.set(); th.join()
        ages = np.array(ages[5:])
        assert len(ages) > 40
        assert np.percentile(ages, 99) < 0.08, f"p99 age {np.percentile(ages, 99) * 1000:.1f} ms"
        assert steps[-1] > 250  # it kept up with the newest frames, skipping stale ones
    finally:
        s.close(); p.close()


def test_conflate_keeps_only_newest():
    p = pub()
    s = ZmqSubscriber(p.endpoint, topics=["stepx/step"], conflate=True)
    try:
        wait_joined(p, s, kind="step")
        for i in range(50):
            p.send_bytes(wire.encode(Packet("step", {"step": i})))
            time.sleep(0.002)
        time.sleep(0.2)
        assert s.recv(timeout=1.0).step == 49
        assert s.recv(timeout=0.1) is None
    finally:
        s.close(); p.close()


def test_drain_keeps_run_and_end():
    p = pub()
    s = ZmqSubscriber(p.endpoint)
    try:
        wait_joined(p, s)
        seq = [Packet("run", {"run_id": "a"})] + [Packet("step", {"step": i}) for i in range(3)] + [Packet("end", {"run_id": "a"})]
        for pk in seq:
            p.send_bytes(wire.encode(pk))
            time.sleep(0.01)
        time.sleep(0.2)
        got = s.drain(timeout=1.0)
        assert [(g.kind, g.step) for g in got] == [("run", None), ("step", 2), ("end", None)]
    finally:
        s.close(); p.close()


def test_conflate_refuses_several_topics():
    import pytest
    with pytest.raises(ValueError, match="exactly one topic"):
        ZmqSubscriber("tcp://127.0.0.1:1", topics=["stepx/step", "stepx/run"], conflate=True)
