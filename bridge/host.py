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
    """A host copy of named tensors as they are *now* in stream order; ``get()`` waits for it."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._event: torch.cuda.Event | None = None
        if any(t.is_cuda for t in tensors.values()):
            self.host = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for k, t in tensors.items()}
            for k, t in tensors.items():
                self.host[k].copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:  # on the CPU a copy is still needed: the producer may update its tensors in place
            self.host = {k: t.detach().clone() for k, t in tensors.items()}

    def get(self) -> dict[str, torch.Tensor]:
        if self._event is not None:
            self._event.synchronize()
        return self.host


class OrderedWorker:
    """Runs submitted callables one after another on a daemon thread; errors are logged, not raised."""

    def __init__(self, name: str = "stepx-packets") -> None:
        self._queue: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

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
