"""Check on a GPU that the fused-kernel normaliser gives the same joint probabilities as the
blockwise float32 path (and a float64 reference). Prints the max relative errors and timings."""

from __future__ import annotations

import time

import torch

from bridge.capture import maps

torch.manual_seed(0)
for b, h, n, t, d in [(1, 24, 4096, 333, 64), (1, 24, 1024, 512, 128)]:
    q = torch.randn(b, h, n, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, h, n + t, d, device="cuda", dtype=torch.float16)
    text = slice(n, n + t)
    w = torch.rand(h, device="cuda")
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / d**0.5, -1)[..., text]
    ref = torch.einsum("bhnt,h->btn", ref, w.double())
    fused = maps.joint_text_probabilities(q, k, text, w)
    saved, maps.fused_logsumexp = maps.fused_logsumexp, lambda *a: None
    block = maps.joint_text_probabilities(q, k, text, w)
    timings = {}
    for name, fn in (("blockwise", lambda: maps.joint_text_probabilities(q, k, text, w)),):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(20): fn()
        torch.cuda.synchronize(); timings[name] = (time.perf_counter() - t0) / 20 * 1e3
    maps.fused_logsumexp = saved
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(20): maps.joint_text_probabilities(q, k, text, w)
    torch.cuda.synchronize(); timings["fused"] = (time.perf_counter() - t0) / 20 * 1e3
    rel = lambda a: float((a.double() - ref).abs().max() / ref.abs().max())
    print(f"B{b} H{h} N{n} T{t} d{d}: rel err fused {rel(fused):.2e}, blockwise {rel(block):.2e}; ms fused {timings['fused']:.2f}, blockwise {timings['blockwise']:.2f}")
