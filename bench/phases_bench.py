"""Benchmark: one step of the phases stage for 77 words at 64x64, on CPU and (if available)
CUDA: ``PhaseEngine.update`` alone (the phases' cost), ``PhaseFrame.arrays()`` (the host copy,
the transport's cost) and both. Prints the median per step in ms, one line per device and path.

    python bench/phases_bench.py [--compile] [--compile-mode default|reduce-overhead|...]
        [--words 77] [--size 64] [--reps 200] [--dtype float32] [--threads N] [--device cpu|cuda|all]

With ``--compile`` each device gets an ``eager`` and a ``compiled`` line (the compile itself
happens in the warm-up steps and is reported separately as ``compile s``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bridge.phases import PhaseConfig, PhaseEngine


def bench(device: str, words: int, size: int, reps: int, dtype: str, compile: bool | str = False, warmup: int = 10) -> dict[str, float]:
    """Median ms of update alone, arrays alone, and both, over ``reps`` steps of one long run
    (plus the seconds the warm-up steps took, which include any compile)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    maps = (torch.rand((8, words, size, size), generator=gen) * 0.02).to(device)  # [8, N, H, W] inputs to cycle
    engine = PhaseEngine([f"w{i}" for i in range(words)], PhaseConfig(), device=device, compile=compile)
    total = warmup + reps
    upd, arr, both = [], [], []
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    warm_s = 0.0
    for step in range(total):
        if step == warmup:
            warm_s = time.perf_counter() - start
        sync()
        t0 = time.perf_counter()
        frame = engine.update(maps[step % 8], step, total)
        sync()
        t1 = time.perf_counter()
        frame.arrays(dtype)
        t2 = time.perf_counter()
        if step >= warmup:
            upd.append((t1 - t0) * 1e3)
            arr.append((t2 - t1) * 1e3)
            both.append((t2 - t0) * 1e3)
    return {"update": statistics.median(upd), "arrays": statistics.median(arr), "total": statistics.median(both), "warm_s": warm_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=77)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "uint8"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--compile", action="store_true", help="also time PhaseEngine(compile=...) next to eager")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for --compile (default: default)")
    parser.add_argument("--device", default="all", choices=("all", "cpu", "cuda"))
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [d for d in devices if d == args.device]
    paths: list[tuple[str, bool | str]] = [("eager", False)] + ([("compiled", args.compile_mode)] if args.compile else [])
    print(f"phases bench: {args.words} words, {args.size}x{args.size}, {args.reps} steps, arrays {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", compile mode {args.compile_mode}" if args.compile else ""))
    for device in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        for label, mode in paths:
            try:
                r = bench(device, args.words, args.size, args.reps, args.dtype, compile=mode)
            except Exception as exc:  # e.g. no C++ compiler for inductor's CPU backend: report, go on
                print(f"{device} {label:8s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            print(f"{device} {label:8s} update {r['update']:.3f} ms  arrays {r['arrays']:.3f} ms  "
                  f"update+arrays {r['total']:.3f} ms/step  (warm-up {r['warm_s']:.1f} s; {name})")


if __name__ == "__main__":
    main()
