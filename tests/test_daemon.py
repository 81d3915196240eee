"""The daemon: preemption, playlists, idle replay, faults (bad requests, raising sinks, OOM)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from bridge.daemon import Daemon, DaemonOptions
from bridge.stream.fanout import FanOut
from bridge.protocol import Packet
from bridge.runner import Request, Runner
from bridge.transport.control import parse_request
from waiting import wait_until


class Collect:
    """A sink that keeps every packet (thread-safe)."""

    name, encoding, inline, lossless = "collect", None, False, False

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.lock = threading.Lock()

    def send(self, packet: Packet, data: bytes | None = None) -> None:
        with self.lock:
            self.packets.append(packet)

    def close(self) -> None:
        pass

    def kinds(self, kind: str, **match) -> list[Packet]:
        with self.lock:
            return [p for p in self.packets if p.kind == kind and all(p.header.get(k) == v for k, v in match.items())]


def wait_for(cond, timeout: float = 60.0) -> None:
    wait_until(cond, timeout)


@pytest.fixture
def daemon(sd_pipe):
    sink = Collect()
    published: list[Packet] = []

    def publish(p: Packet) -> None:
        published.append(p)
        sink.send(p)

    runner = Runner(sd_pipe, publish, "tiny", image_every=0)
    d = Daemon(runner, publish, DaemonOptions(idle_replay=False, heartbeat=0.2, playlist_pause=0.0))
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    yield d, sink
    d.stop()
    thread.join(30)
    assert not thread.is_alive()


def test_new_prompt_preempts_within_one_step(daemon):
    d, sink = daemon
    d.handle(parse_request({"cmd": "generate", "prompt": "a red circle", "steps": 200, "seed": 1}))
    wait_for(lambda: len(sink.kinds("step")) >= 2)
    first = sink.kinds("run")[0].header["run_id"]
    d.handle(parse_request({"cmd": "generate", "prompt": "a blue square", "steps": 3, "seed": 2}))
    seen_at_submit = len(sink.kinds("step", run_id=first))
    wait_for(lambda: len(sink.kinds("end")) >= 2)
    ends = sink.kinds("end")
    assert ends[0].header == {**ends[0].header, "run_id": first, "status": "cancelled"}
    assert len(sink.kinds("step", run_id=first)) <= seen_at_submit + 1  # stopped within one step
    second = ends[1].header["run_id"]
    assert ends[1].header["status"] == "done" and len(sink.kinds("step", run_id=second)) == 3
    assert sink.kinds("image", run_id=second)[-1].header["final"] is True


def test_bad_request_is_reported_and_daemon_keeps_serving(daemon):
    d, sink = daemon
    d.submit(Request("a red circle", steps=2, focus=["giraffe"]))
    wait_for(lambda: any(p.header.get("error") for p in sink.kinds("status")))
    err = [p for p in sink.kinds("status") if p.header.get("error")][0].header["error"]
    assert "giraffe" in err and "'circle'" in err
    d.submit(Request("a red circle", steps=2, seed=0))
    wait_for(lambda: any(p.header["status"] == "done" for p in sink.kinds("end")))


def test_out_of_memory_is_reported_and_next_run_works(daemon, sd_pipe):
    d, sink = daemon
    calls = {"n": 0}

    def explode(*_a, **_k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = sd_pipe.unet.register_forward_pre_hook(explode)
    try:
        d.submit(Request("a red circle", steps=3, seed=0))
        wait_for(lambda: any("out of memory" in str(p.header.get("error")) for p in sink.kinds("status")))
        assert sink.kinds("end")[-1].header["status"] == "error"
    finally:
        handle.remove()
    d.submit(Request("a red circle", steps=2, seed=0))
    wait_for(lambda: sink.kinds("end")[-1].header["status"] == "done")


def test_playlist_cycles_and_status_heartbeat(daemon):
    d, sink = daemon
    reply = d.handle(parse_request({"cmd": "playlist", "loop": True, "items": [
        {"prompt": "a red circle", "steps": 2, "seed": 1}, {"prompt": "a blue square", "steps": 2, "seed": 2}]}))
    assert reply == {"playlist": 2, "loop": True}
    wait_for(lambda: len([p for p in sink.kinds("end") if p.header["status"] == "done"]) >= 3)
    prompts = [p.header["prompt"] for p in sink.kinds("run")]
    assert prompts[:3] == ["a red circle", "a blue square", "a red circle"]
    assert d.handle(parse_request({"cmd": "status"}))["state"] in ("generating", "idle")
    wait_for(lambda: len(sink.kinds("status")) >= 3)  # heartbeat every 0.2 s


def test_idle_replay_keeps_the_patch_alive(sd_pipe):
    sink = Collect()
    runner = Runner(sd_pipe, sink.send, "tiny", image_every=0)
    d = Daemon(runner, sink.send, DaemonOptions(idle_replay=True, replay_fps=200, heartbeat=5))
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    try:
        d.submit(Request("a red circle", steps=2, seed=0))
        wait_for(lambda: any(p.header.get("replay") for p in sink.kinds("step")))
        replayed = [p for p in sink.kinds("step") if p.header.get("replay")]
        assert replayed[0].header["run_id"] == sink.kinds("run")[0].header["run_id"]
    finally:
        d.stop()
        thread.join(30)


class Raising:
    name, encoding, inline, lossless = "raising", "float16", False, False

    def send(self, packet, data):
        raise ConnectionError("receiver went away")

    def close(self):
        pass


def test_a_raising_sink_does_not_stop_generation(sd_pipe):
    sink = Collect()
    sink.lossless = True  # every step kept: a sink thread that a busy machine starves may not skip one
    with FanOut([Raising(), sink]) as fan:
        result = Runner(sd_pipe, fan.publish, "tiny").run(Request("a red circle", steps=3, seed=0))
        wait_until(lambda: len(sink.kinds("step")) == 3 and fan.stats["raising"].errors > 0, what="delivery")
    assert result.status == "done"
    assert len(sink.kinds("step")) == 3 and fan.stats["raising"].errors > 0


def test_through_a_sink_process_the_phases_run_there_and_the_idle_replay_still_plays(sd_pipe, tmp_path):
    """With a PacketProcess the runner sends recipes (phases in the child); the daemon keeps them
    and its idle replay sends them again, built there and marked as replays."""
    import argparse
    from functools import partial

    from bridge.stream.process import PacketProcess
    from bridge.stream.ring import SLOTS
    from bridge.stream.sinks import build_sinks
    from bridge.transport.zmq_sub import ZmqSubscriber

    endpoint = f"ipc://{tmp_path}/d.sock"
    sub = ZmqSubscriber(endpoint, topics=("stepx/step", "stepx/image", "stepx/timeline", "stepx/status"))
    pp = PacketProcess(partial(build_sinks, argparse.Namespace(zmq=endpoint)), ring_slots=SLOTS)

    def subscribed() -> bool:  # PUB drops what it sends before the subscription arrives: wait for it
        pp(Packet("status", {"state": "probe"}))
        return (p := sub.recv(timeout=0.1)) is not None and p.header.get("state") == "probe"

    wait_for(subscribed)
    runner = Runner(sd_pipe, pp, "tiny", image_every=1)
    d = Daemon(runner, pp, DaemonOptions(idle_replay=True, replay_fps=50, heartbeat=5))
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    try:
        got: list[Packet] = []

        def replayed_steps() -> int:
            for _ in range(20):  # bounded: the replay keeps the stream going
                if (p := sub.recv(timeout=0.05)) is None:
                    break
                got.append(p)
            return sum(1 for p in got if p.kind == "step" and p.header.get("replay"))

        d.submit(Request("a red circle", steps=3, seed=0))
        wait_for(lambda: replayed_steps() >= 4)  # the whole run once, and into the next loop
        assert runner.phases_where() == "host" and d.results[0].status == "done"
        assert pp.staged == 6  # maps and previews went through the ring: the replay rebuilds them from what the child kept
        live = [p for p in got if p.kind == "step" and not p.header.get("replay")]
        again = [p for p in got if p.kind == "step" and p.header.get("replay")]
        assert [p.header["step"] for p in live] == [0, 1, 2]
        assert [p.header["step"] for p in again[:3]] == [0, 1, 2]
        for a, b in zip(live, again):  # the child ran the phases again from step 0: the same frames
            assert a.header["run_id"] == b.header["run_id"] and a.header["phase_weights"] == b.header["phase_weights"]
            np.testing.assert_array_equal(a.arrays["textures"], b.arrays["textures"])
        previews = [p for p in got if p.kind == "image" and not p.header["final"]]
        live_images = [p for p in previews if not p.header.get("replay")]
        again_images = [p for p in previews if p.header.get("replay")]
        assert [p.header["step"] for p in live_images] == [0, 1, 2] and [p.header["step"] for p in again_images[:2]] == [0, 1]
        for a, b in zip(live_images, again_images):
            np.testing.assert_array_equal(a.arrays["image"], b.arrays["image"])
        assert d.status()["step"] == 2 and d.status()["fps"] > 0
    finally:
        d.stop()
        thread.join(30)
        pp.close()
        sub.close()
