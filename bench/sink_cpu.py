"""CPU time the sink process and a subscriber spend per step: the *other* processes' work
that slows the thread launching the model's kernels on a GPU host (docs/BENCHMARKS.md:
``capture_busy``, two processes busy 4 ms in every 30, made capture 2.3 % slower on an H200).

Pushes ``--runs`` runs of ``--steps`` step recipes (the runner's own: phases on the CPU, then the
step packet) to a real :class:`~bridge.stream.process.PacketProcess` publishing float16 over
ZeroMQ, one every ``--interval`` seconds (SD 1.5's step on an H200), to a subscriber in a third
process that receives and decodes every packet, as ``stepx bench``'s *publish* does. Prints the
CPU milliseconds per step of each process (all its threads, from ``/proc``), the received count,
the minor page faults of the sink process per step, where its time goes (each stage of one step,
timed in this process), and the model process's share: the thread CPU of handing one recipe over
(encoding and sending it, on the packet thread) and the Python calls that makes.

    python bench/sink_cpu.py [--runs 10] [--steps 20] [--words 13] [--size 64] [--interval 0.027]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from functools import partial
from typing import Callable

import numpy as np
import torch

from bridge.bench import _zmq_sinks
from bridge.stream.process import PacketProcess
from bridge.phases import PhaseConfig
from bridge.stream.recipes import host_step_packet
from bridge.item_codec import decode_item, encode_item
from bridge.protocol import Packet, encode

ENDPOINT = "tcp://127.0.0.1:5593"


def cpu_seconds(pid: int) -> dict[str, float]:
    """Run time so far of each thread of ``pid`` by name (``/proc/<pid>/task/*/schedstat``)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f"{f.read().strip()}" if tid != str(pid) else "main"
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[name] = out.get(name, 0.0) + int(f.read().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            pass
    return out


def minor_faults(pid: int) -> int:
    """Page faults so far that the kernel served without I/O (``/proc/<pid>/stat`` field 10):
    first touches of freshly mapped memory, each costing a fault and a zeroed page."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def per_step_ms(before: dict[str, float], after: dict[str, float], steps: int) -> dict[str, float]:
    return {k: 1000 * (v - before.get(k, 0.0)) / steps for k, v in after.items()}


def chain_ms(recipe: Callable[[int, int], partial], runs: int, steps: int) -> dict[str, float]:
    """The sink process's work for one step, stage by stage, in this process: the item as the
    parent encodes it (``encode``, the model process's share), decoded from its frames, the
    recipe run (phases + Packet), the FanOut's send stamp and float16 wire encoding. Thread CPU
    time (``time.thread_time``), median over ``runs`` × ``steps`` steps after one warm-up run."""
    names = ("parent encode_item", "decode_item", "recipe", "wire encode", "sink total")
    seen: dict[str, list[float]] = {k: [] for k in names}
    for run in range(-1, runs):
        for step in range(steps):
            t0 = time.thread_time()
            frames = encode_item(recipe(-10 - run, step))
            t1 = time.thread_time()
            received = [bytes(frames[0]), *(memoryview(bytes(f)) for f in frames[1:])]  # as off the socket
            t2 = time.thread_time()
            item = decode_item(received)
            t3 = time.thread_time()
            packet = item()
            t4 = time.thread_time()
            encode(Packet(packet.kind, {**packet.header, "sent": time.time()}, packet.arrays), "float16")
            t5 = time.thread_time()
            if run >= 0:
                for k, v in zip(names, (t1 - t0, t3 - t2, t4 - t3, t5 - t4, t5 - t2)):
                    seen[k].append(1000 * v)
    return {k: float(np.median(v)) for k, v in seen.items()}


def python_calls(fn: Callable[[], object]) -> int:
    """How many Python-level calls (functions and builtins) one call of ``fn`` makes."""
    count = 0

    def tally(_frame: object, event: str, _arg: object) -> None:
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(tally)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count - 1  # less fn itself


def _subscribe(endpoint: str, ready: object, stop: object, out: object) -> None:
    from bridge.transport.zmq_sub import ZmqSubscriber

    sub = ZmqSubscriber(endpoint, topics=("stepx/step",))
    ready.set()  # type: ignore[attr-defined]
    n = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        p = sub.recv(timeout=0.1)
        if p is not None:
            n += 1
            assert all(a.size for a in p.arrays.values())  # decoded, as a receiver would
    sub.close()
    out.put(n)  # type: ignore[attr-defined]


def step_options(ap: argparse.ArgumentParser, runs: int) -> None:
    """The options of a stream of synthetic SD 1.5-sized steps (this script's and first_step.py's)."""
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--words", type=int, default=13, help="13: stepx bench's prompt")
    ap.add_argument("--size", type=int, default=64, help="map side (SD 1.5 at 512²: 64)")
    ap.add_argument("--interval", type=float, default=0.027, help="seconds between steps (SD 1.5's step on an H100)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_options(ap, runs=10)
    ap.add_argument("--endpoint", default=ENDPOINT, help="where the sink publishes (another port on a shared machine)")
    args = ap.parse_args()
    words = [f"w{i}" for i in range(args.words)]
    rng = np.random.default_rng(0)
    maps = [rng.random((args.words, args.size, args.size), dtype=np.float32) for _ in range(args.steps)]
    cfg = PhaseConfig()

    def recipe(run: int, step: int) -> partial:
        return partial(host_step_packet, f"run{run}", words, cfg, maps[step], step, args.steps, [], 999.0 - step, time.time())

    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=_subscribe, args=(args.endpoint, ready, stop, out), daemon=True)
    sub.start()
    ready.wait(60)
    sinks = PacketProcess(partial(_zmq_sinks, args.endpoint))
    child = sinks._proc.pid  # noqa: SLF001 — a measurement of that very process
    time.sleep(0.5)  # the subscriber connects
    for step in range(args.steps):  # warm-up run: imports, first allocations
        sinks.publish_recipe(recipe(-1, step))
    sinks.flush()
    time.sleep(0.2)
    c0, s0, f0, p0 = cpu_seconds(child), cpu_seconds(sub.pid), minor_faults(child), cpu_seconds(os.getpid())
    t0 = time.perf_counter()
    handover: list[float] = []  # the model process's share: thread CPU of each hand-over (encode + send)
    for run in range(args.runs):
        for step in range(args.steps):
            item = recipe(run, step)
            t = time.thread_time()
            sinks.publish_recipe(item)
            handover.append(1000 * (time.thread_time() - t))
            time.sleep(args.interval)
    sinks.flush()
    time.sleep(0.3)
    n_steps = args.runs * args.steps
    child_threads = per_step_ms(c0, cpu_seconds(child), n_steps)
    parent_threads = per_step_ms(p0, cpu_seconds(os.getpid()), n_steps)  # this process: the hand-overs, and ZeroMQ's threads
    child_ms = sum(child_threads.values())
    faults = (minor_faults(child) - f0) / n_steps
    sub_ms = sum(per_step_ms(s0, cpu_seconds(sub.pid), n_steps).values())
    wall = time.perf_counter() - t0
    stop.set()
    received = out.get(timeout=30) - args.steps  # less the warm-up run
    sub.join(5)
    calls = python_calls(partial(sinks.publish_recipe, recipe(-4, 0)))
    sinks.close()

    torch.set_num_threads(1)  # as in the sink process
    stages = chain_ms(recipe, args.runs, args.steps)
    print(f"{n_steps} steps over {wall:.1f} s ({args.words} words, {args.size}² maps, one every {1000 * args.interval:.0f} ms)")
    print(f"sink process: {child_ms:.2f} CPU ms per step ({100 * child_ms / (1000 * args.interval):.1f} % of one core)")
    print(f"  {faults:.0f} minor page faults per step")
    print("  by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(child_threads.items(), key=lambda kv: -kv[1]) if v >= 0.01))
    print("  timed here (thread CPU, median per step): " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()) + " ms")
    print(f"subscriber: {sub_ms:.2f} CPU ms per step; received {received} of {n_steps}")
    print(f"model process (the packet thread's hand-over of a recipe): {np.median(handover):.3f} CPU ms per step, "
          f"{calls} Python calls; its other threads: " +
          ", ".join(f"{k} {v:.2f}" for k, v in sorted(parent_threads.items(), key=lambda kv: -kv[1]) if v >= 0.01 and k != "main"))


if __name__ == "__main__":
    main()
