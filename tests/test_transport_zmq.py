"""ZeroMQ publisher/subscriber on real loopback sockets."""

import itertools
import time

import numpy as np

from bridge.protocol import Packet
from bridge import protocol as wire
from bridge.transport.zmq_pub import ZmqPublisher
from bridge.transport.zmq_sub import ZmqSubscriber, wait_joined
from waiting import ARRIVAL_S


def pub():
    return ZmqPublisher("tcp://127.0.0.1:*", sndhwm=2)


def test_topic_filter_and_round_trip():
    p = pub()
    s = ZmqSubscriber(p.endpoint, topics=["stepx/step", "stepx/status"])
    try:
        wait_joined(p, s)
        p.send_bytes(wire.encode(Packet("image", {"step": 1}, {"image": np.zeros((4, 4, 3), np.uint8)})))
        p.send_bytes(wire.encode(Packet("step", {"step": 7}, {"textures": np.ones((2, 4, 4), np.float32)}), "float16"))
        got = s.recv(timeout=ARRIVAL_S)
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
        s = ZmqSubscriber(p.endpoint, topics=["stepx/run"])
        got = s.recv(timeout=ARRIVAL_S)  # a hang guard, not a speed claim: nothing else is sent
        assert got is not None and got.kind == "run" and got.run_id == "r42"
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
        got, deadline, last = [], time.monotonic() + ARRIVAL_S, 10**6
        for step in itertools.count():  # until the subscription has reached the publisher
            assert time.monotonic() < deadline, "the subscription never reached the publisher"
            p.send_bytes(wire.encode(Packet("step", {"run_id": "r7", "step": step})))
            if (pk := s.recv(timeout=0.05)) is not None:
                got.append(pk)
                break
        p.send_bytes(wire.encode(Packet("step", {"run_id": "r7", "step": last})))
        while not (got[-1].kind == "step" and got[-1].step == last):  # in order: everything sent before it
            assert (pk := s.recv(timeout=ARRIVAL_S)) is not None, [g.kind for g in got]
            got.append(pk)
        kinds = [pk.kind for pk in got]
        # the run packet goes out before the first step sent after the subscription was seen; a
        # step racing the subscription inside the very send that saw it may come first
        assert "run" in kinds[:2], kinds
        assert kinds.count("run") == 1
    finally:
        s.close(); p.close()


def test_publisher_never_blocks_on_a_stalled_subscriber():
    p = pub()
    s = ZmqSubscriber(p.endpoint, topics=["stepx/"], rcvhwm=2)  # connected, never reads
    try:
        wait_joined(p, s)
        big = wire.encode(Packet("step", {"step": 0}, {"t": np.zeros((77, 64, 64), np.float16)}), "float16")
        for _ in range(2000):  # a blocking send would hang here (pytest-timeout), not merely slow down
            p.send_bytes(big)  # PUB drops silently past the high-water mark
        time.sleep(0.3)  # a pause, not a claim: what has not arrived yet can only lower the count
        queued = len(s._drain_raw(timeout=1.0))
        assert queued < 100, f"{queued} frames queued for a stalled subscriber: a backlog built up"
    finally:
        s.close(); p.close()


def test_slow_subscriber_gets_the_newest_not_a_backlog():
    """Ordering, not timing: a consumer that fell behind by 200 frames gets the newest next,
    in a few reads; a backlog would hand it the 200 frames one by one."""
    p = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=1000)  # room for all 200: none dropped on the way
    s = ZmqSubscriber(p.endpoint, topics=["stepx/step", "stepx/status"])
    try:
        wait_joined(p, s)
        tex = np.zeros((4, 8, 8), np.float16)
        n = 200
        for i in range(n):  # the consumer reads nothing meanwhile
            p.send_bytes(wire.encode(Packet("step", {"step": 1000 + i}, {"t": tex}), "float16"))
        time.sleep(0.5)  # let them arrive (a pause, not a claim: a slow machine only means more reads below)
        steps = []
        while (pk := s.recv_latest(timeout=ARRIVAL_S)) is not None and pk.step != 1000 + n - 1:
            steps.append(pk.step)
        assert pk is not None and pk.step == 1000 + n - 1  # it reached the newest frame
        assert steps == sorted(set(steps)) and len(steps) < n // 2, steps  # in order, skipping stale ones
    finally:
        s.close(); p.close()


def test_conflate_keeps_only_newest():
    p = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=1000)  # none dropped on the way: only the subscriber conflates
    s = ZmqSubscriber(p.endpoint, topics=["stepx/step"], conflate=True)
    try:
        wait_joined(p, s, kind="step")
        for i in range(50):
            p.send_bytes(wire.encode(Packet("step", {"step": i})))
            time.sleep(0.002)
        time.sleep(0.2)  # a pause, not a claim: a slow machine only means a few more reads below
        reads = []  # a busy machine may hand the frames over in a few batches: each read the newest so far
        while not reads or reads[-1] != 49:
            assert (pk := s.recv(timeout=ARRIVAL_S)) is not None, reads
            reads.append(pk.step)
        assert reads == sorted(set(reads)) and len(reads) <= 25, reads  # not one by one: only the newest kept
        assert s.recv(timeout=0.1) is None  # nothing after the newest (a short wait: it asserts silence)
    finally:
        s.close(); p.close()


def test_drain_keeps_run_and_end():
    p = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=1000)  # none dropped on the way, however busy the machine
    s = ZmqSubscriber(p.endpoint)
    try:
        wait_joined(p, s)
        deadline = time.monotonic() + ARRIVAL_S
        while True:  # one drain must see the whole sequence queued; a busy machine may need a retry
            seq = [Packet("run", {"run_id": "a"})] + [Packet("step", {"step": i}) for i in range(3)] + [Packet("end", {"run_id": "a"})]
            for pk in seq:
                p.send_bytes(wire.encode(pk))
                time.sleep(0.01)
            time.sleep(0.2)
            got = s.drain(timeout=ARRIVAL_S)
            if got and got[-1].kind == "end":  # in order on one connection: everything before it was queued too
                break
            while not (got and got[-1].kind == "end"):  # read this attempt to its end, then try again
                got = s.drain(timeout=ARRIVAL_S)
                assert got, "the end packet never came"
            assert time.monotonic() < deadline, "never one drain with the whole sequence queued"
        assert [(g.kind, g.step) for g in got] == [("run", None), ("step", 2), ("end", None)]
    finally:
        s.close(); p.close()


def test_conflate_refuses_several_topics():
    import pytest
    with pytest.raises(ValueError, match="exactly one topic"):
        ZmqSubscriber("tcp://127.0.0.1:1", topics=["stepx/step", "stepx/run"], conflate=True)


def test_received_arrays_are_zeromqs_buffer_read_only_and_outlive_later_messages():
    """recv decodes ZeroMQ's own buffer without a copy: the arrays are read-only (as from bytes)
    and stay intact while later messages arrive and the earlier frames are gone from Python."""
    p = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=64)
    s = ZmqSubscriber(p.endpoint, topics=["stepx/step"], rcvhwm=64)
    try:
        wait_joined(p, s, kind="step")
        big = np.arange(3 * 64 * 64, dtype=np.float32).reshape(3, 64, 64) / 7.0  # > 64 KiB: a zero-copy send too
        for step in range(3):
            p.send_bytes(wire.encode(Packet("step", {"step": step}, {"m": big + step}), "float32"))
        got = [s.recv(timeout=ARRIVAL_S) for _ in range(3)]
        latest = [s.drain(timeout=0.1)]  # nothing more: empties the queue
        assert latest == [[]]
        for step, pk in enumerate(got):
            assert pk.step == step
            np.testing.assert_array_equal(pk.arrays["m"], big + step)
            assert not pk.arrays["m"].flags.writeable
    finally:
        s.close(); p.close()
