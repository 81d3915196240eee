"""What handing a step's maps to the sink process costs the thread that launches the kernels,
by who hands them over: a packet thread (woken per step) or that thread itself (inline, once
the copy has landed). A controlled stand-in for SD 1.5's launch-bound loop: ``--launches``
small kernels per step (about 28 ms of launching on a fast host, as SD 1.5 at 512² spends per
step), 20 steps per round, each step ending with the runner's snapshot of ``[words, 64, 64]``
maps; rounds of each mode interleaved, median of per-round ratios against ``none`` (the
snapshot made and dropped). The recipes go to a real :class:`~bridge.stream.process.PacketProcess`
that runs the phases and publishes to ZeroMQ, as in ``stepx bench``'s *publish*.

    python bench/delivery_bench.py [--rounds 40] [--launches 5000] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import torch

from bridge.bench import _zmq_sinks, median_ci
from bridge.stream.host import HostSnapshot, OrderedWorker
from bridge.stream.process import PacketProcess
from bridge.phases import PhaseConfig
from bridge.stream.recipes import host_step_packet

WORDS = ["a", "photo", "of", "a", "red", "fox"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--launches", type=int, default=5000, help="small kernels launched per step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    x = torch.zeros(1024, device=device)
    maps = torch.rand(len(WORDS), 64, 64, device=device)  # [W, H, W]
    ts = torch.tensor(500.0, device=device)
    cfg = PhaseConfig()
    packets = PacketProcess(partial(_zmq_sinks, "tcp://127.0.0.1:5597"))
    worker = OrderedWorker(torch_threads=1)
    run_no = [0]

    def recipe(run_id: str, snap: HostSnapshot, step: int) -> partial:
        host = snap.get()
        return partial(host_step_packet, run_id, WORDS, cfg, host["maps"].numpy(), step, args.steps, [], float(host["timestep"]))

    def one_run(mode: str) -> float:
        run_no[0] += 1
        run_id = f"r{run_no[0]}"
        pending: list[tuple[HostSnapshot, int]] = []
        t = time.perf_counter()
        for step in range(args.steps):
            for _ in range(args.launches):
                x.add_(1.0)
            snap = HostSnapshot({"maps": maps * 1.0, "timestep": ts})
            if mode == "worker":
                worker.put(lambda snap=snap, step=step: packets.publish_recipe(recipe(run_id, snap, step)))
            elif mode == "inline":
                while pending and pending[0][0].ready():
                    done, s = pending.pop(0)
                    packets.publish_recipe(recipe(run_id, done, s))
                pending.append((snap, step))
        for done, s in pending:  # the run's end: what is left
            packets.publish_recipe(recipe(run_id, done, s))
        worker.flush()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    modes = ["none", "worker", "inline"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes * 2:  # warm-up: kernels, the child's phases, pinned blocks
        one_run(m)
    for r in range(args.rounds):
        for m in modes[r % 3:] + modes[: r % 3]:
            times[m].append(one_run(m))
    packets.close()
    worker.close()
    base = np.array(times["none"])
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}, "
          f"{args.rounds} rounds of {args.steps} steps × {args.launches} launches")
    for m in modes:
        ratio = np.array(times[m]) / base
        per_step_us = (statistics.median(times[m]) - statistics.median(times["none"])) / args.steps * 1e6
        print(f"{m:7s} median round {statistics.median(times[m]) * 1e3:7.1f} ms  ratio {np.median(ratio):.4f} "
              f"(95% {median_ci(ratio)})  {per_step_us:+7.0f} µs per step")


if __name__ == "__main__":
    main()
