"""Run the study's generations: in this process, or over Ray workers when there are several.

The seam is :func:`run_study`: jobs are (template index, seed) pairs; a worker loads the model
once and returns :class:`RunResult`s (small numpy arrays, not maps), so results travel cheaply.
Both paths give the same numbers (a generation depends only on its prompt and seed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from bridge.capture import CaptureConfig

from .prompts import StudyPrompt
from .runs import RunResult, analyse


@dataclass(frozen=True)
class StudySettings:
    """What every generation shares."""

    model: str | None = None  # None = the embedded shapes model
    steps: int = 20
    guidance: float = 7.5
    upsample: str = "bilinear"
    threads: int = 1


def _analyse_job(pipe: object, settings: StudySettings, prompt: StudyPrompt, seed: int) -> RunResult:
    """Generate one (template, seed) under capture (every layer's per-head maps kept, for the
    per-block curves) and analyse it."""
    from bridge.analysis import capture_prompts

    config = CaptureConfig(detail_layers=("*",), upsample=settings.upsample)
    (captured,) = capture_prompts(pipe, [prompt.text], steps=settings.steps, guidance=settings.guidance, seed=seed, config=config)
    return analyse(captured, prompt)


def _pipeline(settings: StudySettings) -> object:
    """The model, loaded once per process."""
    from bridge.models.loading import load_pipeline

    if settings not in _PIPE:
        torch.set_num_threads(settings.threads)
        _PIPE[settings] = load_pipeline(settings.model)[0]
    return _PIPE[settings]


_PIPE: dict[StudySettings, object] = {}


def _worker(settings: StudySettings, prompts: Sequence[StudyPrompt], jobs: Sequence[tuple[int, int]]) -> list[RunResult]:
    """A Ray task: load the model once and analyse each (template, seed) job."""
    return [_analyse_job(_pipeline(settings), settings, prompts[i], seed) for i, seed in jobs]


def run_study(settings: StudySettings, prompts: Sequence[StudyPrompt], seeds: int, workers: int = 1,
              on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every template × seeds 0..seeds-1, in job order; ``workers`` > 1 uses Ray (a local
    cluster, each worker one process with ``settings.threads`` threads)."""
    jobs = [(i, s) for i in range(len(prompts)) for s in range(seeds)]
    if workers <= 1:
        results = []
        for job in jobs:
            r = _analyse_job(_pipeline(settings), settings, prompts[job[0]], job[1])
            results.append(r)
            if on_result:
                on_result(r)
        return results
    return _run_ray(settings, prompts, jobs, workers, on_result)


def _run_ray(settings, prompts, jobs, workers, on_result) -> list[RunResult]:
    try:
        import ray
    except ImportError as exc:
        raise ValueError("--workers > 1 needs Ray: pip install 'stepx-bridge[relevance]' (or use --workers 1)") from exc
    cpus = os.cpu_count() or 1
    if workers > cpus:
        raise ValueError(f"--workers {workers} is more than this machine's {cpus} CPUs")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(_worker)
        chunks = [jobs[w::workers] for w in range(workers)]
        refs = [remote.remote(settings, list(prompts), chunk) for chunk in chunks if chunk]
        by_job: dict[tuple[int, int], RunResult] = {}
        for chunk, res in zip([c for c in chunks if c], ray.get(refs)):
            for job, r in zip(chunk, res):
                by_job[job] = r
                if on_result:
                    on_result(r)
        return [by_job[j] for j in jobs]
    finally:
        if started:
            ray.shutdown()
