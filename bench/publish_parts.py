"""Where the runner's own publishing work goes on the thread that launches the kernels, piece by
piece, in one process: SD 1.5's full-size shape at 512² (or any ``stepx bench`` architecture),
rounds of every variant interleaved, the median of per-round ratios against plain with its 95 %
bootstrap interval (as ``stepx bench``).

Variants, each adding one piece to the one before:

* ``plain``: diffusers alone; ``capture``: ``with capture(pipe)``, image out as plain;
* ``capture_latent``: capture, latents out, then the runner's one decode (``decode_full``);
* ``maps``: the :class:`~bridge.runner.Runner` (its setup, its step callback, the word maps staged
  on the device) with no host copy and nothing handed to the packet thread;
* ``snapshot``: + each step's non-blocking host copy (pinned memory, an event), never waited for;
* ``drop``: + the packet thread waiting for each copy and handing the recipe to a publisher that
  drops it (``stepx bench``'s ``publish_drop``: no sink process, no subscriber);
* ``staged``: instead of ``snapshot`` and ``drop``, each step's copy into a ring slot and its notice
  sent from the model's thread (bridge.stream.ring) to a publisher that frees the slot and drops
  the notice: what the model's process does per step with a sink process, no thread woken.

Besides the times it records, per variant, the model thread's CPU per image, the runner's step
callback's CPU per step (the model thread's ``time.thread_time`` around it), and the packet
thread's CPU per image (``/proc``), so a GPU call says which piece costs what.

    python bench/publish_parts.py [--arch sd15] [--runs 40] [--warmup 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any, Callable

import numpy as np
import torch

import bridge.runner as runner_module
from bridge.bench import PROMPT, _Drop, _sync, median_ci
from bridge.capture import Capture, capture
from bridge.latent_preview import decode_full
from bridge.runner import Request, Runner
from bridge.stream.ring import Ring, remove_folder, ring_folder

VARIANTS = ("plain", "capture", "capture_latent", "maps", "snapshot", "drop", "staged")


class _Nothing:
    """A publisher that is never called: the runner variants below hand it nothing."""

    remote = True

    def publish(self, packet: Any) -> None:
        raise AssertionError("nothing is handed over in this variant")

    publish_recipe = publish

    def alive(self) -> bool:
        return True


class _DropStaged:
    """A staging publisher with a ring of its own and no sink process: each notice frees its slot
    at once (the values are never read) and is dropped."""

    remote = True

    def __init__(self) -> None:
        folder = ring_folder()
        self.ring = Ring.create(folder)
        remove_folder(folder)  # mapped: the file is not needed any more

    def publish(self, packet: Any) -> None:
        pass

    def publish_recipe(self, recipe: Any) -> None:
        pass

    def publish_staged(self, staged: Any, wait: bool = True) -> bool:
        self.ring.release(staged.slot.index, staged.slot.seq)
        return True

    def alive(self) -> bool:
        return True


class MapsOnly(Runner):
    """The runner's setup and step callback, word maps included; no snapshot, nothing handed over."""

    def _host_step_packet(self, *args: Any, **kwargs: Any) -> Callable[[], Any]:
        return lambda: None

    def _later(self, fetch: Callable[[], Any]) -> None:
        pass


class SnapshotOnly(Runner):
    """As the runner, each step's host copy launched; nothing handed to the packet thread."""

    def _later(self, fetch: Callable[[], Any]) -> None:
        pass


class _TimedCapture(Capture):
    """The runner's Capture with its step callback timed on the calling (model's) thread."""

    spent: list[float] = []  # thread CPU seconds per step callback, across runs

    def __init__(self, pipe: Any, config: Any = None, on_step: Any = None, on_run: Any = None) -> None:
        if on_step is not None:
            inner = on_step

            def on_step(frame: Any, run: Any) -> None:
                t = time.thread_time()
                inner(frame, run)
                _TimedCapture.spent.append(time.thread_time() - t)

        super().__init__(pipe, config, on_step, on_run)


def _thread_cpu(native_id: int) -> float:
    """CPU seconds a thread of this process has run (``/proc/self/task/<tid>/schedstat``)."""
    with open(f"/proc/self/task/{native_id}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sd15", help="a stepx bench architecture: sd15, sdxl, … or dispatch (CPU)")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=None, help="start no round after this long")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    variants = ["plain", *[v for v in args.variants if v != "plain"]]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.arch == "dispatch":
        from bridge.models.tiny import dispatch_sd_pipeline

        pipe = dispatch_sd_pipeline().to(device)
        torch.set_num_threads(1)
    else:
        from bridge.models import fullsize

        pipe = getattr(fullsize, f"{args.arch}_pipeline")(str(device), torch.float16 if device.type == "cuda" else torch.float32)
    runner_module.Capture = _TimedCapture  # type: ignore[misc]  # the runners below time their step callback

    def gen(**extra: Any) -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, generator=g, **{"output_type": "np", **extra})

    def with_capture_latent() -> None:
        with capture(pipe):
            latents = gen(output_type="latent").images
        decode_full(pipe, latents[:1])

    runners = {"maps": MapsOnly(pipe, _Nothing(), "bench", image_every=0),
               "snapshot": SnapshotOnly(pipe, _Nothing(), "bench", image_every=0),
               "drop": Runner(pipe, _Drop(), "bench", image_every=0),
               "staged": Runner(pipe, _DropStaged(), "bench", image_every=0)}
    workers = {v: r._out._thread.native_id for v, r in runners.items()}  # noqa: SLF001 — a measurement of that very thread

    def run(v: str) -> Callable[[], None]:
        def go() -> None:
            result = runners[v].run(Request(PROMPT, seed=0, steps=args.steps, guidance=7.5))
            if result.status != "done":
                raise RuntimeError(result.error)

        return go

    table: dict[str, Callable[[], Any]] = {"plain": gen, "capture": lambda: _with(pipe, gen), "capture_latent": with_capture_latent,
                                            **{v: run(v) for v in runners}}
    times: dict[str, list[float]] = {v: [] for v in variants}
    model_cpu: dict[str, list[float]] = {v: [] for v in variants}
    worker_cpu: dict[str, list[float]] = {v: [] for v in variants if v in runners}
    callback: dict[str, list[float]] = {v: [] for v in variants if v in runners}
    with torch.inference_mode():
        for v in variants:
            table[v]()
        started = time.perf_counter()
        for r in range(args.warmup + args.runs):
            if args.max_seconds and r > args.warmup and time.perf_counter() - started > args.max_seconds:
                break
            for v in variants[r % len(variants):] + variants[: r % len(variants)]:
                _sync(device)
                _TimedCapture.spent.clear()
                w0 = _thread_cpu(workers[v]) if v in workers else 0.0
                t, c = time.perf_counter(), time.thread_time()
                table[v]()
                cpu = time.thread_time() - c
                _sync(device)
                dt = time.perf_counter() - t
                if r >= args.warmup:
                    times[v].append(dt)
                    model_cpu[v].append(cpu)
                    if v in workers:
                        worker_cpu[v].append(_thread_cpu(workers[v]) - w0)
                        callback[v].extend(_TimedCapture.spent)
    ratios = {v: np.array([t / p for t, p in zip(times[v], times["plain"])]) for v in variants}
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "python": platform.python_version(), "arch": args.arch, "steps": args.steps,
        "runs": len(times["plain"]), "cpus": len(os.sched_getaffinity(0)),
        "median_seconds": {v: float(np.median(t)) for v, t in times.items()},
        "median_ratio_vs_plain": {v: round(float(np.median(x)), 4) for v, x in ratios.items()},
        "ratio_ci95": {v: median_ci(x) for v, x in ratios.items()},
        "model_thread_cpu_ms": {v: round(1e3 * float(np.median(c)), 2) for v, c in model_cpu.items()},
        "packet_thread_cpu_ms": {v: round(1e3 * float(np.median(c)), 3) for v, c in worker_cpu.items()},
        "step_callback_cpu_us": {v: round(1e6 * float(np.median(c)), 1) for v, c in callback.items() if c},
        "seconds": {v: [round(x, 5) for x in t] for v, t in times.items()},
    }
    for v in variants:
        extra = (f"  callback {result['step_callback_cpu_us'].get(v, 0):7.1f} µs/step  packet thread {result['packet_thread_cpu_ms'][v]:6.2f} ms"
                 if v in worker_cpu else "")
        print(f"{v:15s} {result['median_ratio_vs_plain'][v]:.4f} ({result['ratio_ci95'][v][0]:.3f}–{result['ratio_ci95'][v][1]:.3f})"
              f"  model thread {result['model_thread_cpu_ms'][v]:7.2f} ms{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def _with(pipe: Any, gen: Callable[[], Any]) -> Any:
    with capture(pipe):
        return gen()


if __name__ == "__main__":
    main()
