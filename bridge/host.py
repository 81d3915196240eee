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


class HostBuffers:
    """A small pool of host buffers keyed by (shape, dtype), pinned where CUDA is available.

    A buffer is handed out by ``acquire`` and comes back only through ``release``, which its
    user calls once nothing reads it any more (``HostSnapshot.release`` first waits for the copy
    into it), so no buffer is ever handed out while a copy into it may still be in flight or a
    consumer still reads it. Saves an allocation per step; at most ``keep`` free buffers per key.
    """

    def __init__(self, keep: int = 4, pin: bool | None = None) -> None:
        self.keep = keep
        self.pin = torch.cuda.is_available() if pin is None else pin
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.allocated = 0  # buffers made so far (for tests and curiosity)

    def acquire(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (tuple(shape), dtype)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
            self.allocated += 1
        return torch.empty(key[0], dtype=dtype, pin_memory=self.pin)

    def release(self, buffer: torch.Tensor) -> None:
        key = (tuple(buffer.shape), buffer.dtype)
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self.keep and all(b is not buffer for b in free):
                free.append(buffer)


class HostSnapshot:
    """A host copy of named tensors as they are *now* in stream order; ``get()`` waits for it.

    With a ``pool`` the host memory comes from (and, after ``release()``, goes back to) that
    :class:`HostBuffers`; without one it is allocated per snapshot."""

    def __init__(self, tensors: dict[str, torch.Tensor], pool: HostBuffers | None = None) -> None:
        self._event: torch.cuda.Event | None = None
        self._pool = pool
        on_device = any(t.is_cuda for t in tensors.values())
        if pool is not None:
            self.host = {k: pool.acquire(t.shape, t.dtype) for k, t in tensors.items()}
        elif on_device:
            self.host = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for k, t in tensors.items()}
        else:  # on the CPU a copy is still needed: the producer may update its tensors in place
            self.host = {k: t.detach().clone() for k, t in tensors.items()}
            return
        for k, t in tensors.items():
            self.host[k].copy_(t, non_blocking=on_device)
        if on_device:
            # blocking: the waiting worker sleeps instead of spinning in the driver beside the
            # thread that launches the model's kernels
            self._event = torch.cuda.Event(blocking=True)
            self._event.record()

    def get(self) -> dict[str, torch.Tensor]:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self.host

    def release(self) -> None:
        """Give pooled buffers back (after the copy has landed); the host tensors must not be used after."""
        if self._pool is None or not self.host:
            return
        host = self.get()
        self.host = {}
        for buffer in host.values():
            self._pool.release(buffer)


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
        self._queue: queue.Queue[Callable[[], Any] | None] = queue.Queue()
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

        self._queue.put(limit)
        self._thread.start()
        ready.wait()
        torch.set_num_threads(default)  # for this thread and any started later; the worker keeps its own

    def put(self, job: Callable[[], Any]) -> None:
        self._queue.put(job)

    def flush(self) -> None:
        """Wait until every job submitted so far has run."""
        done = threading.Event()
        self._queue.put(done.set)
        done.wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # a failed packet must not stop the next ones
                log.error("building or publishing a packet failed: %r", exc)
