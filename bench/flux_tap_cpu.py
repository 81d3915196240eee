"""What FLUX capture costs on the CPU, tapping the processor's own attention call against the
projection hooks it falls back to (which apply the norms and RoPE again and compute the
normaliser): the tiny FLUX pipeline, where Python and small ops set the pace, thread CPU time,
interleaved rounds, median of per-round ratios against plain generation.

    python bench/flux_tap_cpu.py [--rounds 30] [--steps 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bridge.capture import capture, sdpa_tap
from bridge.models.tiny import tiny_flux_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = tiny_flux_pipeline()
    tappable = sdpa_tap.tappable

    def plain() -> None:
        g = torch.Generator().manual_seed(0)
        pipe("a red fox in the snow", height=64, width=64, num_inference_steps=args.steps, guidance_scale=3.5,
             generator=g, max_sequence_length=32, output_type="np")

    def tap() -> None:
        with capture(pipe):
            plain()

    def hooks() -> None:
        sdpa_tap.tappable = lambda processor: False
        try:
            with capture(pipe):
                plain()
        finally:
            sdpa_tap.tappable = tappable

    variants = {"plain": plain, "tap": tap, "hooks": hooks}
    times: dict[str, list[float]] = {v: [] for v in variants}
    with torch.inference_mode():
        for f in variants.values():
            f()
        for r in range(args.rounds):
            names = list(variants)[r % 3:] + list(variants)[: r % 3]
            for v in names:
                t = time.thread_time()
                variants[v]()
                times[v].append(time.thread_time() - t)
    base = np.array(times["plain"])
    print(f"tiny FLUX, {args.steps} steps, {args.rounds} rounds; plain {1000 * np.median(base):.1f} ms CPU")
    for v in ("tap", "hooks"):
        print(f"{v:6s} {np.median(np.array(times[v]) / base):.3f}x plain")


if __name__ == "__main__":
    main()
