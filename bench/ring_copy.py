"""Is a copy into the step ring asynchronous on this GPU? (bridge/stream/ring.py)

Queues ~10 ms of GPU work, then a copy of 128 KiB into a ring slot (and its stamp) and, for
comparison, into a block from torch's pinned allocator; prints how long each launch took on the
host and whether the values had landed right after it. An asynchronous copy has not landed; a
synchronous one waits for the GPU's queue (milliseconds here). Each time is one call, the first
ones of the process among them: what a call costs in a loop is ``bench/launch_costs.py``'s
(h100_run22: 8–11 µs for these copies, against 66–271 µs printed here in runs 19–21).

    python bench/ring_copy.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bridge.stream.ring import Ring, remove_folder, ring_folder


def main() -> None:
    folder = ring_folder()
    ring = Ring.create(folder, slots=4)
    remove_folder(folder)
    values = torch.randn(32768, device="cuda")  # 128 KiB
    pinned = torch.empty(32768, pin_memory=True)
    print("ring pinned:", ring.pinned, "| torch sees the mapping as pinned:", ring._bytes.is_pinned())  # noqa: SLF001
    for name in ("ring", "torch pinned", "ring", "torch pinned"):
        torch.cuda.synchronize()
        torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time ahead of the copy
        t = time.perf_counter()
        if name == "ring":
            slot = ring.claim(values.numel() * 4)
            assert slot is not None
            ring.land(slot, values)
            launched = time.perf_counter() - t
            landed_now = int(ring.landed[slot.index]) == slot.seq
            ring.wait(slot.index, slot.seq, 30)
            same = np.array_equal(ring.read(slot.index, slot.seq, values.numel() * 4, np.dtype(np.uint8)).view(np.float32),
                                  values.cpu().numpy())
        else:
            event = torch.cuda.Event()
            pinned.copy_(values, non_blocking=True)
            event.record()
            launched = time.perf_counter() - t
            landed_now = event.query()
            event.synchronize()
            same = bool(torch.equal(pinned, values.cpu()))
        print(f"{name:13s} launch {1e6 * launched:9.1f} µs  landed at once: {landed_now}  values right: {same}")
    ring.close()


if __name__ == "__main__":
    main()
