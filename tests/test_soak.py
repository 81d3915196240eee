"""A short soak: the daemon cycles a playlist with a slow and a failing receiver, and its memory
stays flat (the all-night case, bounded to a few seconds here)."""

from __future__ import annotations

import gc
import os
import threading
import time

from bridge.daemon import Daemon, DaemonOptions
from bridge.stream.fanout import FanOut
from bridge.runner import Request, Runner


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
