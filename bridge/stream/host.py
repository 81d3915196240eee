"""Getting results off the device without making the model wait.

``HostSnapshot`` enqueues one non-blocking copy per tensor into pinned host memory right after
the step's kernels (so it sees exactly that step's values) and records an event; only the
consumer waits for it. ``OrderedWorker`` runs the consumers — packet builders — in order on
one thread, so the denoising loop never blocks on a device→host copy or on encoding.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


class HostSnapshot:
    """A host copy of named tensors as they are *now* in stream order; ``get()`` waits for it.

    On CUDA the copies go into pinned memory from torch's caching host allocator (reused once the
    copy that used a block has landed); on the CPU they are clones."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._event: torch.cuda.Event | None = None
        if not any(t.is_cuda for t in tensors.values()):  # a copy is still needed: the producer may update its tensors in place
            self.host = {k: t.detach().clone() for k, t in tensors.items()}
            return
        self.host = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for k, t in tensors.items()}
        for k, t in tensors.items():
            self.host[k].copy_(t, non_blocking=True)
        # blocking: the waiting worker sleeps instead of spinning in the driver beside the
        # thread that launches the model's kernels
        self._event = torch.cuda.Event(blocking=True)
        self._event.record()

    def ready(self) -> bool:
        """Whether ``get()`` would return at once (the copy has landed); never waits."""
        return self._event is None or self._event.query()

    def get(self) -> dict[str, torch.Tensor]:
        if self._event is not None:
            # asked first: a wait lets the GIL go and takes it back, one more hand-over of the GIL
            # with the thread that launches the kernels, needless when the copy has landed
            if not self._event.query():
                self._event.synchronize()
            self._event = None
        return self.host


class OrderedWorker:
    """Runs submitted callables one after another on a daemon thread; errors are logged, not raised.

    ``torch_threads``: intra-op threads for torch CPU work on this worker only (None: the
    process default). The runner uses 1: a packet worker whose small CPU ops wake the whole
    OpenMP pool (16 spinning threads on a 16-core GPU host) takes cores from the model's thread,
    whose every launch then runs slower (+28 % CPU time per op in an H100 profile). With OpenMP
    the count is per thread, so the worker sets it for itself and the process-wide default that
    threads started later inherit is put back at once.
    """

    def __init__(self, name: str = "stepx-packets", torch_threads: int | None = None) -> None:
        # a C queue: its put is one call on the model's thread, and the worker's get takes no
        # Python-level Condition (queue.Queue's put and get are a dozen Python calls each)
        self._queue: queue.SimpleQueue[Callable[[], Any] | threading.Event | None] = queue.SimpleQueue()
        self._put = 0  # jobs submitted (written by the producer only)
        self._done = 0  # jobs finished (written by the worker only)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        if torch_threads is None:
            self._thread.start()
            return
        ready = threading.Event()
        default = torch.get_num_threads()

        def limit() -> None:
            torch.get_num_threads()  # torch sets a thread's count lazily, from the default: do it now, then override
            torch.set_num_threads(torch_threads)
            ready.set()

        self.put(limit)
        self._thread.start()
        ready.wait()
        torch.set_num_threads(default)  # for this thread and any started later; the worker keeps its own

    def put(self, job: Callable[[], Any] | threading.Event) -> None:
        self._put += 1
        self._queue.put(job)

    @property
    def busy(self) -> bool:
        """Whether a job submitted by this producer has not finished yet."""
        return self._done != self._put

    def flush(self) -> None:
        """Wait until every job submitted so far has run."""
        done = threading.Event()
        self.put(done)  # type: ignore[arg-type]  # the loop counts it as finished, then sets it
        done.wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if isinstance(job, threading.Event):  # a flush: everything before it has finished
                self._done += 1
                job.set()
                continue
            try:
                job()
            except Exception as exc:  # a failed packet must not stop the next ones
                log.error("building or publishing a packet failed: %r", exc)
            finally:
                self._done += 1
