#!/usr/bin/env python3
"""A 64² request (embedded shapes model, 20 steps, capture + phases + packets) with 1 and 2 torch
threads, alternating, on this 2-core machine: the load average is printed with each."""
import os
import time
import torch
from bridge.models.loading import load_pipeline
from bridge.runner import Request, collect
pipe, _ = load_pipeline(None, "cpu")
req = Request("a red circle above a blue square", seed=1, steps=20, width=64, height=64)
res = {1: [], 2: []}
for n in (1, 2):
    torch.set_num_threads(n); collect(pipe, req)
for r in range(4):
    for n in ((1, 2) if r % 2 == 0 else (2, 1)):
        torch.set_num_threads(n)
        t = time.perf_counter(); out, _ = collect(pipe, req); dt = time.perf_counter() - t
        assert out.status == "done"
        res[n].append(dt); print(f"threads {n}: {dt:.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
for n, ts in res.items():
    print(f"threads {n}: median {sorted(ts)[len(ts)//2]:.2f} s over {len(ts)}")
