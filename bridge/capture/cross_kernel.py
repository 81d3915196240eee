"""One fused GPU kernel for a UNet cross-attention layer's maps (SD 1.x/2.x, SDXL).

A layer's maps are ``Σ_h w_h softmax_T(q_hn·k_ht/√d)`` over its few text keys (T = 77 for
CLIP). Op by op (``maps.batched_cross_attention_maps``) that is a cast of the queries to float32,
a matrix product into float32 ``[B, L, heads, T, N]`` logits, a softmax over T (a strided
dimension there: PyTorch's slow "spatial" softmax kernel) and a head-weighted sum, each a full
pass over the logits: at SD 1.5's 64² grid 50 MB per group of five layers. On an H100 those
passes added 0.67 ms of GPU time to every SD 1.5 step (docs/BENCHMARKS.md, h100_run6).

Here one Triton program takes a tile of image tokens and every text key (T ≤ ``MAX_T``: the
whole softmax row lives in the tile), and for each head computes the logits in registers
(``tl.dot``: half-precision products summed in float32, as the attention kernel does), their
softmax over T, and adds the head's weighted probabilities into the tile's sum; the per-head
logits never reach memory, and the queries are read where the layer's ``to_q`` wrote them (no
cast, no stack, no copy of the conditional rows). One launch per layer, inside the evaluation's
CUDA graph.

As with :mod:`bridge.capture.joint_kernel` (the MM-DiT kernel, whose tests and fallback this
follows), the maps equal the op-by-op maths to float32 rounding; each (device, dtype, shapes,
strides) is checked once against it, and a mismatch, a missing Triton or a compile error falls
back to the op-by-op maths with one warning. The image is untouched: the kernel only reads q and k.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import kernel_check
from .maps import batched_cross_attention_maps

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch: the op-by-op maths
    triton = None

MAX_T = 128  # text keys per softmax row the kernel holds in one tile (CLIP: 77)
#: shared memory one program may take, in bytes: under every CUDA GPU's per-block limit since
#: Ampere (99 KiB on sm_86/89, 163 KiB on A100, 227 KiB on H100)
SHARED_BUDGET = 96 * 1024
_checked: dict[tuple, bool] = {}

if triton is not None:

    def _cross_maps(Q, K, W, OUT, N, T, H, D, scale, row0,
                    sqb, sqn, skb, skt, sob, sot, son,
                    ACCUMULATE: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
        """OUT[b, t, n] (+)= Σ_h W[h] · softmax_t(scale · K[row0 + b, t, h·D:(h+1)·D] · Q[row0 + b, n, h·D:(h+1)·D])."""
        pid_n = tl.program_id(0)
        b = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_t = tl.arange(0, BLOCK_T)
        offs_d = tl.arange(0, BLOCK_D)
        mask_n = offs_n < N
        mask_t = offs_t < T
        mask_d = offs_d < D
        k_ptrs = K + (row0 + b) * skb + offs_t[:, None] * skt + offs_d[None, :]  # [BLOCK_T, BLOCK_D]
        q_ptrs = Q + (row0 + b) * sqb + offs_d[:, None] + offs_n[None, :] * sqn  # [BLOCK_D, BLOCK_N]
        acc = tl.full((BLOCK_T, BLOCK_N), 0.0, tl.float32)
        for h in range(0, H):
            k = tl.load(k_ptrs + h * D, mask=mask_t[:, None] & mask_d[None, :], other=0.0)
            q = tl.load(q_ptrs + h * D, mask=mask_d[:, None] & mask_n[None, :], other=0.0)
            w = tl.load(W + h)
            if IEEE:  # float32 inputs: full float32 products, not TF32's
                logits = tl.dot(k, q, input_precision="ieee")  # [BLOCK_T, BLOCK_N] float32
            else:  # half inputs: exact products summed in float32
                logits = tl.dot(k, q)
            logits = tl.where(mask_t[:, None], logits * scale, float("-inf"))
            # tl.reduce with the standard combiners is what tl.max / tl.sum call (jit-compiled helpers,
            # which Triton's interpreter cannot call; it runs these reductions itself)
            top = tl.reduce(logits, 0, tl.standard._elementwise_max)  # [BLOCK_N]
            p = tl.exp(logits - top[None, :])
            acc += p * (w / tl.reduce(p, 0, tl.standard._sum_combine))[None, :]
        o_ptrs = OUT + b * sob + offs_t[:, None] * sot + offs_n[None, :] * son
        mask = mask_t[:, None] & mask_n[None, :]
        if ACCUMULATE:
            acc += tl.load(o_ptrs, mask=mask, other=0.0)
        tl.store(o_ptrs, acc, mask=mask)

    _compiled: Any = triton.jit(_cross_maps)
else:
    _cross_maps: Any = None  # type: ignore[no-redef]
    _compiled = None


def interpreted() -> Any:
    """The kernel under Triton's interpreter (numpy, on CPU tensors): for tests. None without Triton."""
    return kernel_check.interpreted(_cross_maps)


def kernel_for(device: torch.device) -> Any:
    """The compiled kernel where it runs (CUDA with Triton), else None: the op-by-op maths."""
    return kernel_check.on_device(_compiled, device)


def tiles(d: int, itemsize: int) -> dict[str, int]:
    """A launch's tile sizes and software-pipelining depth for heads of width ``d``.

    Image tokens per program: fewer for wide heads (SD 1.5's d = 160), whose tiles are larger.
    Triton pipelines the loop over heads, keeping ``num_stages`` heads' k and q tiles in shared
    memory at once when the strides let it copy asynchronously (the runtime's usual case): at
    d = 160 its default of 3 stages asked 240 KiB of an H100's 227 (h100_run7), so the depth is
    what :data:`SHARED_BUDGET` holds."""
    bn = 64 if d <= 64 else 32
    bd = max(16, 1 << (d - 1).bit_length())  # the head width, padded to a power of two
    stage = (MAX_T + bn) * bd * itemsize  # one head's k [BLOCK_T, BLOCK_D] and q [BLOCK_D, BLOCK_N] tiles
    return {"BLOCK_N": bn, "BLOCK_D": bd, "num_stages": max(1, min(3, SHARED_BUDGET // stage))}


def launch(kernel: Any, q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, heads: int, rows: slice, out: torch.Tensor,
           accumulate: bool) -> None:
    """``out`` (+)= Σ_h w_h softmax_T(q_h k_hᵀ/√d) for the batch ``rows``, in place.

    q ``[B_all, N, heads·d]``, k ``[B_all, T, heads·d]`` as the layer's ``to_q``/``to_k`` return
    them (half or float32, last dim contiguous), w ``[heads]`` float32, out ``[B, T, N]`` float32
    (``accumulate=False``: overwritten, so it may be uninitialised)."""
    if q.is_cuda and q.device.index != torch.cuda.current_device():  # Triton launches on the current device's stream
        with torch.cuda.device(q.device):
            return launch(kernel, q, k, w, heads, rows, out, accumulate)
    row0, stop, _ = rows.indices(q.shape[0])
    n, t, d = q.shape[1], k.shape[1], q.shape[2] // heads
    shape = tiles(d, q.element_size())
    grid = (triton.cdiv(n, shape["BLOCK_N"]), stop - row0)
    kernel[grid](q, k, w, out, n, t, heads, d, 1.0 / math.sqrt(d), row0, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                 *out.stride(), ACCUMULATE=accumulate, IEEE=q.dtype == torch.float32, BLOCK_T=MAX_T, **shape)


def fits(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the kernel takes these inputs at all: T ≤ MAX_T and unit-stride channels."""
    return k.shape[1] <= MAX_T and q.stride(-1) == 1 and k.stride(-1) == 1 and q.dtype == k.dtype


def usable(kernel: Any, q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, heads: int, rows: slice) -> bool:
    """Whether ``kernel`` gives these inputs' maps (checked once per device, dtype, shapes and
    strides against the op-by-op maths: one host wait, while the capture's plan is made)."""
    if kernel is None or not fits(q, k):
        return False
    key = (kernel, q.device.type, q.dtype, heads, rows.indices(q.shape[0]), *(tuple(x.shape) + x.stride() for x in (q, k)))
    return kernel_check.agrees(
        _checked, key, lambda: batched_cross_attention_maps([q], [k], w, heads, rows),  # [B, T, N]
        lambda out, accumulate: launch(kernel, q, k, w, heads, rows, out, accumulate), "cross-attention maps", f"{q.device} {q.dtype}")


def fused_cross_attention_maps(kernel: Any, q: list[torch.Tensor], k: list[torch.Tensor], weights: torch.Tensor, heads: int,
                               rows: slice) -> torch.Tensor:
    """:func:`maps.batched_cross_attention_maps` by the kernel, one launch per layer: ``[B, T, N]``."""
    row0, stop, _ = rows.indices(q[0].shape[0])
    out = torch.empty(stop - row0, k[0].shape[1], q[0].shape[1], dtype=torch.float32, device=q[0].device)
    for i, (ql, kl) in enumerate(zip(q, k)):
        launch(kernel, ql, kl, weights[i * heads : (i + 1) * heads], heads, rows, out, accumulate=i > 0)
    return out
