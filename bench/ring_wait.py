"""How late the sink process sees a step's values land in the ring: the time from the stamp's
landing to ``Ring.wait`` returning, which every ring step adds to its latency (step → subscriber).

Two processes as in ``stepx serve``: this one claims a slot, sends the child the notice, waits a
random 0.1–2 ms (the GPU finishing the step and its copy; a busy wait, so the landing is on time)
and writes the stamp, noting when; the child, told of the slot, calls ``Ring.wait`` and notes
when it returned. Both on ``time.perf_counter`` (CLOCK_MONOTONIC on Linux: one clock for both
processes). Three ways of polling, rounds interleaved:

* ``old``: stop 28's polls, a 20 µs sleep doubling to 500 µs, Linux's default 50 µs timer slack;
* ``fine_default_slack``: today's polls (``ring.poll_pause``) with the default slack;
* ``fine``: today's polls with the thread's slack at 1 µs (``threads.fine_timer_slack``), as the
  sink process runs them.

Prints each way's lateness p50 / p90 / p99 / max in µs and the child's polls per step.

    python bench/ring_wait.py [--steps 300] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from typing import Any

import numpy as np
import torch

from bridge.stream import ring as ring_module
from bridge.stream.ring import PAGE, Ring, remove_folder, ring_folder
from bridge.threads import fine_timer_slack

WAYS = ("old", "fine_default_slack", "fine")


def _old_wait(r: Ring, index: int, seq: int, timeout: float) -> int:
    """Stop 28's ``Ring.wait``: a 20 µs sleep, doubling at each poll, at most 500 µs; its polls."""
    deadline, pause, stamp, polls = time.monotonic() + timeout, 20e-6, seq % ring_module.STAMPS, 0
    while int(r.landed[index]) != stamp and time.monotonic() < deadline:
        time.sleep(pause)
        pause, polls = min(2 * pause, 500e-6), polls + 1
    return polls


def _child(path: str, slots: int, way: str, conn: Any) -> None:
    """The sink process's side: wait for each noticed slot's stamp the ``way`` asked, say when it was seen."""
    r = Ring(path, slots, PAGE, 0, create=False)
    polls = [0]
    pause = ring_module.poll_pause

    def counted(waited: float) -> float:
        polls[0] += 1
        return pause(waited)

    ring_module.poll_pause = counted  # Ring.wait's own polls, counted
    if way == "fine":
        fine_timer_slack()
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        index, seq = msg
        if way == "old":
            n = _old_wait(r, index, seq, 5.0)
        else:
            before = polls[0]
            r.wait(index, seq, timeout=5.0)
            n = polls[0] - before
        seen = time.perf_counter()
        r.read(index, seq, 8, np.dtype(np.uint8))
        conn.send((seen, n))
    r.close()


def _busy_until(t: float) -> None:
    while time.perf_counter() < t:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="steps per way per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    late: dict[str, list[float]] = {w: [] for w in WAYS}
    polls: dict[str, list[int]] = {w: [] for w in WAYS}
    rng = random.Random(24)
    values = torch.ones(8, dtype=torch.uint8)
    for rnd in range(args.rounds):
        for way in WAYS[rnd % len(WAYS):] + WAYS[: rnd % len(WAYS)]:
            folder = ring_folder()
            r = Ring.create(folder, slots=4, slot_bytes=PAGE)
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(r.path, 4, way, there), daemon=True)
            proc.start()
            assert here.recv() == "ready"
            for _ in range(args.steps):
                slot = r.claim(8)
                assert slot is not None
                delay = rng.uniform(0.1e-3, 2.0e-3)
                here.send((slot.index, slot.seq))  # the notice: sent as the copy is launched
                t_land = time.perf_counter() + delay
                _busy_until(t_land)
                r.land(slot, values)  # on the CPU: the values, then the stamp
                landed = time.perf_counter()
                seen, n = here.recv()
                late[way].append(1e6 * (seen - landed))
                polls[way].append(n)
                time.sleep(rng.uniform(0.5e-3, 2e-3))  # the next step comes later
            here.send(None)
            proc.join(5)
            r.close()
            remove_folder(folder)
    result: dict[str, Any] = {"steps": args.steps, "rounds": args.rounds, "late_us": {}, "polls_per_step": {}}
    print(f"{args.steps} steps x {args.rounds} rounds per way; values land 0.1-2 ms after the notice")
    print(f"{'way':20s} {'late p50':>9s} {'p90':>7s} {'p99':>7s} {'max':>7s} us   polls/step")
    for way in WAYS:
        v = np.array(late[way])
        q = {k: round(float(np.percentile(v, p)), 1) for k, p in (("p50", 50), ("p90", 90), ("p99", 99))}
        q["max"] = round(float(v.max()), 1)
        result["late_us"][way] = q
        result["polls_per_step"][way] = round(float(np.mean(polls[way])), 1)
        print(f"{way:20s} {q['p50']:9.1f} {q['p90']:7.1f} {q['p99']:7.1f} {q['max']:7.1f}      {result['polls_per_step'][way]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
