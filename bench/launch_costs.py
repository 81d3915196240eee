"""What each CUDA call of the runner's per-step hand-over costs the thread that makes it.

On a launch-bound GPU (SD 1.5 at 512² on an H100) the model's thread is the bottleneck, so a
step's extra CUDA calls cost what they take on the host, not on the GPU. This times each kind
the runner makes per step (docs/BENCHMARKS.md, issue 24), with the GPU kept busy so nothing
waits for it: a small kernel (``add_``), the word-maps gather (``index_select``), a device copy,
a non-blocking device→host copy into torch's pinned memory and into a registered mapping (the
step ring's), recording a blocking event, querying one, and making a timing event (what
``stepx bench``'s latency did in every step before it made them ahead). Prints the median and
90th percentile of the calling thread's CPU time per call (``time.thread_time_ns``) and of its
wall time, in microseconds.

    python bench/launch_costs.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch

from bridge.stream.ring import Ring, remove_folder, ring_folder


def _time(fn: Callable[[], object], calls: int) -> tuple[np.ndarray, np.ndarray]:
    """(thread CPU µs, wall µs) per call of ``fn``, with the GPU kept ahead of the host."""
    cpu, wall = np.empty(calls), np.empty(calls)
    for i in range(calls):
        if i % 200 == 0:
            torch.cuda.synchronize()
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU work queued: no call below waits for the GPU
        c, t = time.thread_time_ns(), time.perf_counter_ns()
        fn()
        wall[i], cpu[i] = (time.perf_counter_ns() - t) / 1e3, (time.thread_time_ns() - c) / 1e3
    torch.cuda.synchronize()
    return cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    dev = torch.device("cuda")
    maps = torch.rand(77, 64 * 64, device=dev)  # SD 1.5's token maps at 64², one row a token
    index = torch.arange(1, 13, device=dev)  # 12 one-token words
    staged = torch.empty(12, 64 * 64, device=dev)
    small = torch.zeros(1, device=dev)
    pinned = torch.empty(12 * 64 * 64, pin_memory=True)
    folder = ring_folder()
    ring = Ring.create(folder, slots=4)
    remove_folder(folder)
    slot = ring._slot_at[0][: staged.numel() * 4]  # noqa: SLF001 — the ring's own slot view, as land() uses it
    flat = staged.view(-1)
    event = torch.cuda.Event(blocking=True)
    event.record()
    cases: dict[str, Callable[[], object]] = {
        "kernel (add_ on 1 value)": lambda: small.add_(1.0),
        "index_select into staging": lambda: torch.index_select(maps, 0, index, out=staged),
        "device copy (copy_, 48 KiB)": lambda: staged.copy_(maps[:12]),
        "D2H into torch pinned (192 KiB)": lambda: pinned.copy_(flat, non_blocking=True),
        "D2H into the ring's mapping": lambda: slot.view(torch.float32).copy_(flat, non_blocking=True),
        "event record (blocking)": event.record,
        "event query": event.query,
        "timing event made and recorded": lambda: torch.cuda.Event(enable_timing=True).record(),
    }
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}; {args.calls} calls each, GPU kept busy")
    print(f"{'call':34s} {'CPU p50':>8s} {'CPU p90':>8s} {'wall p50':>9s} {'wall p90':>9s}  (µs)")
    try:
        for name, fn in cases.items():
            _time(fn, 50)  # warm
            cpu, wall = _time(fn, args.calls)
            print(f"{name:34s} {np.median(cpu):8.1f} {np.percentile(cpu, 90):8.1f} {np.median(wall):9.1f} {np.percentile(wall, 90):9.1f}")
    finally:
        torch.cuda.synchronize()
        ring.close()


if __name__ == "__main__":
    main()
