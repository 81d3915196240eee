"""PacketProcess: sinks in a spawned child, fed over a real loopback ZeroMQ socket."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from functools import partial

import numpy as np
import pytest

from bridge.protocol import Packet
from bridge.stream.process import PacketProcess
from bridge.stream.ring import SLOTS
from bridge.runner import Request, Runner, collect
from bridge.stream.recipes import step_packet
from bridge.stream.sinks import SinkError, build_sinks
from bridge.threads import FINE_SLACK_NS
from bridge.trace import TraceReader
from bridge import protocol as wire
from bridge.transport.zmq_sub import ZmqSubscriber
from waiting import ARRIVAL_S, wait_until

REQ = Request(prompt="a red circle above a blue square", steps=4, seed=5, width=64, height=64)


def _sinks(**options: object) -> partial:
    return partial(build_sinks, argparse.Namespace(**options))


def _without_run_id(header: dict) -> dict:
    """The header without what differs between two runs of the same request: the run id and the
    wall-clock times (``step_end``, ``sent``)."""
    return {k: v for k, v in header.items() if k not in ("run_id", "step_end", "sent")}


@pytest.mark.parametrize("phases_on,ring_slots", [("host", SLOTS), ("host", 1), ("host", 0), ("device", SLOTS)])
def test_packets_built_in_the_child_equal_those_built_in_process(sd_pipe, tmp_path, phases_on, ring_slots) -> None:
    """The runner sends recipes (host arrays + a module-level builder), or with phases_on='host'
    lands each step's maps in the ring and sends a notice: the child runs the phases too (and
    keeps the run's engine for its timeline). Either way it builds the same step and timeline
    packets, bit for bit up to the recorder's float16, as the in-process path, and records them
    losslessly. A one-slot ring is often still in use at the next step: those steps take the
    packet thread, and the order holds."""
    _, expected = collect(sd_pipe, REQ, image_every=0, phases_on=phases_on)
    trace = tmp_path / "run.stepx"
    with PacketProcess(_sinks(record=str(trace)), ring_slots=ring_slots) as pp:
        assert pp.sink_names == ["record"] and (pp.ring is not None) == (ring_slots > 0)
        assert pp.child_frozen > 10_000  # torch's and numpy's objects, out of the child's collector's reach (bridge/heap.py)
        if sys.platform.startswith("linux"):  # its ring polls wake on time, not 50 µs late (bridge/threads.py)
            assert pp.child_timer_slack == FINE_SLACK_NS
        runner = Runner(sd_pipe, pp, image_every=0, phases_on=phases_on)
        result = runner.run(REQ)
        assert result.status == "done"
        assert pp.flush(ARRIVAL_S)
        assert pp.recipes == REQ.steps + 2 * (phases_on == "host") and pp.dropped == 0  # + the timeline and prepare_run
        if ring_slots != 1:
            assert pp.staged == (REQ.steps if phases_on == "host" and ring_slots else 0)
        else:
            assert 1 <= pp.staged <= REQ.steps
        assert Runner(sd_pipe, pp).phases_where() == "host"  # the default with a sink process
    reader = TraceReader(trace)
    got = list(reader.packets())
    reader.close()
    assert [p.kind for p in got] == [p.kind for p in expected]
    compared = [(e, g) for e, g in zip(expected, got) if e.kind in ("step", "timeline")]
    assert len(compared) == REQ.steps + 1
    for e, g in compared:
        assert _without_run_id(g.header) == _without_run_id(e.header)
        assert sorted(g.arrays) == sorted(e.arrays)
        for name in e.arrays:
            # the recorder stores floats as float16: the same values, rounded once
            np.testing.assert_array_equal(g.arrays[name], e.arrays[name].astype(g.arrays[name].dtype), err_msg=name)


def test_step_previews_go_through_the_ring_in_run_order(sd_pipe, tmp_path) -> None:
    """With previews on, each step's maps and its preview image both land in the ring; the child
    builds the same packets, in the same order, as the in-process path (images bit for bit)."""
    _, expected = collect(sd_pipe, REQ, image_every=1)
    trace = tmp_path / "previews.stepx"
    with PacketProcess(_sinks(record=str(trace)), ring_slots=SLOTS) as pp:
        assert Runner(sd_pipe, pp, image_every=1).run(REQ).status == "done"
        assert pp.flush(ARRIVAL_S) and pp.dropped == 0
        assert pp.staged == 2 * REQ.steps  # every step's maps and preview
    with TraceReader(trace) as tr:
        got = list(tr.packets())
    assert [(p.kind, p.header.get("step")) for p in got] == [(p.kind, p.header.get("step")) for p in expected]
    previews = [(g, e) for g, e in zip(got, expected) if e.kind == "image" and not e.header["final"]]
    assert len(previews) == REQ.steps
    for g, e in previews:
        assert g.header["preview"] == "linear" and g.arrays["image"].dtype == np.uint8
        np.testing.assert_array_equal(g.arrays["image"], e.arrays["image"])


def test_a_staged_step_for_a_ring_the_child_has_not_mapped_is_skipped(tmp_path) -> None:
    """A notice naming another ring (a forged one, or one of a child that died) is refused in the
    parent when it knows, else logged and skipped in the child; the stream goes on."""
    from bridge.item_codec import encode_staged, join_frames
    from bridge.phases import PhaseConfig
    from bridge.stream.ring import Slot, StagedStep
    from tests.test_trace import run_packets

    trace = tmp_path / "t.stepx"
    with PacketProcess(_sinks(record=str(trace)), ring_slots=SLOTS) as pp:
        ring = pp.ring
        stale = StagedStep(Slot(ring.ident + 1, 0, 1), 4 * 16 + 4, "r0", ["a"], PhaseConfig(), (1, 4, 4), 0, 1, [], None, None)
        assert not pp.publish_staged(stale) and pp.dropped == 1
        assert not pp.publish_staged(stale, wait=False) and pp.dropped == 1  # not sent, nothing lost: the caller keeps it
        pp._sock.send(join_frames([b"S", *encode_staged(stale)]))  # past the parent's check: the child refuses it
        packets = run_packets("r1", steps=3)
        for p in packets:
            pp(p)
        assert pp.flush(ARRIVAL_S)
    with TraceReader(trace) as tr:
        assert [r.run_id for r in tr.runs] == ["r1"] and len(tr) == len(packets)


def test_a_sink_that_cannot_open_raises_in_the_parent() -> None:
    with pytest.raises(SinkError, match="not a loopback address"):
        PacketProcess(_sinks(zmq="tcp://10.9.8.7:5999"))


def test_a_bad_recipe_is_skipped_and_a_dead_child_is_replaced(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/pub.sock"
    sub = ZmqSubscriber(endpoint)
    pp = PacketProcess(_sinks(zmq=endpoint), restart_every=0.0, ring_slots=SLOTS)
    try:
        def received(marker: str, timeout: float = ARRIVAL_S) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pp(Packet("status", {"state": marker}))
                p = sub.recv(timeout=0.1)
                if p is not None and p.header.get("state") == marker:
                    return True
            return False

        assert received("first")
        with pytest.raises(ValueError, match="not a recipe the sink process runs"):
            pp.publish_recipe(partial(int, "not a number"))  # only allow-listed functions cross the channel
        bad = partial(step_packet, "r", {}, np.zeros(3, np.float32), [("textures", (9, 9))], [], 0.0)
        pp.publish_recipe(bad)  # an allowed recipe that fails in the child: logged, skipped
        assert received("after a bad recipe")
        with pp._lock:
            pp._sock.send(b"\x09\x00\x00\x00")  # not one message of frames: logged, skipped
        assert received("after a bad message")
        first, old = pp._proc.pid, pp.ring
        assert pp.alive() and old is not None
        os.kill(first, signal.SIGKILL)
        pp._proc.join(ARRIVAL_S)
        assert not pp.alive()
        assert received("after a restart")
        assert pp.alive()
        assert pp.restarts == 1 and pp._proc.pid != first
        # the new child maps a ring of its own: a notice for the old one is dropped and counted, not sent
        assert pp.ring is not None and pp.ring.ident != old.ident
        from bridge.phases import PhaseConfig
        from bridge.stream.ring import StagedStep

        slot = old.claim(4 * 16 + 4)
        stale = StagedStep(slot, 4 * 16 + 4, "r", ["a"], PhaseConfig(), (1, 4, 4), 0, 1, [], None, None)
        dropped = pp.dropped
        assert not pp.publish_staged(stale, wait=False) and pp.dropped == dropped  # not now: the caller queues it
        assert not pp.publish_staged(stale) and pp.dropped == dropped + 1
        assert received("after a stale notice")
    finally:
        pp.close()
        sub.close()
    assert not pp._proc.is_alive()


def test_a_replaced_child_continues_the_recording(tmp_path) -> None:
    """serve's restart factory: a child that dies between runs is replaced by one that appends to
    the trace, so the runs recorded before the crash are still in it."""
    from bridge.stream.sinks import restart_options

    trace = tmp_path / "night.stepx"
    options = argparse.Namespace(record=str(trace))
    pp = PacketProcess(partial(build_sinks, options), restart_sinks=partial(build_sinks, restart_options(options)),
                       restart_every=0.0)
    try:
        def run(run_id: str) -> None:
            pp(Packet("run", {"run_id": run_id, "words": ["a"], "total_steps": 2}))
            for s in range(2):
                pp(Packet("step", {"run_id": run_id, "step": s, "total_steps": 2}, {"textures": np.full((2, 4, 4), s, np.float32)}))
            pp(Packet("end", {"run_id": run_id, "status": "done"}))
            assert pp.flush(ARRIVAL_S)

        run("before")
        wait_until(trace.exists, what="the trace file")  # the end record written: between runs
        os.kill(pp._proc.pid, signal.SIGKILL)
        pp._proc.join(ARRIVAL_S)
        run("after")
        assert pp.restarts == 1
    finally:
        pp.close()
    with TraceReader(trace) as tr:
        assert [r.run_id for r in tr.runs] == ["before", "after"] and all(r.ended for r in tr.runs)


def test_cpu_lists_parse_and_a_child_can_be_kept_to_some_cpus() -> None:
    from bridge.stream.process import parse_cpus

    assert parse_cpus("0-3,8, 10-11") == {0, 1, 2, 3, 8, 10, 11}
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpus("0-x")
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    mine = sorted(os.sched_getaffinity(0))
    with PacketProcess(_sinks(), cpus={mine[-1]}) as pp:
        child = pp._proc.pid
        assert os.sched_getaffinity(child) == {mine[-1]}
    assert sorted(os.sched_getaffinity(0)) == mine  # the parent is left as it was


def test_the_internal_channel_admits_only_the_child(tmp_path) -> None:
    """The items (prompts, images) travel on an ipc:// socket made in a 0700 directory, and the
    socket file is gone once the child has connected: a local peer that tries to connect then
    gets no packet and feeds nothing in."""
    import stat

    import zmq

    from bridge.stream.process import private_endpoint
    from tests.test_trace import run_packets

    folder, endpoint = private_endpoint()
    st = os.stat(folder)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid() and endpoint.startswith("ipc://")
    os.rmdir(folder)
    trace = tmp_path / "private.stepx"
    with PacketProcess(_sinks(record=str(trace))) as pp:
        path = pp.endpoint[len("ipc://"):]
        assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))  # nothing left to connect to
        ctx = zmq.Context()
        intruder = ctx.socket(zmq.PAIR)
        intruder.setsockopt(zmq.LINGER, 0)
        intruder.connect(pp.endpoint)
        forged = Packet("run", {"run_id": "forged", "prompt": "x", "words": ["x"], "total_steps": 1})
        intruder.send_multipart([b"P", wire.encode(forged)], zmq.NOBLOCK)  # queued on its side, never delivered
        packets = run_packets("r1", steps=12)
        for p in packets:
            pp(p)
        assert pp.flush(ARRIVAL_S) and pp.dropped == 0
        assert intruder.poll(500) == 0  # not one packet dealt to it
        intruder.close()
        ctx.term()
    with TraceReader(trace) as tr:
        assert [r.run_id for r in tr.runs] == ["r1"] and len(tr) == len(packets)


def test_keep_heap_sets_glibc_malloc_where_there_is_one():
    """The sink process keeps large blocks on the heap (no page faults per step's arrays): on glibc
    mallopt accepts both settings; elsewhere it says it could not, and nothing else changes."""
    import platform

    from bridge.heap import keep_heap

    got = keep_heap()
    assert isinstance(got, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert got
