"""Landing slots in memory the sink process shares: a step's values reach it with no thread of the
model's process woken.

Why: with a :class:`~bridge.stream.host.HostSnapshot` a thread of the model's process (the packet
thread) wakes at every step to wait for the host copy and hand it over; each wake takes the GIL
from the thread that launches the kernels, and on an H100 that cost SD 1.5 about 2 % of its time
(``bench/publish_parts.py``, docs/BENCHMARKS.md, run 16). Here the model's thread launches the copy
straight into a slot of a memory-mapped file that the sink process maps too, then a second copy
of the slot's sequence number into the slot's *landed* stamp: a stream runs its copies in order,
so the stamp lands after the values. The model's thread sends the child a notice (a few dozen
bytes, :mod:`bridge.item_codec`), and the child waits for the stamp, copies the values out and
marks the slot *done*; the model's thread reuses a slot only once it is done. A run whose slots
are all in use, or whose values do not fit one, goes the old way: nothing is dropped.

The file lives in a new directory only this user can enter (under ``/dev/shm`` where there is
one: memory, never written back to a disk) and is removed, directory and all, once the child has
mapped it, as the channel's socket file is (docs/SECURITY.md). On CUDA the mapping is registered
with the driver (page-locked), so the copies are asynchronous DMA; its space is reserved up front
(``posix_fallocate``), so a full ``/dev/shm`` is an error at start, not a crash at the first step.

Layout: ``landed`` u64[slots], ``done`` u64[slots] (the header, one page), then ``slots`` slots of
``slot_bytes`` (a multiple of the page size). Sequence numbers start at 1. ``done`` holds the last
sequence number read from a slot; ``landed`` the last stamp, the sequence number modulo
:data:`STAMPS`: the GPU copies it from a table on the device (no kernel launched to write it), and
since slots are claimed strictly in turn, a slot's consecutive claims differ by ``slots`` < STAMPS,
so a new stamp never equals the one before it.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PAGE = 4096
MAX_SLOTS = PAGE // 16  # the header (two u64 a slot) fits its page
STAMPS = 4096  # a slot's stamp is its sequence number modulo this (> MAX_SLOTS): a copy from a table, no kernel to write it
SLOTS = 12  # items in flight at once (a step's maps and its preview take two); a child this far behind gets the old path
SLOT_BYTES = 4 * 1024 * 1024  # SD 1.5's 8 word maps at 64² are 128 KiB, SDXL's at 128² 640 KiB, a 1024² preview 3 MiB
#: The child's polls for a stamp (:meth:`Ring.wait`): every POLL seconds for the first POLL_FINE
#: seconds, since a GPU that keeps pace lands a step's values within a millisecond or two of its
#: notice and each poll's overshoot is added to the step's latency; then doubling up to POLL_MAX
#: for a child far behind. Polls wake the sink process's thread only (``threads.fine_timer_slack``
#: keeps Linux from rounding its sleeps up by 50 µs): ~80 wakes of a few µs in the worst step.
POLL, POLL_FINE, POLL_MAX = 25e-6, 0.002, 500e-6


class RingError(RuntimeError):
    """The ring could not be made or mapped (no space, no file)."""


@dataclass(frozen=True)
class Slot:
    """One claimed slot: where the values go and the number its stamp will carry."""

    ring: int  # the ring's id (a new child gets a new ring)
    index: int
    seq: int


@dataclass(frozen=True)
class StagedStep:
    """A host-phases step whose word maps (``[W, H, W]`` float32, then the timestep where
    ``timestep`` is None) are landing in ``slot``: the notice the sink process gets instead of
    the values, and what it needs to build the step's recipe once they land."""

    slot: Slot
    nbytes: int
    run_id: str
    words: list[str]
    cfg: Any  # PhaseConfig
    shape: tuple[int, int, int]
    step: int
    total: int
    focus: list[int]
    timestep: float | None  # None: the payload's last value
    ended: float | None


@dataclass(frozen=True)
class StagedImage:
    """A step's quick preview (``uint8 [H, W, 3]``) landing in ``slot``: the sink process builds
    the ``image`` packet once it has landed."""

    slot: Slot
    nbytes: int
    run_id: str
    step: int
    shape: tuple[int, int, int]


#: What a notice can stand for.
Staged = StagedStep | StagedImage


def poll_pause(waited: float) -> float:
    """The sleep before the next poll of a stamp, ``waited`` seconds into the wait: POLL until
    POLL_FINE, then doubling every POLL_FINE up to POLL_MAX."""
    if waited < POLL_FINE:
        return POLL
    return min(POLL * 2.0 ** min(int(waited / POLL_FINE), 30), POLL_MAX)


def ring_folder() -> str:
    """A new directory only this user can enter, in memory where the OS has ``/dev/shm``."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None
    folder = tempfile.mkdtemp(prefix="stepx-ring-", dir=base)  # mode 0700
    os.chmod(folder, 0o700)
    return folder


class Ring:
    """The parent's or the child's view of one ring (module docstring)."""

    def __init__(self, path: str, slots: int, slot_bytes: int, ident: int, *, create: bool) -> None:
        if not 1 <= slots <= MAX_SLOTS or slot_bytes < PAGE or slot_bytes % PAGE:
            raise ValueError(f"a ring needs 1 to {MAX_SLOTS} slots of a multiple of {PAGE} bytes, got {slots} × {slot_bytes}")
        self.path, self.slots, self.slot_bytes, self.ident = path, slots, slot_bytes, ident
        self.size = PAGE + slots * slot_bytes
        self._pinned = False
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise RingError(f"cannot open the ring file {path}: {exc.strerror}") from None
        try:
            if create:
                try:
                    if hasattr(os, "posix_fallocate"):
                        os.posix_fallocate(fd, 0, self.size)  # the space is taken now, or refused now
                    else:
                        os.ftruncate(fd, self.size)
                except OSError as exc:
                    raise RingError(f"no room for a {self.size >> 20} MiB ring in {os.path.dirname(path)}: {exc.strerror}") from None
            elif os.fstat(fd).st_size != self.size:
                raise RingError(f"the ring file {path} is {os.fstat(fd).st_size} bytes, not {self.size}")
            self._map = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        head = np.frombuffer(self._map, dtype=np.uint64, count=2 * slots)
        self.landed, self.done = head[:slots], head[slots:]  # views of the mapping: every read is a load
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)  # [size], the same memory
        self._claimed = [0] * slots  # the parent's last sequence number per slot
        self._next = 0
        self._seq = 0
        self._lock = threading.Lock()  # two runners may share one sink process
        self._stamps: dict[torch.device, torch.Tensor] = {}  # per device: arange(STAMPS), the stamps' source
        # per slot: its stamp (int64 [1]) and its bytes (uint8 [slot_bytes]), views of the mapping
        self._stamp_at = [self._bytes[i * 8 : i * 8 + 8].view(torch.int64) for i in range(slots)]
        self._slot_at = [self._bytes[PAGE + i * slot_bytes : PAGE + (i + 1) * slot_bytes] for i in range(slots)]

    # -- the parent (the model's thread) ------------------------------------------------------
    @classmethod
    def create(cls, folder: str, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES, ident: int = 0) -> "Ring":
        ring = cls(os.path.join(folder, "ring"), slots, slot_bytes, ident, create=True)
        ring.pin()
        return ring

    @property
    def pinned(self) -> bool:
        """Whether the mapping is page-locked for CUDA (its copies are asynchronous DMA)."""
        return self._pinned

    def pin(self) -> None:
        """Page-lock the mapping for CUDA's copies (asynchronous DMA); nothing without CUDA."""
        if self._pinned or not torch.cuda.is_available():
            return
        err = torch.cuda.cudart().cudaHostRegister(self._bytes.data_ptr(), self.size, 0)
        if int(err) != 0:
            raise RingError(f"cudaHostRegister of the {self.size >> 20} MiB ring failed: error {int(err)}")
        self._pinned = True
        # the first copy into a freshly registered mapping waited for the GPU's whole queue (an
        # H100, bench/ring_copy.py: 15 ms, then 0.1 ms): take that wait here, at start, not at a
        # run's first step. Zeros into slot 0's stamp and first bytes (seq 0: never claimed).
        device = torch.device("cuda", torch.cuda.current_device())
        table = self._stamps[device] = torch.arange(STAMPS, dtype=torch.int64, device=device)
        self._stamp_at[0].copy_(table[:1], non_blocking=True)
        self._slot_at[0][:8].view(torch.int64).copy_(table[:1], non_blocking=True)
        torch.cuda.synchronize(device)

    def claim(self, nbytes: int) -> Slot | None:
        """The next slot, if it is free (its last values were read) and ``nbytes`` fit; else None."""
        if nbytes > self.slot_bytes:
            return None
        with self._lock:
            i = self._next
            if self._claimed[i] != int(self.done[i]):  # the child has not read this slot's last values yet
                return None
            self._seq += 1
            self._claimed[i] = self._seq
            self._next = (i + 1) % self.slots
            return Slot(self.ident, i, self._seq)

    def land(self, slot: Slot, values: torch.Tensor) -> int:
        """Launch the copy of ``values`` (contiguous) into ``slot``, then of its stamp; never
        waits on CUDA. Returns the byte count."""
        src = (values if values.dim() == 1 else values.reshape(-1)).view(torch.uint8)  # [nbytes]
        n = src.numel()
        if src.is_cuda:
            table = self._stamps.get(src.device)
            if table is None:
                table = self._stamps[src.device] = torch.arange(STAMPS, dtype=torch.int64, device=src.device)
            stamp = slot.seq % STAMPS
            self._slot_at[slot.index][:n].copy_(src, non_blocking=True)
            self._stamp_at[slot.index].copy_(table[stamp : stamp + 1], non_blocking=True)  # queued after the values
        else:
            self._slot_at[slot.index][:n].copy_(src)
            self.landed[slot.index] = slot.seq % STAMPS
        return n

    # -- the child ------------------------------------------------------------------------------
    def wait(self, index: int, seq: int, timeout: float) -> bool:
        """Whether slot ``index``'s stamp reached ``seq`` within ``timeout`` seconds (polled as
        :func:`poll_pause` says)."""
        if not 0 <= index < self.slots:
            raise ValueError(f"slot {index} of a {self.slots}-slot ring")
        start = time.monotonic()
        deadline, stamp = start + timeout, seq % STAMPS
        while int(self.landed[index]) != stamp:
            now = time.monotonic()
            if now > deadline:
                return False
            time.sleep(poll_pause(now - start))
        return True

    def read(self, index: int, seq: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
        """A copy of slot ``index``'s first ``nbytes`` as ``dtype``; the slot is then done."""
        if not 0 <= index < self.slots or not 0 <= nbytes <= self.slot_bytes:
            raise ValueError(f"{nbytes} bytes of slot {index} of a {self.slots}-slot ring of {self.slot_bytes}-byte slots")
        start = PAGE + index * self.slot_bytes
        out = np.frombuffer(self._map, dtype=np.uint8, count=nbytes, offset=start).copy().view(dtype)
        self.done[index] = seq
        return out

    def release(self, index: int, seq: int) -> None:
        """Mark a slot done without reading it (its values never landed)."""
        self.done[index] = seq

    def close(self) -> None:
        """Unmap (after the device has finished every copy into it where it is pinned)."""
        if self._map.closed:
            return
        if self._pinned:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaHostUnregister(self._bytes.data_ptr())
            self._pinned = False
        del self.landed, self.done, self._bytes, self._stamp_at, self._slot_at
        self._stamps.clear()
        try:
            self._map.close()
        except BufferError:  # an array made from it is still alive somewhere: the OS unmaps it at exit
            pass


def remove_folder(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
