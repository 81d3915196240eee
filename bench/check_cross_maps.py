"""GPU time of one SD 1.5 step's cross-attention maps (the capture's batched maths), per formulation.

SD 1.5 at 512² with classifier-free guidance: 16 cross-attention layers of 8 heads over 77 text
keys, in four groups by grid (64², 32², 16², 8²; 5, 5, 5 and 1 layers; d = 40, 80, 160, 160),
two batch rows of which the conditional one is mapped. Each formulation's whole step (the four
groups' maps, resized to 64² and summed, as ``evaluation._plan`` does) is captured once as a
CUDA graph and replayed ``--reps`` times between CUDA events: the GPU time a step's maps add,
without the launches (the capture replays its maths as a graph too).

    python bench/check_cross_maps.py [--reps 200]

Formulations: ``op_by_op`` (``maps.batched_cross_attention_maps``) and, where Triton compiles for
the GPU, ``fused`` (bridge/capture/cross_kernel.py, one launch per layer). Prints JSON: per formulation the median microseconds per step (of 5 timings) and the largest
difference of its maps from the float64 reference, relative to the reference's largest value.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import torch

from bridge.capture import cross_kernel, maps

GROUPS = ((64, 5, 40), (32, 5, 80), (16, 5, 160), (8, 1, 160))  # (grid side, layers, head dim)
HEADS, T, B_ALL = 8, 77, 2


def inputs(device: str, dtype: torch.dtype) -> list[tuple[int, list[torch.Tensor], list[torch.Tensor]]]:
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for side, layers, d in GROUPS:
        n, c = side * side, HEADS * d
        q = [torch.randn(B_ALL, n, c, generator=g).mul_(0.5).to(device, dtype) for _ in range(layers)]
        k = [torch.randn(B_ALL, T, c, generator=g).mul_(0.5).to(device, dtype) for _ in range(layers)]
        out.append((side, q, k))
    return out


def step(fn, groups, weights, rows) -> torch.Tensor:
    total = None
    for side, q, k in groups:
        m = fn(q, k, weights[: len(q) * HEADS], HEADS, rows)  # [B, T, N]
        m = maps.resize_maps(m.reshape(m.shape[0], T, side, side), (64, 64))
        total = m if total is None else total.add_(m)
    return total


def reference(groups, weights, rows) -> torch.Tensor:
    """float64, per layer and head: Σ w softmax_T(q kᵀ/√d)."""
    total = None
    for side, q, k in groups:
        acc = None
        for i, (ql, kl) in enumerate(zip(q, k)):
            qh = maps.split_heads(ql[rows].double(), HEADS)  # [B, h, N, d]
            kh = maps.split_heads(kl[rows].double(), HEADS)  # [B, h, T, d]
            p = (qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5).softmax(-1)  # [B, h, N, T]
            m = torch.einsum("bhnt,h->btn", p, weights[i * HEADS : (i + 1) * HEADS].double())
            acc = m if acc is None else acc + m
        m = maps.resize_maps(acc.reshape(acc.shape[0], T, side, side).float(), (64, 64)).double()
        total = m if total is None else total + m
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = args.device
    dtype = torch.float16 if dev == "cuda" else torch.float32
    groups = inputs(dev, dtype)
    weights = torch.rand(5 * HEADS, generator=torch.Generator().manual_seed(1)).to(dev)
    rows = slice(1, 2)
    ref = reference(groups, weights, rows)
    report: dict = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"}
    formulations = {"op_by_op": maps.batched_cross_attention_maps}
    kernel = cross_kernel.kernel_for(torch.device(dev))
    if kernel is not None:
        formulations["fused"] = functools.partial(cross_kernel.fused_cross_attention_maps, kernel)
    for name, fn in formulations.items():
        out = step(fn, groups, weights, rows)
        entry = {"max_rel_diff": float((out.double() - ref).abs().max() / ref.abs().max())}
        if dev == "cuda":
            torch.cuda.synchronize()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    step(fn, groups, weights, rows)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step(fn, groups, weights, rows)
            times = []
            for _ in range(5):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(args.reps):
                    graph.replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) * 1000 / args.reps)
            entry["us_per_step"] = round(statistics.median(times), 1)
        report[name] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
