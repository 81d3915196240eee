"""How long a full garbage collection holds the interpreter with a model loaded, before and after
``bridge.heap.freeze_heap`` (what ``stepx serve`` does once its model is loaded): the pause a
show would see whenever CPython's collector decides on a full collection.

    python bench/gc_pause.py [--model shapes|tiny] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from bridge.heap import freeze_heap
from bridge.models.loading import load_pipeline
from bridge.runner import Request, Runner


def full_collections(repeat: int) -> list[float]:
    """Milliseconds of ``repeat`` full collections."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        gc.collect()
        out.append(1e3 * (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("shapes", "tiny"), default="shapes", help="the embedded model (shapes) or the tiny one")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, _ = load_pipeline(None if args.model == "shapes" else "tiny", "cpu")
    tracked = len(gc.get_objects())
    before = full_collections(args.repeat)
    frozen = freeze_heap()
    after = full_collections(args.repeat)
    print(f"{args.model}: {tracked} objects tracked; a full collection {statistics.median(before):.1f} ms (median of "
          f"{args.repeat}); after freeze_heap ({frozen} frozen, {len(gc.get_objects())} left) {statistics.median(after):.2f} ms")
    packets: list = []
    for seed in range(2):  # runs make objects after the freeze: how many stay for a full collection to walk?
        Runner(pipe, packets.append, "gc").run(Request("a red circle above a blue square", seed=seed, steps=8))
        packets.clear()
        print(f"after run {seed + 1}: {len(gc.get_objects())} objects tracked; a full collection "
              f"{statistics.median(full_collections(args.repeat)):.2f} ms")


if __name__ == "__main__":
    main()
