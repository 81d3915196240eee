"""Spread the random generations over workers with Ray, and merge their integer counts exactly.

Each worker (a Ray actor: one per GPU when the cluster has GPUs, else one per requested CPU
worker) loads the pipeline once and runs whole chunks of generation indices. Because a
generation depends only on ``(seed, index)`` and counts are integers, the merged counts are the
same for any number of workers, any chunk size and any restart (tested). ``workers=0`` runs the
same chunks in this process without Ray.

Timings (``RunStats``): generations/s over the dispatch phase, the workers' own compute time,
and Ray's share: for each chunk, the round trip seen by the driver minus the compute time the
worker measured (scheduling, argument and result transfer, queueing in the driver).
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .collect import GenerationPlan, RelevanceCounter
from .concepts import ConceptSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the pipeline (picklable: workers load their own copy).

    model / device / dtype / arch / config: as ``load_pipeline``; or ``factory``, a
    ``"module:function"`` returning a pipeline (random-weight full-size builders for benchmarks).
    """

    model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    arch: str = "auto"
    config: str | None = None
    factory: str | None = None
    threads: int | None = None

    def load(self) -> Any:
        from bridge.runner import denoiser
        from bridge.threads import configure_threads

        if self.factory:
            module, _, fn = self.factory.partition(":")
            pipe = getattr(importlib.import_module(module), fn)()
            pipe.set_progress_bar_config(disable=True)
        else:
            from bridge.models.loading import load_pipeline

            pipe = load_pipeline(self.model, self.device, self.dtype, self.arch, config=self.config)[0]
        configure_threads(self.threads, next(denoiser(pipe).parameters()).device)  # --threads, else the default for its device
        return pipe


@dataclass
class RunStats:
    """How a run went: generations, wall time, compute time, Ray's share."""

    generations: int = 0
    workers: int = 0
    backend: str = "local"
    gpus: float = 0.0
    startup_s: float = 0.0  # workers created and pipelines loaded
    wall_s: float = 0.0  # dispatch phase: first chunk submitted to last result merged
    compute_s: float = 0.0  # Σ workers' own time in generations
    ray_overhead_s: float = 0.0  # Σ (round trip − compute) per chunk
    chunks: int = 0
    per_worker: dict[str, int] = field(default_factory=dict)

    def add_chunk(self, n: int, seconds: float, worker: str) -> None:
        """Count one finished chunk of ``n`` generations that took ``seconds`` on ``worker``."""
        self.compute_s += seconds
        self.generations += n
        self.chunks += 1
        self.per_worker[worker] = self.per_worker.get(worker, 0) + n

    @property
    def generations_per_s(self) -> float:
        return self.generations / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "generations_per_s": self.generations_per_s}


def chunked(indices: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive chunks of at most ``size`` indices."""
    if size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {size}")
    idx = sorted(indices)
    return [idx[i : i + size] for i in range(0, len(idx), size)]


class _Worker:
    """One pipeline and its counter; the body of a Ray actor (or used in-process)."""

    def __init__(self, spec: ModelSpec, concepts: ConceptSet, plan: GenerationPlan) -> None:
        self.counter = RelevanceCounter(spec.load(), concepts, plan)
        self.name = f"{_host()}:{os.getpid()}:{_device_of(self.counter.pipe)}"

    def layout(self) -> list[tuple[str, int]]:
        return self.counter.layout

    def run(self, indices: list[int]) -> tuple[list[int], np.ndarray, float, str]:
        counts, seconds = self.counter.run(indices)
        return indices, counts, seconds, self.name


def _host() -> str:
    import socket

    return socket.gethostname()


def _device_of(pipe: Any) -> str:
    dev = str(pipe.device)
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{dev}[visible {vis}]" if vis and dev.startswith("cuda") else dev


OnChunk = Callable[[list[int], np.ndarray], None]


def run_counts(spec: ModelSpec, concepts: ConceptSet, plan: GenerationPlan, indices: Sequence[int], *,
               workers: int | None = 0, chunk: int = 4, on_chunk: OnChunk | None = None,
               ray_address: str | None = None) -> tuple[np.ndarray | None, list[tuple[str, int]], RunStats]:
    """Counts summed over ``indices`` (int64 ``[concepts, heads]``), the head layout, and stats.

    workers: 0 = in this process; ``None`` = Ray, one worker per GPU (or one, with no GPU); N = Ray, N workers. Ray joins a running
    cluster (``ray.init`` already called, or ``ray_address``), else starts a local one and stops it after.
    on_chunk(indices, counts) is called in the driver as each chunk lands (the resumable store).
    """
    chunks = chunked(indices, chunk)
    if workers == 0:
        return _run_local(spec, concepts, plan, chunks, on_chunk)
    return _run_ray(spec, concepts, plan, chunks, workers, on_chunk, ray_address)


def _merge(total: np.ndarray | None, counts: np.ndarray) -> np.ndarray:
    return counts.astype(np.int64).copy() if total is None else total + counts


def _run_local(spec, concepts, plan, chunks, on_chunk):
    stats = RunStats(backend="local", workers=1)
    t0 = time.perf_counter()
    worker = _Worker(spec, concepts, plan)
    stats.startup_s = time.perf_counter() - t0
    total = None
    t1 = time.perf_counter()
    for c in chunks:
        idx, counts, seconds, name = worker.run(c)
        total = _merge(total, counts)
        stats.add_chunk(len(idx), seconds, name)
        if on_chunk:
            on_chunk(idx, counts)
    stats.wall_s = time.perf_counter() - t1
    return total, worker.layout(), stats


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("distributing relevance runs needs Ray: pip install 'stepx-bridge[relevance]' "
                          "(or run in one process with --workers 0)") from None
    return ray


def _run_ray(spec, concepts, plan, chunks, workers, on_chunk, address):
    ray = _ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            kwargs["address"] = address
        ray.init(**kwargs)
        started = True
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        n = workers if workers is not None else max(1, int(gpus))
        per_gpu = min(1.0, gpus / n) if gpus else 0.0  # one GPU each; shared when workers outnumber GPUs
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if n > cpus:  # each actor takes a CPU: more would wait for ever
            raise ValueError(f"{n} Ray workers need {n} CPUs but the cluster has {cpus:g}; ask for fewer --workers")
        stats = RunStats(backend="ray", workers=n, gpus=gpus)
        actor_cls = ray.remote(num_gpus=per_gpu, num_cpus=1)(_Worker)
        t0 = time.perf_counter()
        actors = [actor_cls.remote(spec, concepts, plan) for _ in range(n)]
        layouts = ray.get([a.layout.remote() for a in actors])
        stats.startup_s = time.perf_counter() - t0
        if any(l != layouts[0] for l in layouts):
            raise RuntimeError("workers loaded pipelines with different head layouts; they must load the same model")
        total = None
        todo: Iterator[list[int]] = iter(chunks)
        pending: dict[Any, tuple[Any, float]] = {}
        t1 = time.perf_counter()

        def submit(actor: Any) -> None:
            c = next(todo, None)
            if c is not None:
                pending[actor.run.remote(c)] = (actor, time.perf_counter())

        for a in actors:
            submit(a)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            actor, sent = pending.pop(ref)
            idx, counts, seconds, name = ray.get(ref)
            stats.ray_overhead_s += max(0.0, time.perf_counter() - sent - seconds)
            submit(actor)  # keep the worker busy before merging
            total = _merge(total, counts)
            stats.add_chunk(len(idx), seconds, name)
            if on_chunk:
                on_chunk(list(idx), counts)
        stats.wall_s = time.perf_counter() - t1
        for a in actors:
            ray.kill(a)
        return total, [tuple(x) for x in layouts[0]], stats
    finally:
        if started:
            ray.shutdown()
