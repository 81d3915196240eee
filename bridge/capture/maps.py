"""Pure tensor maths of the capture: attention probabilities for the rows that are wanted.

Nothing here builds an ``N × N`` self-attention matrix: cross-attention uses the (few) text
keys, self-attention only the requested query rows, in chunks.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, heads * d]`` → ``[B, heads, N, d]``."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def cross_attention_maps(q: torch.Tensor, k: torch.Tensor, head_weights: torch.Tensor) -> torch.Tensor:
    """Head-weighted cross-attention probabilities.

    q: ``[B, heads, N, d]`` image queries; k: ``[B, heads, T, d]`` text keys;
    head_weights: ``[heads]``. Returns ``[B, T, N]`` = Σ_h w_h softmax(q_h k_hᵀ / √d), in float32.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scale)  # [B, h, N, T]
    probs = logits.softmax(-1)
    return torch.einsum("bhnt,h->btn", probs, head_weights)  # [B, T, N]


def batched_cross_attention_maps(
    q: list[torch.Tensor], k: list[torch.Tensor], weights: torch.Tensor, heads: int, rows: slice = slice(None), budget: int = 1 << 26,
) -> torch.Tensor:
    """Head- and layer-weighted cross-attention of L layers that share a grid, in one pass.

    q: L projected queries ``[B_all, N, heads·d]``; k: L projected text keys ``[B_all, T, heads·d]``
    (as the layers' ``to_q``/``to_k`` return them); rows: the batch rows wanted; weights:
    ``[L·heads]`` (layer-major). Returns ``[B, T, N]`` = Σ_l Σ_h w_lh softmax_T(q_lh k_lhᵀ/√d), in
    float32, ``budget`` logits at a time. A handful of launches per grid: the layers are stacked
    once, the logits are computed transposed (``[B, L, h, T, N]``, softmax over T) so that the
    head/layer sum is one matrix product into ``[B, T, N]`` with no permuted copy, and
    half-precision inputs are multiplied with float32 output.
    """
    n_layers = len(q)
    b = q[0][rows].shape[0]
    n, c = q[0].shape[1], q[0].shape[2]
    t = k[0].shape[1]
    d = c // heads
    step = max(1, budget // max(1, b * heads * n * t))
    out = None
    for s in range(0, n_layers, step):
        part = _cross_chunk(q[s : s + step], k[s : s + step], weights[s * heads : (s + step) * heads], heads, d, rows)
        out = part if out is None else out.add_(part)
    return cast(torch.Tensor, out).view(b, t, n)  # set: there is at least one layer


def _cross_chunk(q: list[torch.Tensor], k: list[torch.Tensor], weights: torch.Tensor, heads: int, d: int, rows: slice) -> torch.Tensor:
    qs = torch.stack([x[rows] for x in q], 1)  # [B, L, N, C]: only the wanted rows are copied
    ks = torch.stack([x[rows] for x in k], 1)  # [B, L, T, C]
    b, l, n, _ = qs.shape
    t = ks.shape[2]
    qh = qs.view(b, l, n, heads, d).transpose(2, 3)  # [B, L, h, N, d] (a view)
    kh = ks.view(b, l, t, heads, d).transpose(2, 3)  # [B, L, h, T, d]
    # the 1/√d goes into the (T×d) keys, not the (T×N) logits; float32 from here on
    ks = torch.mul(kh, _scale(d, ks.device))  # [B, L, h, T, d] float32
    qh = qh.to(torch.float32, memory_format=torch.contiguous_format)  # the one copy of the queries
    logits = torch.matmul(ks, qh.transpose(-1, -2))  # [B, L, h, T, N]
    probs = logits.softmax(-2)  # over the T keys
    return torch.matmul(weights, probs.view(b, l * heads, t * n))  # [B, T·N]


_SCALES: dict[tuple[int, str], torch.Tensor] = {}


def _scale(d: int, device: torch.device) -> torch.Tensor:
    """``[1]`` float32 1/√d on ``device`` (a 1-d tensor promotes a half operand to float32)."""
    key = (d, str(device))
    v = _SCALES.get(key)
    if v is None:
        v = _SCALES[key] = torch.full((1,), 1.0 / math.sqrt(d), dtype=torch.float32, device=device)
    return v


def per_head_cross_maps(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Un-aggregated probabilities ``[B, heads, T, N]`` (for the layers asked for in detail)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scale).softmax(-1).transpose(-1, -2)


def query_rows_map(
    q: torch.Tensor, k: torch.Tensor, row_weights: torch.Tensor, head_weights: torch.Tensor, chunk: int = 256,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention map of a weighted set of query rows.

    q: ``[B, heads, N, d]``; k: ``[B, heads, N, d]``; row_weights: ``[N]`` (zero rows are
    skipped; ``rows`` lists the non-zero ones if known); head_weights: ``[heads]``.
    Returns ``[B, N]`` = Σ_h w_h Σ_r ρ_r softmax(q_{h,r} kᵀ/√d). Only the selected rows are
    computed, ``chunk`` at a time.
    """
    if rows is None:  # found here on the device: a host sync; callers with fixed rows pass them
        rows = torch.nonzero(row_weights, as_tuple=True)[0]
    scale = 1.0 / math.sqrt(q.shape[-1])
    kf = k.float().transpose(-1, -2)  # [B, h, d, N]
    out = q.new_zeros((q.shape[0], k.shape[2]), dtype=torch.float32)
    for start in range(0, rows.numel(), chunk):
        idx = rows[start : start + chunk]
        probs = torch.matmul(q[:, :, idx].float(), kf).mul_(scale).softmax(-1)  # [B, h, r, N]
        out += torch.einsum("bhrn,h,r->bn", probs, head_weights, row_weights[idx].float())
    return out


def batched_query_rows_map(
    q: list[torch.Tensor], k: list[torch.Tensor], rows: torch.Tensor, weights: torch.Tensor, heads: int,
    batch_rows: slice = slice(None), budget: int = 1 << 26,
) -> torch.Tensor:
    """Self-attention map of a weighted set of query rows over L layers that share a grid.

    q, k: L projected queries and keys ``[B_all, N, heads·d]``; batch_rows: the batch rows wanted;
    rows: ``[n]`` the selected query rows; weights: ``[L, heads, n]`` = w_lh·ρ_r (head weight times
    row weight). Returns ``[B, N]`` = Σ_l Σ_h Σ_r w_lh ρ_r softmax(q_lhr k_lhᵀ/√d), in float32, the
    rows taken ``budget`` logits at a time.
    """
    ks = torch.stack([x[batch_rows] for x in k], 1)  # [B, L, N, C]: only the wanted rows are copied
    b, l, n, c = ks.shape
    d = c // heads
    kh = ks.view(b, l, n, heads, d).transpose(2, 3).to(torch.float32, memory_format=torch.contiguous_format)  # [B, L, h, N, d]
    qs = torch.stack([x[batch_rows] for x in q], 1)  # [B, L, N, C]
    chunk = max(1, budget // max(1, l * b * heads * n))
    out = None
    for start in range(0, rows.numel(), chunk):
        idx = rows[start : start + chunk]
        r = idx.numel()
        qh = qs.index_select(2, idx).view(b, l, r, heads, d).transpose(2, 3)  # [B, L, h, r, d]
        qh = torch.mul(qh, _scale(d, qs.device))  # 1/√d on the (few) query rows; float32
        probs = torch.matmul(qh, kh.transpose(-1, -2)).softmax(-1)  # [B, L, h, r, N]
        w = weights if r == rows.numel() else weights[:, :, start : start + chunk]
        part = torch.matmul(w.reshape(-1), probs.view(b, l * heads * r, n))  # [B, N]
        out = part if out is None else out.add_(part)
    return cast(torch.Tensor, out)  # set: a query covers at least one cell (Query.cell_weights)


def diffused_query_map(
    q: torch.Tensor, k: torch.Tensor, seed_weights: torch.Tensor, head_weights: torch.Tensor, iterations: int, keep: float
) -> torch.Tensor:
    """Iteratively diffused pixel map: the seed's map becomes the next query weights.

    Each iteration keeps the cells above ``keep`` × max of the current (head-normalised) map,
    renormalises them to sum to 1 and queries again. Returns ``[B, N]`` of the last iteration.
    """
    total = head_weights.sum().clamp_min(1e-12)
    weights = seed_weights
    result = query_rows_map(q, k, weights, head_weights)
    for _ in range(iterations):
        m = (result / total).mean(0)  # [N], batch-averaged to keep one row set
        m = torch.where(m >= keep * m.max(), m, torch.zeros_like(m))
        weights = m / m.sum()
        result = query_rows_map(q, k, weights, head_weights)
    return result


#: How coarser layers' maps are upsampled to the canonical grid (CaptureConfig.upsample).
UPSAMPLE_MODES = ("bilinear", "bicubic")


def halved(hw: tuple[int, int]) -> tuple[int, int]:
    """The grid after one UNet down-sampling (a stride-2 convolution): halved, rounding up."""
    return (hw[0] + 1) // 2, (hw[1] + 1) // 2


def layer_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` grid of a UNet layer with ``tokens`` image tokens, given the latent size:
    walk down from the latent size, one :func:`halved` at a time."""
    h, w = latent_hw
    while h * w > tokens:
        h, w = halved((h, w))
    if h * w != tokens:
        raise ValueError(f"cannot place {tokens} attention tokens on a grid derived from latent size {latent_hw}")
    return h, w


def resize_maps(x: torch.Tensor, size: tuple[int, int], upsample: str = "bilinear") -> torch.Tensor:
    """Resize ``[..., h, w]`` maps to ``size``: ``upsample`` (``bilinear`` or ``bicubic``,
    align_corners=False) up, area down. Bicubic (DAAM's and the head-relevance paper's choice)
    can overshoot below zero next to a sharp peak; those values are clamped to 0 (attention is
    non-negative)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsample mode {upsample!r}; expected one of {', '.join(UPSAMPLE_MODES)}")
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    up = size[0] >= x.shape[-2] and size[1] >= x.shape[-1]
    if not up:
        out = F.interpolate(flat, size=size, mode="area")
    elif upsample == "bicubic":
        out = F.interpolate(flat, size=size, mode="bicubic", align_corners=False).clamp_min_(0.0)
    else:
        out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def joint_text_probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    text: slice,
    head_weights: torch.Tensor | None = None,
    budget: int = 1 << 25,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image→text probabilities of a *joint* attention (MM-DiT), exactly as the model uses them.

    q: ``[B, heads, N, d]`` image queries; k: ``[B, heads, M, d]`` all keys of the joint
    sequence (image and text); text: the positions of the text keys in ``k``. The softmax is
    over all M keys; only its text columns are returned:

        P[b, h, n, t] = exp(q_n·k_t/√d − lse_n),   lse_n = log Σ_{m<M} exp(q_n·k_m/√d)

    ``lse`` ``[B, heads, N]``: the normaliser as the model's own attention kernel computed it
    (``sdpa_tap``); without it, it comes from one fused kernel call where there is one, else it
    is computed blockwise over the queries (about ``budget`` logits at a time, never the full
    ``(N+T)²`` matrix), in float32. With ``head_weights [heads]`` returns the head-weighted sum
    ``[B, T, N]``; with ``None`` the per-head maps ``[B, heads, T, N]``.
    """
    b, h, n, d = q.shape
    m = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    t = len(range(m)[text])
    lse_fast = lse if lse is not None else fused_logsumexp(q, k, scale)
    if lse_fast is not None:  # the normaliser from the fused kernel; only the T text logits are computed here
        probs = text_logits(q, k[:, :, text]).mul_(scale).sub_(lse_fast[:, :, None, :]).exp_()  # [B, h, T, N]
        if head_weights is None:
            return probs
        return torch.einsum("bhtn,h->btn", probs, head_weights)
    kf = k.float().transpose(-1, -2)  # [B, h, d, M]
    if head_weights is None:
        out = q.new_empty((b, h, t, n), dtype=torch.float32)
    else:
        out = q.new_empty((b, t, n), dtype=torch.float32)
    chunk = max(1, min(n, budget // max(1, b * h * m)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        logits = torch.matmul(q[:, :, start:stop].float(), kf).mul_(scale)  # [B, h, c, M]
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, h, c, 1]
        probs = (logits[..., text] - lse).exp_()  # [B, h, c, T]
        if head_weights is None:
            out[:, :, :, start:stop] = probs.transpose(-1, -2)
        else:
            out[:, :, start:stop] = torch.einsum("bhct,h->btc", probs, head_weights)
    return out


def text_logits(q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    """``[B, heads, T, N]`` float32 ``k_t·q_n`` (unscaled) of image queries q ``[B, heads, N, d]``
    and text keys kt ``[B, heads, T, d]``, laid out as the maps are (no transpose after).

    Half-precision inputs on CUDA multiply as the attention kernel does, half products summed in
    float32 on the tensor cores (``bmm`` with ``out_dtype``), not upcast first: the same values
    (a half has no more bits to lose), at a fraction of the time and memory."""
    b, h, n, d = q.shape
    t = kt.shape[2]
    keys, queries = kt.reshape(b * h, t, d), q.reshape(b * h, n, d).transpose(1, 2)  # [bh, T, d], [bh, d, N]
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and kt.dtype == q.dtype:
        try:
            return torch.bmm(keys, queries, out_dtype=torch.float32).view(b, h, t, n)
        except (RuntimeError, TypeError):  # a torch without bmm's out_dtype
            pass
    return torch.bmm(keys.float(), queries.float()).view(b, h, t, n)


def fused_logsumexp(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor | None:
    """``[B, heads, N]`` log Σ_m exp(q·k_m · scale) from the fused flash-attention kernel, or None.

    On CUDA with fp16/bf16 inputs the flash kernel returns this normaliser as a by-product (in
    float32, from the same half-precision q and k the model's attention uses), at a fraction of
    the cost of materialising the logits. Elsewhere returns None and callers go blockwise.
    """
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and k.dtype == q.dtype and q.shape[-1] <= 256):
        return None
    try:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, k, 0.0, False, False, scale=scale)
    except (RuntimeError, NotImplementedError):  # no flash kernel for this GPU/shape
        return None
    return out[1][..., : q.shape[2]]  # [B, heads, N] float32
