"""CPU threads for torch where a model runs on the CPU: a default that stays sane on a shared,
loaded machine, and the ``--threads`` option of every command that runs a model; and a thread's
timer slack, for the sink process's thread that polls the step ring.

torch's own default is one intra-op thread per CPU. On a machine whose CPUs other processes
already keep busy, those threads wait for each other at every op (OpenMP's barriers spin while
a thread is descheduled): on this project's 2-core development machine under load a 64² request
took 34 s with torch's default against 1.8 s with one thread (issue 24). So the default counts only
the CPUs that are free when the model is loaded: CPUs minus the 1-minute load average, at least 1.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)


def default_threads(cpus: int, load: float | None) -> int:
    """Intra-op threads for a CPU model: the ``cpus`` this process may use minus the ``load``
    (runnable processes, 1-minute average) already on them, rounded, between 1 and ``cpus``;
    all ``cpus`` where the load is unknown."""
    if load is None:
        return max(1, cpus)
    return max(1, min(cpus, round(cpus - load)))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def configure_threads(requested: int | None, device: torch.device | str) -> int:
    """Set torch's intra-op threads for a model on ``device`` and return the count.

    ``requested`` (``--threads``) wins; else a CPU model gets :func:`default_threads`, and a GPU
    model keeps torch's default (its thread launches kernels; its few CPU ops are small)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        torch.set_num_threads(requested)
    elif torch.device(device).type == "cpu":
        cpus, load = usable_cpus(), load_average()
        torch.set_num_threads(n := default_threads(cpus, load))
        log.info("torch CPU threads: %d (%d CPUs, load %s; --threads sets it)", n, cpus, "unknown" if load is None else f"{load:.1f}")
    return torch.get_num_threads()


#: ``prctl`` options (linux/prctl.h): the calling thread's timer slack, in nanoseconds.
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30
FINE_SLACK_NS = 1000


def _prctl(option: int, arg: int) -> int | None:
    """``prctl(option, arg)`` for the calling thread (Linux's libc), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, ctypes.c_ulong(arg), 0, 0, 0))
    except (OSError, AttributeError):
        return None


def fine_timer_slack(ns: int = FINE_SLACK_NS) -> bool:
    """Let the calling thread's sleeps end within ``ns`` nanoseconds of their time (Linux; False
    elsewhere or where ``prctl`` refuses). Linux's default 50 µs slack rounded every 20–25 µs
    poll of the sink process's ring wait up to ~75 µs (bench/ring_wait.py). The slack is the
    thread's own (threads it starts later inherit it): the model's process keeps its default."""
    return _prctl(PR_SET_TIMERSLACK, ns) == 0


def timer_slack() -> int | None:
    """The calling thread's timer slack in nanoseconds (Linux), else None."""
    got = _prctl(PR_GET_TIMERSLACK, 0)
    return got if got is not None and got >= 0 else None
