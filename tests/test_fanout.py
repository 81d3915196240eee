"""FanOut with real threads: slow and raising sinks never slow the producer or build a backlog."""

import time

import numpy as np
import pytest

from bridge.stream.fanout import FanOut, Sink
from bridge.protocol import Packet
from bridge import protocol as wire
from waiting import ARRIVAL_S


class Recorder:
    inline, lossless = False, False  # the Sink protocol's flags: own thread, latest frames

    def __init__(self, name, encoding=None, delay=0.0, fail=False):
        self.name, self.encoding, self.delay, self.fail = name, encoding, delay, fail
        self.got, self.datas, self.closed = [], [], False

    def send(self, packet, data):
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        self.got.append((packet.kind, packet.header.get("step"), time.monotonic(), packet.header.get("t")))
        self.datas.append(data)

    def close(self):
        self.closed = True


def test_sink_protocol():
    assert isinstance(Recorder("x"), Sink)


def test_encodes_once_per_encoding_and_shares_bytes():
    a, b, c, d = Recorder("a", "float16"), Recorder("b", "float16"), Recorder("c", "uint8"), Recorder("d")
    with FanOut([a, b, c, d]) as fo:
        fo.publish(Packet("step", {"step": 0}, {"t": np.ones((2, 4, 4), np.float32)}))
        fo.close(timeout=ARRIVAL_S)  # delivered: returns as soon as every sink has it
    assert a.datas[0] is b.datas[0]  # the same bytes object: encoded once
    assert wire.decode(c.datas[0]).arrays["t"].dtype == np.uint8
    assert d.datas == [None] and all(s.closed for s in (a, b, c, d))


class Stuck(Recorder):
    """A sink that blocks inside ``send`` until released: the slowest sink there is."""

    def __init__(self, name):
        super().__init__(name)
        import threading
        self.entered, self.release = threading.Event(), threading.Event()

    def send(self, packet, data):
        self.entered.set()
        assert self.release.wait(30), "never released"
        super().send(packet, data)


def test_slow_and_raising_sinks_do_not_slow_producer_or_backlog():
    """Ordering, not timing: every publish returns while a sink is stuck inside send, and once
    released it gets the newest frame next, never the frames it missed."""
    fast, stuck, bad = Recorder("fast"), Stuck("stuck"), Recorder("bad", fail=True)
    fo = FanOut([fast, stuck, bad])
    n = 200
    fo.publish(Packet("step", {"step": 0}))
    assert stuck.entered.wait(ARRIVAL_S)
    for i in range(1, n):
        fo.publish(Packet("step", {"step": i}))  # returns although "stuck" is blocked in send
    assert not stuck.release.is_set() and stuck.got == []  # all n published while it was stuck
    stuck.release.set()
    fo.close(timeout=ARRIVAL_S)
    assert [step for _k, step, _t, _h in stuck.got] == [0, n - 1]  # the stuck frame, then the newest
    assert fo.stats["stuck"].dropped == n - 2
    fast_steps = [step for _k, step, _t, _h in fast.got]
    assert fast_steps == sorted(set(fast_steps)) and fast_steps[-1] == n - 1  # in order, ends on the newest
    assert fo.stats["bad"].errors > 0 and bad.closed


def test_run_and_end_are_never_dropped_and_stay_in_order():
    slow = Recorder("slow", delay=0.02)
    with FanOut([slow]) as fo:
        for r in range(3):
            fo.publish(Packet("run", {"run_id": r}))
            for i in range(20):
                fo.publish(Packet("step", {"run_id": r, "step": i}))
            fo.publish(Packet("end", {"run_id": r}))
        fo.close(timeout=ARRIVAL_S)  # every kept packet delivered (returns as soon as it is)
    kinds = [k for k, *_ in slow.got]
    assert kinds.count("run") == 3 and kinds.count("end") == 3
    # order: run r, steps of r (some dropped), end r, run r+1, ...
    assert kinds[0] == "run" and kinds[-1] == "end"
    for i, k in enumerate(kinds):
        if k == "step":
            assert "run" in kinds[:i]
    runs = [i for i, k in enumerate(kinds) if k == "run"]
    ends = [i for i, k in enumerate(kinds) if k == "end"]
    assert all(r < e for r, e in zip(runs, ends)) and all(e < r for e, r in zip(ends, runs[1:]))


def test_latest_wins_is_per_kind():
    slow = Stuck("slow")  # held inside send(step 0) while the rest is published: ordering, not timing
    with FanOut([slow]) as fo:
        fo.publish(Packet("step", {"step": 0}))
        assert slow.entered.wait(ARRIVAL_S)
        for i in range(1, 10):
            fo.publish(Packet("step", {"step": i}))
            fo.publish(Packet("image", {"step": i}))
        slow.release.set()
        fo.close(timeout=ARRIVAL_S)
    got = [(k, s) for k, s, *_ in slow.got]
    assert got == [("step", 0), ("step", 9), ("image", 9)]


def test_lossless_sink_gets_every_packet_in_order():
    """The recorder (lossless = True) never loses a step, even when it is much slower than the producer."""
    import time as _time

    from bridge.stream.fanout import FanOut
    from bridge.protocol import Packet

    class SlowRecorder:
        name, encoding, lossless, inline = "rec", "float16", True, False

        def __init__(self):
            self.steps = []

        def send(self, packet, data):
            _time.sleep(0.002)
            if packet.kind == "step":
                self.steps.append(packet.header["step"])

        def close(self):
            pass

    rec = SlowRecorder()
    with FanOut([rec]) as fan:
        for i in range(200):
            fan.publish(Packet("step", {"step": i}))
        fan.close(timeout=ARRIVAL_S)
    assert rec.steps == list(range(200))
    assert fan.stats["rec"].dropped == 0


def test_inline_sink_gets_every_packet_on_the_producers_thread():
    """A non-blocking sink (``inline = True``, as ZmqPublisher) is called by publish() itself: every
    frame of a burst, in order, none replaced while a sink thread waited to be scheduled; a
    failure is counted and the next packets still go; it is closed with the FanOut."""
    import threading

    class Inline(Recorder):
        inline = True

        def send(self, packet, data):
            super().send(packet, data)
            self.threads.add(threading.current_thread().name)

    fast = Inline("inline", "float16")
    fast.threads = set()
    bad = Inline("bad", fail=True)
    bad.threads = set()
    slow = Stuck("slow")  # held inside its first send while the rest is published
    fo = FanOut([fast, bad, slow])
    for i in range(50):
        fo.publish(Packet("step", {"step": i}, {"t": np.full((2, 4, 4), i, np.float32)}))
        if i == 0:
            assert slow.entered.wait(ARRIVAL_S)
    slow.release.set()
    fo.close(timeout=ARRIVAL_S)
    assert [s for _, s, _, _ in fast.got] == list(range(50))
    assert fast.threads == {threading.current_thread().name}
    assert wire.decode(fast.datas[-1]).arrays["t"][0, 0, 0] == 49
    assert fo.stats["inline"].delivered == 50 and fo.stats["bad"].errors == 50
    assert fo.stats["slow"].dropped > 0  # the threaded sink's latest-wins still applies to it
    assert fast.closed and bad.closed and slow.closed


def test_an_undeclared_sink_is_refused_at_the_door():
    """A sink must declare the Sink protocol (inline, lossless, ...): FanOut names what is missing."""
    class Bare:
        name, encoding = "bare", None

        def send(self, packet, data):
            pass

        def close(self):
            pass

    with pytest.raises(TypeError, match="lacks inline, lossless"):
        FanOut([Bare()])
