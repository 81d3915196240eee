"""Which CPUs slow CPU 0 down when busy (hyper-thread siblings a VM does not show in its
topology), measured: a Python loop pinned to CPU 0 runs alone, then beside a spinning process
pinned to each other CPU in turn. Prints the slowdown per CPU (Linux).

    python bench/smt_probe.py [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _loop_rate(seconds: float) -> float:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            n += 1
    return n / seconds


def _spin(cpu: int, stop: "mp.synchronize.Event") -> None:
    os.sched_setaffinity(0, {cpu})
    while not stop.is_set():
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--reps", type=int, default=3, help="measurements per CPU (the best one counts: other tenants only slow it)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    home = cpus[0]
    os.sched_setaffinity(0, {home})
    ctx = mp.get_context("spawn")
    alone = [_loop_rate(args.seconds) for _ in range(args.reps)]
    base = max(alone)
    rows = []
    for cpu in cpus[1:]:
        stop = ctx.Event()
        p = ctx.Process(target=_spin, args=(cpu, stop), daemon=True)
        p.start()
        time.sleep(0.05)
        rate = max(_loop_rate(args.seconds) for _ in range(args.reps))
        stop.set()
        p.join(2)
        rows.append((cpu, base / rate))
    print(f"CPU {home} alone: {base / 1e6:.1f} M iterations/s; slowdown with one other CPU spinning:")
    print(" ".join(f"{cpu}:{slow:.3f}" for cpu, slow in rows))
    worst = max(rows, key=lambda r: r[1])
    print(f"worst: CPU {worst[0]} ({worst[1]:.2f}×){'  <- a hidden sibling' if worst[1] > 1.15 else ''}")


if __name__ == "__main__":
    main()
