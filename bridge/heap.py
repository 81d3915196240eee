"""The interpreter's and the C library's heap in a long-running process (the daemon, its sink
process): no collector pauses that walk the loaded model, no page faults for every step's arrays.

Why: CPython's cyclic collector runs a full collection now and then, and a full collection walks
every object it tracks. With a model loaded that is half a million objects (torch's and
diffusers' modules, parameters, tokenizers): about 250 ms on this project's 2-core development machine
for the embedded model, and a 334 ms pause in one SDXL call on an H100 host
(docs/bench_results/h100_run24, ``stepx bench``'s ``gc`` line). In a show that is a visible hitch
in the stream and in the model's steps (a collection holds the GIL). Those objects live as long as
the process, so :func:`freeze_heap` takes them out of the collector's reach once they are made
(``gc.freeze``); objects made afterwards are collected as before.
"""

from __future__ import annotations

import atexit
import ctypes
import gc

#: glibc's mallopt parameters (malloc.h) and the values the sink process sets: every step's arrays
#: (a few hundred KiB each) come from the heap and go back to it, instead of fresh mmap'd pages that
#: the kernel zeroes and faults in one by one (bench/sink_cpu.py: about 40 minor faults a step, 6–8
#: with this; several hundred when numpy allocated the arrays).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest on 64-bit systems
_TRIM_THRESHOLD = 64 * 1024 * 1024

_unfreeze_at_exit = False


def keep_heap() -> bool:
    """Have glibc's malloc serve large blocks from the heap and keep freed memory mapped (this
    process only); whether it could (False off glibc, where nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without it)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def freeze_heap() -> int:
    """Collect once, then move every object alive now out of the cyclic collector's reach for the
    rest of the process (call it once the model and the process's long-lived objects are made);
    returns how many objects are frozen. They are handed back to the collector at exit, so the
    interpreter's shutdown tears them down as it would have (else nanobind, under Triton, reports
    them as leaked)."""
    global _unfreeze_at_exit
    gc.collect()
    gc.freeze()
    if not _unfreeze_at_exit:
        atexit.register(gc.unfreeze)
        _unfreeze_at_exit = True
    return gc.get_freeze_count()
