"""One fused GPU kernel for a joint (MM-DiT) attention layer's image→text maps.

The maps of a joint layer are ``Σ_h w_h exp(q_hn·k_ht/√d − lse_hn)`` (``maps.joint_text_probabilities``).
Op by op that is a ``bmm`` into float32 ``[B, heads, T, N]`` per-head logits, then a scale, a
subtraction, an exponential and a head-weighted sum, each a full pass over that tensor: at
FLUX.1-dev's 512² (T = 512 T5 tokens, N = 1,024 image tokens, 24 heads) 50 MB per layer, read
and written seven times, 57 layers a step. That memory traffic was most of what capture added
to SD3.5 and FLUX on an H200 (docs/BENCHMARKS.md), and the six launches per layer most of the
rest on a host-bound FLUX.

Here one Triton kernel computes, for a tile of text tokens × image tokens, the per-head logits
in registers (``tl.dot``: half-precision products summed in float32, as the attention kernel and
``text_logits`` do), exponentiates, weights and sums them over the heads, and adds the tile into
the step's running sum: the per-head tensor never exists, one launch per layer. Triton (a
compiler made for exactly such fused tile kernels, shipped with CUDA builds of torch) beats a
hand-written CUDA extension here: no build step, and the same source runs in Triton's
interpreter on a CPU, which is how the tests check it.

The kernel's maps equal the op-by-op maths to float32 rounding (its exponential is the GPU's
fast one: a relative error of about 10⁻⁶), not bit for bit. Each (device, dtype, shapes,
strides) is checked once against :func:`maps.joint_text_probabilities` on the same inputs
(one host wait, on the first step); a mismatch, a Triton that is missing or fails to compile,
falls back to the op-by-op maths for those shapes, with one warning. The image is untouched
either way: the kernel only reads the attention's q, k and log-sum-exp.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from . import kernel_check
from .maps import joint_text_probabilities

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch: the op-by-op maths
    triton = None

BLOCK_T, BLOCK_N = 64, 64  # a text × image tile per program

Launch = Callable[..., None]
_checked: dict[tuple, bool] = {}

if triton is not None:

    def _joint_text_maps(Q, K, LSE, W, OUT, N, T, H, D, scale,
                         sqb, sqh, sqn, sqd, skb, skh, skt, skd, slb, slh, sln, sob, sot, son,
                         ACCUMULATE: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr):
        """OUT[b, t, n] (+)= Σ_h W[h] · exp(scale · K[b, h, t]·Q[b, h, n] − LSE[b, h, n])."""
        pid_n = tl.program_id(0)
        pid_t = tl.program_id(1)
        b = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_d = tl.arange(0, BLOCK_D)
        mask_n = offs_n < N
        mask_t = offs_t < T
        mask_d = offs_d < D
        k_ptrs = K + b * skb + offs_t[:, None] * skt + offs_d[None, :] * skd  # [BLOCK_T, BLOCK_D]
        q_ptrs = Q + b * sqb + offs_d[:, None] * sqd + offs_n[None, :] * sqn  # [BLOCK_D, BLOCK_N]
        l_ptrs = LSE + b * slb + offs_n * sln  # [BLOCK_N]
        acc = tl.full((BLOCK_T, BLOCK_N), 0.0, tl.float32)  # (tl.full, a builtin: tl.zeros is jit-compiled, which the interpreter cannot call)
        for h in range(0, H):
            k = tl.load(k_ptrs + h * skh, mask=mask_t[:, None] & mask_d[None, :], other=0.0)
            q = tl.load(q_ptrs + h * sqh, mask=mask_d[:, None] & mask_n[None, :], other=0.0)
            lse = tl.load(l_ptrs + h * slh, mask=mask_n, other=0.0)
            w = tl.load(W + h)
            if IEEE:  # float32 inputs: full float32 products, not TF32's
                logits = tl.dot(k, q, input_precision="ieee")  # [BLOCK_T, BLOCK_N] float32
            else:  # half inputs: exact products summed in float32
                logits = tl.dot(k, q)
            acc += w * tl.exp(logits * scale - lse[None, :])
        o_ptrs = OUT + b * sob + offs_t[:, None] * sot + offs_n[None, :] * son
        mask = mask_t[:, None] & mask_n[None, :]
        if ACCUMULATE:
            acc += tl.load(o_ptrs, mask=mask, other=0.0)
        tl.store(o_ptrs, acc, mask=mask)

    _compiled: Any = triton.jit(_joint_text_maps)
else:
    _joint_text_maps: Any = None  # type: ignore[no-redef]
    _compiled = None


def interpreted() -> Any:
    """The kernel under Triton's interpreter (numpy, on CPU tensors): for tests. None without Triton."""
    return kernel_check.interpreted(_joint_text_maps)


def kernel_for(device: torch.device) -> Any:
    """The compiled kernel where it runs (CUDA with Triton), else None: the op-by-op maths."""
    return kernel_check.on_device(_compiled, device)


def launch(kernel: Any, q: torch.Tensor, kt: torch.Tensor, lse: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
           accumulate: bool) -> None:
    """``out`` (+)= Σ_h w_h exp(q_h·k_h/√d − lse_h), in place.

    q ``[B, heads, N, d]`` image queries, kt ``[B, heads, T, d]`` text keys (half or float32, any
    strides), lse ``[B, heads, N]`` float32, w ``[heads]`` float32, out ``[B, T, N]`` float32
    (``accumulate=False``: overwritten, so it may be uninitialised)."""
    if q.is_cuda and q.device.index != torch.cuda.current_device():  # Triton launches on the current device's stream
        with torch.cuda.device(q.device):
            return launch(kernel, q, kt, lse, w, out, accumulate)
    b, h, n, d = q.shape
    t = kt.shape[2]
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(t, BLOCK_T), b)
    kernel[grid](q, kt, lse, w, out, n, t, h, d, 1.0 / math.sqrt(d), *q.stride(), *kt.stride(), *lse.stride(), *out.stride(),
                 ACCUMULATE=accumulate, IEEE=q.dtype == torch.float32, BLOCK_T=BLOCK_T, BLOCK_N=BLOCK_N, BLOCK_D=max(16, triton.next_power_of_2(d)))


def usable(kernel: Any, q: torch.Tensor, kt: torch.Tensor, lse: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``kernel`` gives these inputs' maps (:func:`launch`'s arguments; checked once per
    device, dtype, shapes and strides against the op-by-op maths: one host wait, on the first step)."""
    if kernel is None:
        return False
    return kernel_check.agrees(
        _checked, _key(kernel, q, kt, lse),
        lambda: joint_text_probabilities(q, kt, slice(None), w, lse=lse),  # [B, T, N]: with the lse, only text keys matter
        lambda out, accumulate: launch(kernel, q, kt, lse, w, out, accumulate=accumulate), "joint-attention maps", f"{q.device} {q.dtype}")


def refuse(kernel: Any, q: torch.Tensor, kt: torch.Tensor, lse: torch.Tensor, error: Exception) -> None:
    """A launch failed after its check passed: these inputs go op by op from now on (one warning)."""
    _checked[_key(kernel, q, kt, lse)] = False
    log.warning("the fused kernel for joint-attention maps failed on %s %s (%s); computing those maps op by op",
                q.device, q.dtype, error)


def _key(kernel: Any, q: torch.Tensor, kt: torch.Tensor, lse: torch.Tensor) -> tuple:
    return (kernel, q.device.type, q.dtype, kt.dtype, *(tuple(x.shape) + x.stride() for x in (q, kt, lse)))
