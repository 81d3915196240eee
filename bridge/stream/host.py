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
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


class HostBlocks:
    """Pinned host blocks and blocking CUDA events, kept for the next step's copies.

    Without them every step took a block from torch's caching host allocator and made an event,
    and the packet thread freed the block and destroyed the event; on an H100 (bench/publish_parts.py,
    docs/BENCHMARKS.md, runs 16 and 17) the runner's publishing then cost the model's thread 8.8 ms
    of CPU an image over its step callback alone, and nothing with the pool. (The step callback's
    own 0.22 ms a step was not the allocation: it stayed with the pool.) ``keep`` bounds the idle
    blocks kept per shape and dtype, the idle events, and (twice it) all idle blocks: a night of
    prompts of every length and size keeps the latest kinds only, not one pool per kind it saw."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._blocks: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()  # least recently given back first
        self._events: list[torch.cuda.Event] = []
        self._lock = threading.Lock()  # taken on the model's thread, given back on the packet thread

    def block(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        with self._lock:
            free = self._blocks.get((tuple(shape), dtype))
            if free:
                return free.pop()
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def event(self) -> torch.cuda.Event:
        with self._lock:
            if self._events:
                return self._events.pop()
        # blocking: the waiting worker sleeps instead of spinning in the driver beside the
        # thread that launches the model's kernels
        return torch.cuda.Event(blocking=True)

    def give_back(self, blocks: list[torch.Tensor], event: torch.cuda.Event) -> None:
        """Blocks whose copy has landed and that nobody reads any more, and their event."""
        with self._lock:
            for b in blocks:
                key = (tuple(b.shape), b.dtype)
                free = self._blocks.setdefault(key, [])
                self._blocks.move_to_end(key)
                if len(free) < self._keep:
                    free.append(b)
            while sum(len(v) for v in self._blocks.values()) > 2 * self._keep:
                self._blocks.popitem(last=False)  # the kind not used for longest goes back to torch
            if len(self._events) < self._keep:
                self._events.append(event)

    def idle(self) -> int:
        """Blocks kept for reuse now (all shapes)."""
        with self._lock:
            return sum(len(v) for v in self._blocks.values())


class HostSnapshot:
    """A host copy of named tensors as they are *now* in stream order; ``get()`` waits for it.

    On CUDA the copies go into pinned blocks from ``blocks`` (a pool of one's own where none is
    given); :meth:`take` hands the values over as the caller's own arrays and gives the blocks
    back. On the CPU they are clones."""

    def __init__(self, tensors: dict[str, torch.Tensor], blocks: HostBlocks | None = None) -> None:
        self._blocks: HostBlocks | None = None
        self._landed = True
        if not any(t.is_cuda for t in tensors.values()):  # a copy is still needed: the producer may update its tensors in place
            self.host = {k: t.detach().clone() for k, t in tensors.items()}
            return
        self._blocks = blocks if blocks is not None else HostBlocks()
        self.host = {k: self._blocks.block(t.shape, t.dtype) for k, t in tensors.items()}
        for k, t in tensors.items():
            self.host[k].copy_(t, non_blocking=True)
        self._event = self._blocks.event()
        self._event.record()
        self._landed = False

    def ready(self) -> bool:
        """Whether ``get()`` would return at once (the copy has landed); never waits."""
        return self._landed or self._event.query()

    def get(self) -> dict[str, torch.Tensor]:
        """The host tensors, once landed (valid until :meth:`take`)."""
        # asked first: a wait lets the GIL go and takes it back, one more hand-over of the GIL with
        # the thread that launches the kernels, needless when the copy has landed
        if not self._landed and not self._event.query():
            self._event.synchronize()
        self._landed = True
        return self.host

    def take(self) -> dict[str, "np.ndarray"]:
        """The values as arrays of the caller's own (writable; copied out of pinned blocks, which
        then go back for another step's copy); the snapshot is spent."""
        host = self.get()
        if self._blocks is None:  # CPU clones: already the caller's own
            return {k: t.numpy() for k, t in host.items()}
        # bytearray copies with the GIL held: numpy's and torch's copies let it go for large
        # arrays, one more hand-over of the GIL with the thread that launches the kernels
        out = {}
        for k, t in host.items():
            a = t.numpy()
            out[k] = np.frombuffer(bytearray(a.data.cast("B")), dtype=a.dtype).reshape(a.shape)
        self._blocks.give_back(list(host.values()), self._event)
        self._blocks, self.host = None, {}
        return out


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
