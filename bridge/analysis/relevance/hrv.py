"""The maths of head relevance vectors (HRV), as pure tensor functions.

For a cross-attention head ``h`` at one denoising step, the image queries ``q_h`` attend to the
key projections of one sampled word per concept, ``k_h = W_k^h · E(word_c)``:

    A_h = softmax(q_h k_hᵀ / √d)          # [N, C]: over the C concepts, per image position
    r_h = mean_N A_h                       # [C]
    counts[argmax_c r_h, h] += 1

Counts are integers, so merging runs is an exact sum whatever the split; each concept's row is
finally scaled to unit L2 norm (the head relevance vector).
"""

from __future__ import annotations

from typing import Sequence

import torch


def head_winners(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The most relevant concept per head: ``q [B, heads, N, d]``, ``k [heads, C, d]`` → ``[B, heads]`` (long).

    Computed in float32 from whatever dtype the model runs in.
    """
    logits = torch.einsum("bhnd,hcd->bhnc", q.float(), k.float()) * scale  # [B, heads, N, C]
    relevance = logits.softmax(dim=-1).mean(dim=2)  # [B, heads, C]
    return relevance.argmax(dim=-1)


def add_winners(counts: torch.Tensor, winners: torch.Tensor, offset: int) -> None:
    """``counts [C, total_heads] += 1`` at (winner, offset + head) for every row of ``winners [B, heads]``."""
    b, heads = winners.shape
    cols = (torch.arange(heads, device=winners.device) + offset).repeat(b)
    ones = torch.ones(b * heads, dtype=counts.dtype, device=counts.device)
    counts.index_put_((winners.reshape(-1).to(counts.device), cols.to(counts.device)), ones, accumulate=True)


def relevance_vectors(counts: torch.Tensor) -> torch.Tensor:
    """``[C, heads]`` integer counts → float64 rows of unit L2 norm (a concept that never won stays 0)."""
    c = counts.double()
    return c / c.norm(dim=1, keepdim=True).clamp_min(1e-300)


def split_by_layer(vector: Sequence[float] | torch.Tensor, layout: Sequence[tuple[str, int]]) -> dict[str, list[float]]:
    """A flat ``[total_heads]`` vector → ``{layer: [value per head]}`` in ``layout`` order (the head_weights format)."""
    values = [float(v) for v in (vector.tolist() if isinstance(vector, torch.Tensor) else vector)]
    need = sum(h for _, h in layout)
    if len(values) != need:
        raise ValueError(f"vector has {len(values)} values, the layout has {need} heads")
    out, i = {}, 0
    for name, heads in layout:
        out[name] = values[i : i + heads]
        i += heads
    return out


def flatten_by_layer(weights: dict[str, Sequence[float]], layout: Sequence[tuple[str, int]]) -> torch.Tensor:
    """Inverse of :func:`split_by_layer`: ``{layer: [...]}`` → ``[total_heads]`` float64 (missing layers are an error)."""
    missing = [n for n, _ in layout if n not in weights]
    if missing:
        raise ValueError(f"head weights lack layers {missing[:3]}{'…' if len(missing) > 3 else ''}; they come from another model")
    parts = []
    for name, heads in layout:
        w = list(weights[name])
        if len(w) != heads:
            raise ValueError(f"head weights of {name} have {len(w)} values, the layer has {heads} heads")
        parts += w
    return torch.tensor(parts, dtype=torch.float64)


def select_heads(relevance: torch.Tensor, k: int, most: bool = True) -> torch.Tensor:
    """``[total_heads]`` 0/1 weights of the ``k`` most (or least) relevant heads; ties broken by head order."""
    n = relevance.numel()
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    order = torch.sort(relevance if not most else -relevance, stable=True).indices
    w = torch.zeros(n, dtype=torch.float64)
    w[order[:k]] = 1.0
    return w
