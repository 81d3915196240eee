"""Capture overhead against plain diffusers, in one process, interleaved, median of ratios.

Each round runs every variant once, in a rotated order, on the same pipeline and seed; the
figure per variant is the median over rounds of (variant time / plain time in that round), so
drifts in clock speed or temperature cancel. Also: peak device memory per variant and the
latency from a step's end to a local ZeroMQ subscriber's receipt.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from bridge.stream.recipes import host_step_packet
from bridge.stream.ring import SLOTS

if TYPE_CHECKING:
    from bridge.runner import Publish
    from bridge.stream.publisher import Publisher

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (run_id, step): one published step

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _daam_trace():
    """DAAM 0.2.0's trace, imported with spaCy stubbed where it is not installed (its trace path
    does not use it); the stubs are gone from ``sys.modules`` afterwards, so a real spaCy user in
    this process (the objects analysis) never meets them."""
    import types

    if "spacy" in sys.modules or importlib.util.find_spec("spacy") is not None:
        from daam import trace  # noqa: WPS433

        return trace
    spacy, tokens = types.ModuleType("spacy"), types.ModuleType("spacy.tokens")
    for attr in ("Doc", "Token", "Span"):
        setattr(tokens, attr, object)
    spacy.tokens, spacy.load = tokens, lambda *a, **k: None  # type: ignore[attr-defined]
    sys.modules.update({"spacy": spacy, "spacy.tokens": tokens})
    try:
        from daam import trace  # noqa: WPS433
    finally:
        for name in ("spacy", "spacy.tokens"):
            sys.modules.pop(name, None)
    return trace


def _subscribe(endpoints: list[str], ready: Any, stop: Any, out: Any, cpus: set[int] | None = None) -> None:
    """Subscriber process: stamp each step packet's arrival (``time.perf_counter``, the system's
    monotonic clock on Linux, comparable across processes) until ``stop``; send the stamps."""
    from bridge.stream.process import set_cpus
    from bridge.transport.zmq_sub import ZmqSubscriber

    if cpus:
        set_cpus(cpus)
    sub = ZmqSubscriber(endpoints[0], topics=("stepx/step",))
    for other in endpoints[1:]:
        sub.sock.connect(other)
    ready.set()
    received: dict[Key, float] = {}
    built: dict[Key, float] = {}  # the FanOut's ``sent`` stamp, on the perf_counter clock
    while not stop.is_set():
        p = sub.recv(timeout=0.1)
        if p is not None and p.kind == "step":
            now, wall = time.perf_counter(), time.time()
            key = (p.header["run_id"], int(p.header["step"]))
            received[key] = now
            if isinstance(p.header.get("sent"), (int, float)):  # Unix seconds: the same moment on this clock
                built[key] = now - (wall - p.header["sent"])
    sub.close()
    out.put((received, built))


class _Stamped:
    """A Publisher that times the packet thread's hand-over of each step recipe for :class:`Latency`
    (bench only): called once the step's host copy is ready, it returns once the item is queued."""

    remote = True

    def __init__(self, inner: Any, latency: "Latency") -> None:
        self._inner, self._latency = inner, latency

    def publish(self, packet: Any) -> None:
        self._inner.publish(packet)

    def publish_recipe(self, recipe: Any) -> None:
        began = time.perf_counter()
        self._inner.publish_recipe(recipe)
        if isinstance(recipe, partial) and recipe.func is host_step_packet:
            run_id, step = recipe.args[0], recipe.args[4]  # host_step_packet(run_id, words, cfg, maps, step, ...)
            self._latency.handed(run_id, step, began, time.perf_counter())

    @property
    def ring(self) -> Any:
        return self._inner.ring

    def publish_staged(self, staged: Any, wait: bool = True) -> bool:
        began = time.perf_counter()
        sent = self._inner.publish_staged(staged, wait)
        if sent:
            self._latency.handed(staged.run_id, staged.step, began, time.perf_counter())
        return sent

    def alive(self) -> bool:
        return bool(self._inner.alive())


class Latency:
    """Step end → receipt by a ZeroMQ subscriber in another process (as TouchDesigner would be:
    a subscriber thread in this process would compete with the model's thread for the GIL)."""

    def __init__(self, endpoints: list[str], cpus: set[int] | None = None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.sent: dict[tuple[str, int], float] = {}
        self.handover: dict[tuple[str, int], tuple[float, float]] = {}
        self.variant_of: dict[str, str] = {}  # run id -> the bench variant that made it (clock())
        # on CUDA, an event per step end and a clock reference per call: when the GPU finished each
        # step, on this process's clock (the host runs ahead of a busy GPU: its step end is early)
        self._cuda = torch.cuda.is_available()
        self._refs: list[tuple[Any, float]] = []  # (event, perf_counter at that event)
        self._events: dict[tuple[str, int], tuple[int, Any]] = {}
        self._spare: list[Any] = []  # timing events made before a call (reference()), not in its timed steps
        self._ready, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_subscribe, args=(endpoints, self._ready, self._stop, self._out, cpus), daemon=True)
        self._proc.start()
        if not self._ready.wait(60):
            raise RuntimeError("the latency subscriber process did not start")

    def clock(self, variant: str) -> Callable[[str, int], None]:
        """The ``Runner(step_clock=...)`` of one variant's runner: :meth:`step_end`, its runs
        noted as that variant's (the figures are given per variant as well as pooled)."""

        def step_end(run_id: str, step: int) -> None:
            self.variant_of[run_id] = variant
            self.step_end(run_id, step)

        return step_end

    def step_end(self, run_id: str, step: int) -> None:
        """Called on the model's thread as a step ends (``Runner(step_clock=...)``)."""
        self.sent[(run_id, int(step))] = time.perf_counter()
        if self._refs:
            ev = self._spare.pop() if self._spare else torch.cuda.Event(enable_timing=True)
            ev.record()
            self._events[(run_id, int(step))] = (len(self._refs) - 1, ev)

    def reference(self, steps: int = 0) -> None:
        """Tie the GPU's event clock to ``perf_counter`` (at a synchronised point before a call):
        an event recorded on an idle GPU, bracketed by host clock reads. Also makes the next
        call's ``steps`` step events here, untimed: creating a CUDA event in each step would add a
        driver call per step to the measured variant that the product does not make."""
        if not self._cuda:
            return
        self._spare = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ev = torch.cuda.Event(enable_timing=True)
        before = time.perf_counter()
        ev.record()
        torch.cuda.synchronize()
        self._refs.append((ev, (before + time.perf_counter()) / 2))

    def gpu_done(self) -> dict[tuple[str, int], float]:
        """Each step's end on the GPU, on the ``perf_counter`` clock (all events complete by now)."""
        torch.cuda.synchronize()
        return {k: self._refs[i][1] + self._refs[i][0].elapsed_time(ev) / 1000 for k, (i, ev) in self._events.items()}

    def handed(self, run_id: str, step: int, began: float, ended: float) -> None:
        """The packet thread's hand-over of a step's recipe began (its host copy ready) and ended."""
        self.handover[(run_id, int(step))] = (began, ended)

    def close(self) -> dict[str, Any]:
        time.sleep(0.3)
        self._stop.set()
        received, built = self._out.get(timeout=30)
        self._proc.join(5)
        out = latency_summary(self.sent, received)
        if self.handover:
            out["stages"] = handover_stages(self.sent, self.handover, built, received)
        by_variant: dict[str, Any] = {}
        for variant in sorted(set(self.variant_of.values())):
            sent = {k: t for k, t in self.sent.items() if self.variant_of.get(k[0]) == variant}
            by_variant[variant] = latency_summary(sent, received)
            handover = {k: h for k, h in self.handover.items() if k in sent}
            if handover:
                by_variant[variant]["stages"] = handover_stages(sent, handover, built, received)
        if by_variant:
            out["by_variant"] = by_variant
        if self._events:  # from the step's end on the GPU, and how far the host ran ahead of it
            try:
                done = self.gpu_done()
            except RuntimeError as exc:  # a diagnostic: its failure must not lose the run's figures
                out["from_gpu_step_end"] = {"error": str(exc)}
                return out
            out["from_gpu_step_end"] = latency_summary(done, received)
            lag = [1000 * (done[k] - self.sent[k]) for k in done if k in received]
            if lag:
                out["host_ahead_of_gpu"] = _percentiles(lag)
        return out


def handover_stages(sent: dict[Key, float], handover: dict[Key, tuple[float, float]], built: dict[Key, float],
                    received: dict[Key, float]) -> dict[str, dict[str, float]]:
    """Where a published step's time goes, each stage's p50/p99/max (ms), all on one clock: the
    model's process (``step_end_to_handover``: the packet thread's wake, the GIL, the GPU copy),
    its send (``handover``), and after it ``handover_to_receipt``, split at the FanOut's ``sent``
    stamp into the sink process's build (``handover_to_built``: its wake, the phases, the packet)
    and the wire (``built_to_receipt``: encoding, ZeroMQ, the subscriber's wake and decode). A step
    whose maps go through the ring (bridge.stream.ring) is handed over by the model's thread itself,
    right after it launches the copy: its ``handover_to_built`` includes the sink process's wait for
    the copy to land. Where
    the model's thread holds the GIL for long (a CPU-bound model), the packet thread's own end-of-
    hand-over stamp can come after the sink has built the packet: ``handover_to_built`` is then
    negative, which says the hand-over's figure is mostly that GIL wait."""
    parts: dict[str, list[float]] = {"step_end_to_handover": [], "handover": [], "handover_to_receipt": [],
                                     "handover_to_built": [], "built_to_receipt": []}
    for k, (began, ended) in handover.items():
        if k in sent and k in received:
            parts["step_end_to_handover"].append(1000 * (began - sent[k]))
            parts["handover"].append(1000 * (ended - began))
            parts["handover_to_receipt"].append(1000 * (received[k] - ended))
            if k in built:
                parts["handover_to_built"].append(1000 * (built[k] - ended))
                parts["built_to_receipt"].append(1000 * (received[k] - built[k]))
    return {k: _percentiles(v) for k, v in parts.items() if v}


class GcMeter:
    """Python's cyclic garbage collections during each timed call, by generation, and the wall
    time they took (in whichever thread ran them: a collection holds the GIL, so the model's
    thread waits for one that another thread of the process runs). Per call: is a variant slower
    because it makes the interpreter collect, and walk the model's objects, more often?"""

    def __init__(self) -> None:
        self._began: dict[int, float] = {}  # thread ident -> a collection's start
        self._now: list[float] = [0.0, 0.0, 0.0, 0.0]  # this call's collections of generations 0, 1, 2, and ms
        self.calls: dict[str, list[list[float]]] = {}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        me = threading.get_ident()
        if phase == "start":
            self._began[me] = time.perf_counter()
            return
        began = self._began.pop(me, None)
        if began is not None:
            self._now[info["generation"]] += 1
            self._now[3] += 1e3 * (time.perf_counter() - began)

    def start(self) -> None:
        self._now = [0.0, 0.0, 0.0, 0.0]

    def stop(self, variant: str) -> None:
        self.calls.setdefault(variant, []).append(list(self._now))

    def close(self) -> dict[str, Any]:
        """Per variant: the median collections of each generation per call, and their median and
        largest milliseconds per call; and how many objects a full collection walks."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        out: dict[str, Any] = {"tracked_objects": len(gc.get_objects()), "frozen_objects": gc.get_freeze_count()}
        for v, calls in self.calls.items():
            a = np.array(calls)  # [calls, 4]
            out[v] = {"collections_per_call": [float(np.median(a[:, g])) for g in range(3)],
                      "ms_per_call": round(float(np.median(a[:, 3])), 3), "max_ms": round(float(a[:, 3].max()), 3)}
        return out


def _percentiles(ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of some milliseconds (not empty)."""
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(max(ms))}


def latency_summary(sent: dict[tuple[str, int], float], received: dict[tuple[str, int], float]) -> dict[str, Any]:
    """p50/p99 of step end → receipt (ms) over all steps, and split by the step's place in its run
    (first, last, the rest), with the five worst: where a tail comes from (a run's first step waits
    for its setup, its last for the VAE decode queued behind it, a middle one for the GIL or a
    busy sink) shows without another device call."""
    last: dict[str, int] = {}
    for run, step in sent:
        last[run] = max(step, last.get(run, step))
    lat = {k: 1000 * (received[k] - t) for k, t in sent.items() if k in received}
    if not lat:
        return {"received": 0, "sent": len(sent)}
    place = {"first": [v for (r, s), v in lat.items() if s == 0],
             "last": [v for (r, s), v in lat.items() if s == last[r] and s != 0],
             "middle": [v for (r, s), v in lat.items() if 0 < s < last[r]]}
    worst = sorted(lat.items(), key=lambda kv: -kv[1])[:5]
    return {"received": len(lat), "sent": len(sent), "p50_ms": float(np.percentile(list(lat.values()), 50)),
            "p99_ms": float(np.percentile(list(lat.values()), 99)),
            "by_place": {k: {"n": len(v), **_percentiles(v)} if v else {"n": 0} for k, v in place.items()},
            "worst": [{"step": s, "of": last[r] + 1, "ms": round(v, 3)} for (r, s), v in worst]}


def _busy(on: Any, stop: Any, spin: float, period: float, cpus: set[int] | None) -> None:
    """A process that keeps one CPU busy for ``spin`` of every ``period`` seconds while ``on`` is set."""
    from bridge.stream.process import set_cpus

    if cpus:
        set_cpus(cpus)
    while not stop.is_set():
        if not on.wait(0.1):
            continue
        t = time.perf_counter()
        while time.perf_counter() - t < spin:
            pass
        time.sleep(max(period - spin, 0.0))


class Busy:
    """``n`` processes that load other CPUs about as the sink process and a subscriber do
    (``spin`` of every ``period``), only while switched on: does other cores' work alone slow
    the thread that launches the model's kernels?"""

    def __init__(self, n: int = 2, spin: float = 0.004, period: float = 0.03, cpus: set[int] | None = None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.on, self._stop = ctx.Event(), ctx.Event()
        self._procs = [ctx.Process(target=_busy, args=(self.on, self._stop, spin, period, cpus), daemon=True) for _ in range(n)]
        for p in self._procs:
            p.start()

    def close(self) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(2)


class _Drop:
    """A remote-like Publisher (recipes are not run here, as with a PacketProcess) that drops everything."""

    remote = True

    def publish(self, packet: Any) -> None:
        pass

    def publish_recipe(self, recipe: Any) -> None:
        pass

    def alive(self) -> bool:
        return True


def median_ci(ratios: np.ndarray, level: float = 0.95, resamples: int = 4000) -> list[float]:
    """Bootstrap interval of the median of per-round ratios: how far the figure could move with
    other rounds on the same (noisy) host. Seeded, so a result file always shows the same."""
    if len(ratios) < 2:
        return [float(ratios[0]), float(ratios[0])] if len(ratios) else [float("nan")] * 2
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, size=(resamples, len(ratios))), axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def _pin_this_thread(cpu: int | None, alone: bool = False) -> dict[int, set[int]] | None:
    """Keep the calling thread on ``cpu`` (Linux: ``sched_setaffinity`` of pid 0 is the calling
    thread; threads started later inherit it); with ``alone``, every other thread of this process
    that exists now (ZeroMQ's I/O threads, the packet thread, CUDA's) leaves ``cpu`` for the
    process's other CPUs. Returns each moved thread's CPUs, to put back (None: nothing pinned)."""
    if cpu is None:
        return None
    me = threading.get_native_id()
    before = {me: os.sched_getaffinity(0)}
    if alone:
        for tid in _threads():
            if tid != me:
                try:
                    had = os.sched_getaffinity(tid)
                    if cpu in had and len(had) > 1:
                        os.sched_setaffinity(tid, had - {cpu})
                        before[tid] = had
                except OSError:  # the thread ended meanwhile
                    pass
    os.sched_setaffinity(0, {cpu})
    return before


def _threads() -> list[int]:
    """The native ids of this process's threads (Linux: /proc/self/task)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _unpin(before: dict[int, set[int]] | None) -> None:
    """Put back the CPUs :func:`_pin_this_thread` took (a thread that has ended is skipped)."""
    me = threading.get_native_id()
    for tid, cpus in (before or {}).items():
        try:
            os.sched_setaffinity(0 if tid == me else tid, cpus)
        except OSError:
            pass


def _cpu_steal() -> tuple[int, int] | None:
    """(steal, total) CPU jiffies from /proc/stat (Linux): time the hypervisor gave to others."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _zmq_sinks(endpoint: str) -> list[Any]:
    """The benchmark's one sink, built in the sink process: ZeroMQ, float16, at ``endpoint``."""
    from bridge.transport.zmq_pub import ZmqPublisher

    return [ZmqPublisher(endpoint, encoding="float16")]


def _next_port(endpoint: str) -> str:
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{int(port) + 1}"


def run_bench(pipe: Any, steps: int = 20, runs: int = 15, warmup: int = 2, guidance: float = 7.5, variants: list[str] | None = None,
              endpoint: str = "tcp://127.0.0.1:5599", height: int | None = None, width: int | None = None,
              profile: str | None = None, map_size: int | None = None, sink_cpus: set[int] | None = None,
              max_seconds: float | None = None, pin_thread: int | None = None, pin_alone: bool = False) -> dict[str, Any]:
    """Time the variants; returns a JSON-able result (also printed by ``stepx bench``).

    ``map_size``: the captured maps' side (CaptureConfig.resolution) for the capture, publish and
    query variants; None = the latent's size. ``sink_cpus``: the CPUs of the sink process and of
    the latency subscriber (None: any). ``max_seconds``: start no new timed round once this long
    has passed since the first one began (``runs`` in the result is then the rounds done), so a
    run under a time limit still reports what it measured. ``pin_thread``: keep the thread that
    runs every variant (the model's) on this one CPU from the warm-up rounds on (Linux; the
    threads and processes started before keep theirs): does the scheduler moving it between
    cores, as other threads wake, cost it? ``pin_alone``: and every other thread of this process
    leaves that CPU (with ``sink_cpus`` without it, nothing of ours shares the model's CPU): does
    a woken thread taking the model's CPU cost it?"""
    from bridge.capture import CaptureConfig, Query, capture, graph_stats
    from bridge.stream.fanout import FanOut
    from bridge.stream.process import PacketProcess
    from bridge.runner import Request, Runner, denoiser
    from bridge.transport.zmq_pub import ZmqPublisher

    if pin_thread is not None and pin_thread not in (allowed := os.sched_getaffinity(0)):
        raise ValueError(f"--pin-thread {pin_thread}: not one of this process's CPUs ({sorted(allowed)})")  # before anything starts
    device = next(denoiser(pipe).parameters()).device
    size = {k: v for k, v in (("height", height), ("width", width)) if v}
    res = (map_size, map_size) if map_size else None
    variants = list(variants or ["plain", "capture", "publish", "queries"])
    # publish / publish_device: the sink in a PacketProcess (the phases there too,
    # on its CPU / compiled on the GPU); publish_inproc: the same sink in this process (FanOut,
    # phases on the GPU where there is one) on the next port; publish_null / publish_drop: no
    # sink / recipes dropped; publish_ring: as publish with the step ring (bridge/stream/ring.py:
    # no thread of this process woken per step; `stepx serve --step-ring on`) on the port after.
    # Only the variants that reach the subscriber time its latency.
    in_child = [v for v in variants if v in ("publish", "publish_device")]
    endpoint_inproc = _next_port(endpoint)
    endpoint_ring = _next_port(endpoint_inproc)
    endpoints = ([endpoint] if in_child else []) + ([endpoint_inproc] if "publish_inproc" in variants else []) \
        + ([endpoint_ring] if "publish_ring" in variants else [])
    latency = Latency(endpoints, sink_cpus) if endpoints else None
    closers: list[Callable[[], Any]] = []
    runners: dict[str, Any] = {}
    sinks: dict[str, Publisher | Publish] = {}
    if in_child:
        packets = PacketProcess(partial(_zmq_sinks, endpoint), cpus=sink_cpus)
        closers.append(packets.close)
        sinks.update({v: packets for v in in_child})
        if "publish" in sinks and latency:
            sinks["publish"] = _Stamped(packets, latency)
    if "publish_ring" in variants:
        ringed = PacketProcess(partial(_zmq_sinks, endpoint_ring), cpus=sink_cpus, ring_slots=SLOTS)
        closers.append(ringed.close)
        sinks["publish_ring"] = _Stamped(ringed, latency) if latency else ringed  # its notices' hand-over timed too
    if "publish_inproc" in variants:
        fanout = FanOut([ZmqPublisher(endpoint_inproc, encoding="float16")])
        closers.append(fanout.close)
        sinks["publish_inproc"] = fanout.publish
    if latency:
        time.sleep(0.3)  # let the subscriber connect
    subscribed = set(sinks)
    if "publish_null" in variants:  # the runner's own work (capture, phases, packets) with no sink at all
        sinks["publish_null"] = lambda packet: None
    if "publish_drop" in variants:  # as publish, but the recipes are dropped instead of pickled and pushed
        sinks["publish_drop"] = _Drop()
    for v, sink in sinks.items():
        runners[v] = Runner(pipe, sink, "bench", image_every=0, capture_config=CaptureConfig(resolution=res),
                            step_clock=latency.clock(v) if latency and v in subscribed else None,
                            phases_on="device" if v == "publish_device" else "auto")
    busy = Busy(cpus=sink_cpus) if "capture_busy" in variants else None
    if busy:
        closers.append(busy.close)
    stages: dict[str, list[dict[str, float]]] = {v: [] for v in runners}
    errors: dict[str, str] = {}
    daam_trace = None
    if "daam" in variants:
        try:
            daam_trace = _daam_trace()
        except ImportError as exc:  # not installed: reported with the results, the other variants still run
            errors["daam"] = f"{type(exc).__name__}: {exc} (pip install --no-deps daam==0.2.0)"
            variants.remove("daam")

    def gen(**extra: Any) -> Any:
        g = torch.Generator(device="cpu").manual_seed(0)
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=g, **{"output_type": "np", **size, **extra})

    # the variants that run the pipeline as plain does return its image: the untimed first call
    # checks that capture leaves it bit-identical
    def plain() -> np.ndarray:
        return gen().images

    def with_capture() -> np.ndarray:
        with capture(pipe, resolution=res):
            return gen().images

    def with_capture_eager() -> np.ndarray:  # the map maths launched op by op, never as a CUDA graph
        with capture(pipe, resolution=res, cuda_graphs=False):
            return gen().images

    def with_capture_unfused() -> np.ndarray:  # each layer's maps op by op, not by the fused kernel
        with capture(pipe, resolution=res, extra={"fused_maps": False}):
            return gen().images

    def with_capture_busy() -> np.ndarray:  # capture while other processes keep two CPUs busy 13 % of the time
        busy.on.set()  # type: ignore[union-attr]
        try:
            return with_capture()
        finally:
            busy.on.clear()  # type: ignore[union-attr]

    def with_capture_latent() -> None:  # the runner's way: latents out, then one decode (no packets)
        from bridge.latent_preview import decode_full

        with capture(pipe, resolution=res):
            latents = gen(output_type="latent").images
        decode_full(pipe, latents[:1])

    def with_queries() -> np.ndarray:
        with capture(pipe, resolution=res, queries=[Query.box("box", 0.25, 0.25, 0.5, 0.5)]):
            return gen().images

    def publisher(v: str) -> Callable[[], None]:
        def with_publish() -> None:
            result = runners[v].run(Request(PROMPT, seed=0, steps=steps, guidance=guidance, width=width, height=height))
            if result.status != "done":
                raise RuntimeError(result.error)
            stages[v].append(result.timings or {})

        return with_publish

    def with_daam() -> None:
        with daam_trace(pipe) as tc:  # type: ignore[misc]
            gen()
            tc.compute_global_heat_map()

    table: dict[str, Callable[[], Any]] = {"plain": plain, "capture": with_capture, "capture_eager": with_capture_eager,
                                            "capture_unfused": with_capture_unfused, "publish": publisher("publish"),
                                            "publish_device": publisher("publish_device"), "publish_inproc": publisher("publish_inproc"),
                                            "publish_drop": publisher("publish_drop"), "publish_ring": publisher("publish_ring"),
                                            "capture_latent": with_capture_latent, "capture_busy": with_capture_busy,
                                            "publish_null": publisher("publish_null"), "queries": with_queries, "daam": with_daam}
    times: dict[str, list[float]] = {v: [] for v in variants}
    thread_cpu: dict[str, list[float]] = {v: [] for v in variants}  # the calling (model's) thread's CPU seconds per call
    peak: dict[str, int] = {v: 0 for v in variants}
    images: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for v in list(variants):  # one untimed call each: a variant that cannot run is reported, not fatal
            try:
                if isinstance(image := table[v](), np.ndarray):
                    images[v] = image
            except Exception as exc:  # noqa: BLE001
                if v == "plain":
                    raise
                errors[v] = f"{type(exc).__name__}: {exc}"
                variants.remove(v)
                times.pop(v)
                thread_cpu.pop(v)
        free_cpus = _pin_this_thread(pin_thread, pin_alone)
        collections = GcMeter()
        steal0 = _cpu_steal()
        started = time.perf_counter()
        for r in range(warmup + runs):
            if max_seconds is not None and r > warmup and time.perf_counter() - started > max_seconds:
                log.warning("stopped after %d of %d rounds: --max-seconds %.0f reached", r - warmup, runs, max_seconds)
                break
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                if latency and v in subscribed:
                    latency.reference(steps)
                collections.start()
                t, c = time.perf_counter(), time.thread_time()
                table[v]()
                cpu = time.thread_time() - c
                _sync(device)
                dt = time.perf_counter() - t
                if r >= warmup:
                    collections.stop(v)
                    times[v].append(dt)
                    thread_cpu[v].append(cpu)
                    if device.type == "cuda":
                        peak[v] = max(peak[v], torch.cuda.max_memory_allocated(device))
        gc_calls = collections.close()
        if profile:
            write_profiles(table, variants, device, profile)
        _unpin(free_cpus)  # the threads as they were
    lat = latency.close() if latency else None
    for close in closers:
        close()
    per_round = {v: np.array([t / p for t, p in zip(times[v], times["plain"])]) for v in variants}
    ratios = {v: float(np.median(r)) for v, r in per_round.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "diffusers": __import__("diffusers").__version__, "python": platform.python_version(),
        "pipeline": type(pipe).__name__, "dtype": str(next(denoiser(pipe).parameters()).dtype),
        "steps": steps, "runs": len(times["plain"]), "guidance": guidance, "size": size or "default", "map_size": map_size or "latent",
        "threads": torch.get_num_threads(),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "sink_cpus": sorted(sink_cpus) if sink_cpus else None, "pinned_thread_cpu": pin_thread, "pinned_alone": bool(pin_alone and pin_thread is not None),
        "median_seconds": {v: statistics.median(t) for v, t in times.items()},
        "frames_per_second": {v: round(1.0 / statistics.median(t), 2) for v, t in times.items()},  # one image per call
        "seconds": {v: [round(x, 5) for x in t] for v, t in times.items()},
        "median_ratio_vs_plain": ratios,
        # the model's thread's own CPU time per call (time.thread_time): on a launch-bound GPU run,
        # wall time minus this is waiting (for the GIL, the GPU, a lock); more of it is more work
        "model_thread_cpu_ms": {v: round(1e3 * statistics.median(t), 2) for v, t in thread_cpu.items() if t},
        "ratio_ci95": {v: median_ci(r) for v, r in per_round.items()},
        "best_ratio_vs_plain": {v: min(times[v]) / min(times["plain"]) for v in variants},
        "cpu_steal_percent": None if steal0 is None or (steal1 := _cpu_steal()) is None else
        round(100.0 * (steal1[0] - steal0[0]) / max(steal1[1] - steal0[1], 1), 2),
        "loadavg": _loadavg(),
        "gc": gc_calls,
        "peak_memory_mb": {v: round(m / 2**20, 1) for v, m in peak.items() if v in times} if device.type == "cuda" else None,
        "step_to_subscriber_latency": lat,
        "image_identical_to_plain": {v: bool(np.array_equal(im, images["plain"])) for v, im in images.items() if v not in ("plain", "daam")},
        "capture_graphs": graph_stats(pipe),
        "runner_stage_median_seconds": {v: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for v, ts in stages.items() if ts},
        "errors": errors,
    }


#: profiler keys that mean the host waited for the device (or copied from it)
_SYNC_KEYS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense",
              "Memcpy DtoH")


def write_profiles(table: dict[str, Callable[[], None]], variants: list[str], device: torch.device, path: str) -> None:
    """One more call of each variant under torch.profiler, written to ``path`` (text), so a GPU
    session can see where an overhead comes from in the same command: kernel launches and host
    waits per variant, the top ops by self time, and the ops each variant adds to plain (by call
    count and self CPU time — on a launch-bound GPU run the CPU side is what costs)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    base: dict[str, tuple[int, float]] = {}
    with open(path, "w") as out:
        for v in variants:
            with profile(activities=activities) as prof:
                table[v]()
                _sync(device)
            ops = prof.key_averages()
            counts = {e.key: (e.count, e.self_cpu_time_total) for e in ops}
            launches = sum(e.count for e in ops if e.key.startswith("cuda") and "Launch" in e.key)
            waits = {k: c for k, (c, _) in counts.items() if any(s in k for s in _SYNC_KEYS)}
            out.write(f"=== {v}: {len(prof.events())} events, {launches} kernel launches, host waits {waits}\n")
            out.write(ops.table(sort_by=sort, row_limit=25) + "\n")
            if v == "plain":
                base = counts
                continue
            added = _added(counts, base, 25)
            out.write(f"--- {v} minus plain: ops whose call count differs (self CPU µs, calls)\n")
            out.writelines(f"{dt:12.0f} {dc:+7d}  {k}\n" for dt, dc, k in added)
        out.write(_python_profiles(table, variants, device))


def _added(counts: dict[Any, tuple[int, float]], base: dict[Any, tuple[int, float]], most: int) -> list[tuple[float, int, Any]]:
    """``(added time, added calls, key)`` of the entries whose call count differs from ``base``,
    largest added time first; counts map a key to ``(calls, time)``."""
    rows = []
    for key, (calls, t) in counts.items():
        calls0, t0 = base.get(key, (0, 0.0))
        if calls != calls0:
            rows.append((t - t0, calls - calls0, key))
    return sorted(rows, key=lambda r: r[0], reverse=True)[:most]


def _python_profiles(table: dict[str, Callable[[], None]], variants: list[str], device: torch.device) -> str:
    """One call of each variant under cProfile: Python function calls and the functions a variant
    adds to plain by own time (the torch profiler above sees only aten ops, not hooks' Python)."""
    import cProfile
    import pstats

    lines: list[str] = []
    base: dict[tuple, tuple[int, float]] = {}
    for v in variants:
        prof = cProfile.Profile()
        prof.enable()
        table[v]()
        _sync(device)
        prof.disable()
        # {(file, line, name): (prim calls, calls, tottime, cumtime, callers)}; typeshed's Stats
        # does not declare the ``stats`` attribute that pstats has always set
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        own = {k: (c[1], c[2]) for k, c in stats.items()}
        lines.append(f"=== python {v}: {sum(c for c, _ in own.values())} calls, {sum(t for _, t in own.values()) * 1e3:.1f} ms own time\n")
        if v == "plain":
            base = own
            continue
        added = _added(own, base, 20)
        lines += [f"{dt * 1e3:10.2f} ms {dc:+7d}  {k[0].rsplit('/', 1)[-1]}:{k[1]} {k[2]}\n" for dt, dc, k in added]
    return "".join(lines)


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['pipeline']} on {result['device']}, {result['steps']} steps, {result['runs']} interleaved runs")
    print(f"{'variant':14s} {'median s':>9s} {'fps':>7s} {'ratio':>7s} {'95% CI':>13s} {'best-of':>8s} {'peak MiB':>9s}")
    for v, r in result["median_ratio_vs_plain"].items():
        mem = (result.get("peak_memory_mb") or {}).get(v, "")
        lo, hi = (result.get("ratio_ci95") or {}).get(v, (r, r))
        best = (result.get("best_ratio_vs_plain") or {}).get(v, r)
        sec = result["median_seconds"][v]
        print(f"{v:14s} {sec:9.3f} {1 / sec:7.2f} {r:7.3f} {lo:6.3f}-{hi:6.3f} {best:8.3f} {mem!s:>9s}")
    if result.get("model_thread_cpu_ms"):
        print("model's thread CPU per call (median ms):", ", ".join(f"{v} {ms:.1f}" for v, ms in result["model_thread_cpu_ms"].items()))
    if result.get("cpu_steal_percent") is not None:
        print(f"CPU steal during the timed rounds: {result['cpu_steal_percent']} %; load average {result.get('loadavg')}")
    if result.get("gc"):
        g = result["gc"]
        print(f"garbage collections per call (gen 0/1/2, median; ms median/max; {g['tracked_objects']} objects tracked, "
              f"{g['frozen_objects']} frozen):", ", ".join(
                  f"{v} {'/'.join(f'{n:g}' for n in c['collections_per_call'])} {c['ms_per_call']:.1f}/{c['max_ms']:.1f}"
                  for v, c in g.items() if isinstance(c, dict)))
    if any((result.get("capture_graphs") or {}).values()):
        print("evaluations' map maths:", json.dumps(result["capture_graphs"]))
    for v, st in (result.get("runner_stage_median_seconds") or {}).items():
        print(f"{v} stages (median s):", " ".join(f"{k} {t:.4f}" for k, t in st.items()))
    if result.get("image_identical_to_plain"):
        print("image bit-identical to plain:", json.dumps(result["image_identical_to_plain"]))
    if result.get("step_to_subscriber_latency"):
        lat = result["step_to_subscriber_latency"]
        for v, one in (lat.get("by_variant") or {}).items():
            if one.get("received"):
                stages = " ".join(f"{k} {st['p50_ms']:.2f}/{st['p99_ms']:.2f}" for k, st in (one.get("stages") or {}).items())
                print(f"step → subscriber, {v}: p50 {one['p50_ms']:.2f} p99 {one['p99_ms']:.2f} ms (middle steps "
                      f"{one['by_place']['middle'].get('p50_ms', float('nan')):.2f} / {one['by_place']['middle'].get('p99_ms', float('nan')):.2f})"
                      + (f"; stages p50/p99 ms: {stages}" if stages else ""))
        print("step → subscriber latency:", json.dumps(lat))
