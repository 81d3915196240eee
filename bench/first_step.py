"""A run's first step packet against its others, in the sink process's way: each step's recipe
(phases on the CPU, then the Packet) and its float16 wire encoding, one step every ``--interval``
seconds (caches as cold as the sink process has them), with and without the run's preparation
(``bridge.stream.recipes.prepare_run``, which the runner sends with the run packet, one step
ahead). Wall milliseconds per step, median over ``--runs`` runs after two warm-up runs; and how
many garbage collections ran inside the timed steps (the heap frozen, as in the sink process).

    python bench/first_step.py [--runs 20] [--steps 20] [--words 13] [--size 64] [--interval 0.027]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bridge.bench import GcMeter
from bridge.phases import PhaseConfig
from bridge.protocol import Packet, encode
from bridge.heap import freeze_heap, keep_heap
from bridge.stream.recipes import host_step_packet, prepare_run
from sink_cpu import step_options  # bench/, this script's folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_options(ap, runs=20)
    args = ap.parse_args()
    keep_heap()  # as the sink process does
    torch.set_num_threads(1)
    freeze_heap()  # as the sink process does once its sinks are made
    collections = GcMeter()  # the garbage collections inside each timed step
    words = [f"w{i}" for i in range(args.words)]
    rng = np.random.default_rng(0)
    maps = [rng.random((args.words, args.size, args.size), dtype=np.float32) for _ in range(args.steps)]
    cfg = PhaseConfig()
    times: dict[bool, dict[str, list[float]]] = {p: {"first": [], "others": []} for p in (False, True)}
    for run in range(2 * (args.runs + 2)):
        prepared, counted = bool(run % 2), run >= 4  # alternate, so drift hits both alike
        run_id = f"run{run}"
        if prepared:
            time.sleep(args.interval)
            prepare_run(run_id, words, cfg, args.size, args.size)
        for step in range(args.steps):
            time.sleep(args.interval)
            collections.start()
            t = time.perf_counter()
            p = host_step_packet(run_id, words, cfg, maps[step].copy(), step, args.steps, [], 999.0 - step, time.time())
            encode(Packet(p.kind, {**p.header, "sent": time.time()}, p.arrays), "float16")
            if counted:
                times[prepared]["first" if step == 0 else "others"].append(1000 * (time.perf_counter() - t))
                collections.stop("step")
    print(f"{args.runs} runs each way, {args.words} words, {args.size}² maps, a step every {1000 * args.interval:.0f} ms; "
          "recipe + float16 encoding, wall ms (median):")
    for prepared, t in times.items():
        first, others = np.median(t["first"]), np.median(t["others"])
        print(f"  {'with' if prepared else 'without'} prepare_run: step 0 {first:.2f}, the others {others:.2f} ({first - others:+.2f})")
    inside = np.array(collections.calls["step"])  # [timed steps, generations 0-2 and ms]
    collections.close()
    print(f"garbage collections inside the {len(inside)} timed steps: {inside[:, :3].sum():g} ({inside[:, 3].sum():.2f} ms)")


if __name__ == "__main__":
    main()
