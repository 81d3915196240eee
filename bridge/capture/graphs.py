"""One CUDA graph for the map maths of a model evaluation.

Per evaluation the capture turns each grid's projected queries and keys into maps: stacks,
casts, two matrix products and a softmax per grid, resizes and sums, some fifty launches and
their Python. On a launch-bound GPU (SD 1.5 at 512² on an H100 spends more time in the CPU than
in the GPU) that is most of what capture costs. Captured once as a CUDA graph, they become one
``_foreach_copy_`` of the inputs into the graph's own buffers and one replay.

The inputs are copied because their addresses do not repeat: the scheduler's history makes
the model's allocations cycle with a period of a few evaluations. The whole batches of q and k
are copied (tens of MB per evaluation at SD 1.5's size, microseconds of GPU time): taking the
conditional rows first would cost a Python-level slice per tensor, 32 per SD 1.5 evaluation, on
the thread that launches the kernels, where the graph takes them for free.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)

Outputs = tuple[torch.Tensor, ...]


class StaticGraphs:
    """Runs ``fn(*tensors)`` eagerly or as a replayed CUDA graph over static copies of ``tensors``.

    ``key`` must determine every input's shape and everything ``fn`` bakes in (constants'
    addresses, sizes); the first ``warmup`` calls per key run eagerly (kernels load, cuBLAS
    picks its algorithms), the next one captures. ``keep``: graphs kept, least recently used
    dropped; each holds its inputs' copies and its own memory pool. Outputs of a replay are the
    graph's own buffers, overwritten by its next replay: copy or accumulate them before.
    """

    def __init__(self, warmup: int = 1, keep: int = 4) -> None:
        self.warmup = warmup
        self.keep = keep
        self.stats = {"replayed": 0, "eager": 0, "captured": 0, "failed": 0}
        self.enabled = True
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Outputs]] = OrderedDict()
        self._seen: OrderedDict[tuple, int] = OrderedDict()
        self._stream: torch.cuda.Stream | None = None

    def __call__(self, fn: Callable[..., Outputs], tensors: Sequence[torch.Tensor], key: tuple) -> Outputs:
        if not (self.enabled and tensors and tensors[0].is_cuda):
            return fn(*tensors)
        key = (key, tensors[0].dtype, tensors[0].device)
        hit = self._graphs.get(key)
        if hit is not None:
            graph, inputs, outputs = hit
            torch._foreach_copy_(inputs, list(tensors))  # one launch (a shape that differs raises: the key is wrong)
            graph.replay()
            self._graphs.move_to_end(key)
            self.stats["replayed"] += 1
            return outputs
        seen = self._seen.pop(key, 0) + 1
        self._seen[key] = seen
        if len(self._seen) > 64:
            self._seen.popitem(last=False)
        if seen <= self.warmup:
            self.stats["eager"] += 1
            return fn(*tensors)
        return self._capture(key, fn, tensors)

    def _capture(self, key: tuple, fn: Callable[..., Outputs], tensors: Sequence[torch.Tensor]) -> Outputs:
        """Capture ``fn`` over copies of ``tensors`` on a side stream, replay it once, keep it.
        No device-wide synchronisation (``torch.cuda.graph`` would synchronise and empty the cache)."""
        device = tensors[0].device
        current = torch.cuda.current_stream(device)
        inputs = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
        torch._foreach_copy_(inputs, list(tensors))
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        self._stream.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(self._stream):
                graph.capture_begin(capture_error_mode="thread_local")  # the packet worker may sync meanwhile
                try:
                    outputs = fn(*inputs)
                finally:
                    graph.capture_end()
        except Exception as exc:  # noqa: BLE001 — a graph is an optimisation: fall back, say so once
            current.wait_stream(self._stream)
            self.stats["failed"] += 1
            self.enabled = False
            log.warning("could not capture the map maths as a CUDA graph (%s); computing them eagerly", exc)
            return fn(*tensors)
        current.wait_stream(self._stream)
        graph.replay()
        self.stats["captured"] += 1
        self._graphs[key] = (graph, inputs, outputs)
        while len(self._graphs) > self.keep:
            self._graphs.popitem(last=False)
        return outputs
