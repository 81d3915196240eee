"""Text-guided detection: pure tensor maths from word maps (and self-attention) to instance masks.

An object's *evidence* is the mean of its words' maps (noun and attributes) over the chosen
steps; self-attention (DAAM-I2I) refines it. The capture's self-attention queries are a grid of
``g × g`` box queries (:func:`grid_queries`), so the run holds an affinity ``[g·g, H, W]``: where
each grid cell attends. Refinement (``refine``) describes every pixel by which cells attend to it,
lets the pixels the words clearly point at (and clearly avoid) vote, and reshapes the word
evidence by that vote; instances are the connected regions of the thresholded result.
Shapes are commented at each tensor; every function is deterministic and device-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

Method = Literal["wordmap", "guided"]
METHODS: tuple[str, ...] = ("wordmap", "guided")
GRID_PREFIX = "grid:"


def grid_queries(g: int = 8) -> list:  # list[bridge.capture.Query]
    """``g × g`` box queries covering the image, named ``grid:ROW,COL`` (row 0 = top)."""
    from bridge.capture import Query  # noqa: PLC0415

    if g < 1:
        raise ValueError(f"the self-attention grid needs at least 1 cell a side, got {g}")
    return [Query.box(f"{GRID_PREFIX}{i},{j}", j / g, i / g, (j + 1) / g, (i + 1) / g) for i in range(g) for j in range(g)]


@dataclass(frozen=True)
class DetectConfig:
    """How evidence becomes masks (defaults: the best of the measured settings, docs/OBJECTS.md).

    steps: which steps' maps to average (None = all; negative indices count from the end).
    attribute_weight: weight of each attribute word's map against the noun's 1 (0 = noun alone).
    tau: threshold on the min-max normalised word evidence (method ``wordmap``).
    guided_tau: threshold on the refined map (method ``guided``).
    seed_high / seed_low: evidence levels above / below which grid pixels seed the object's /
      the rest's self-attention prototype.
    temperature: sharpness of the prototype vote (cosine-similarity difference × temperature).
    word_share: guided only: the refined map is evidence^share × vote^(1 − share).
    min_area: instances smaller than this fraction of the image are dropped.
    """

    steps: Sequence[int] | None = None
    attribute_weight: float = 1.0
    tau: float = 0.4
    guided_tau: float = 0.4
    seed_high: float = 0.6
    seed_low: float = 0.2
    temperature: float = 30.0
    word_share: float = 0.7
    min_area: float = 0.002


def normalise(m: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] over the last two dims (a flat map becomes zeros)."""
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-8)


def object_evidence(word_maps: torch.Tensor, indices: Sequence[int], cfg: DetectConfig) -> torch.Tensor:
    """``[h, w]`` evidence of one object from ``word_maps [steps, words, h, w]``: the weighted mean
    of its words' maps (first index = the noun, weight 1; the rest attributes) over the chosen steps."""
    maps = word_maps if cfg.steps is None else word_maps[list(cfg.steps)]  # [S, W, h, w]
    w = torch.tensor([1.0] + [cfg.attribute_weight] * (len(indices) - 1), dtype=torch.float32)  # [k]
    each = normalise(maps[:, list(indices)].float().mean(0))  # [k, h, w]
    return (each * w[:, None, None]).sum(0) / w.sum()  # [h, w]


def refine(evidence: torch.Tensor, affinity: torch.Tensor, cfg: DetectConfig) -> torch.Tensor:
    """Text-guided refinement: word evidence ``[h, w]`` + affinity ``[g·g, H, W]`` -> ``[H, W]`` in [0, 1].

    Each pixel of the affinity's grid is described by *who attends to it*: its column of the
    affinity, a ``g·g`` vector (pixels of one object are attended by the same cells). Pixels where
    the words clearly point (evidence ≥ ``seed_high``) make the object's prototype, pixels they
    clearly avoid (≤ ``seed_low``) the rest's; every pixel votes by which prototype it resembles
    (cosine), and the vote reshapes the word evidence. Self-attention decides the edges, the words
    decide which region.
    """
    n, H, W = affinity.shape  # [g·g, H, W]
    ev = normalise(F.interpolate(evidence[None, None].float(), size=(H, W), mode="bilinear", align_corners=False)[0, 0])  # [H, W]
    feat = affinity.float().reshape(n, H * W).T  # [H·W, g·g]: who attends to each pixel
    feat = feat / feat.norm(dim=1, keepdim=True).clamp_min(1e-8)
    e = ev.reshape(-1)  # [H·W]
    fg = (feat * (e * (e >= cfg.seed_high))[:, None]).sum(0)  # [g·g]
    bg = (feat * (e <= cfg.seed_low).float()[:, None]).sum(0)  # [g·g]
    if fg.norm() == 0 or bg.norm() == 0:  # nothing clearly in or out: nothing to refine against
        return ev
    fg, bg = fg / fg.norm(), bg / bg.norm()
    vote = torch.sigmoid((feat @ fg - feat @ bg) * cfg.temperature).reshape(H, W)  # [H, W]
    return normalise(ev ** cfg.word_share * vote ** (1 - cfg.word_share))


def to_image(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[h, w] -> [H, W]`` bilinear, min-max normalised."""
    return normalise(F.interpolate(m[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0])


def label_components(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """8-connected components of a bool ``[H, W]`` mask: ``(labels [H, W] int64 0 = none, count)``.

    Max-label propagation with 3×3 max-pooling until nothing changes (no SciPy needed)."""
    H, W = mask.shape
    lab = torch.where(mask, torch.arange(1, H * W + 1, dtype=torch.float64).view(H, W), torch.zeros((), dtype=torch.float64))
    while True:
        grown = F.max_pool2d(lab[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(grown, lab):
            break
        lab = grown
    ids = torch.unique(lab[mask])
    out = torch.zeros((H, W), dtype=torch.int64)
    for k, v in enumerate(ids.tolist(), start=1):
        out[lab == v] = k
    return out, len(ids)


def instances(prob: torch.Tensor, tau: float, min_area: float, count: int | None = 1) -> list[tuple[torch.Tensor, float]]:
    """Instance masks and scores from an object's ``[H, W]`` map in [0, 1].

    Threshold at ``tau``; each 8-connected region above ``min_area`` (fraction of the image) is one instance, scored by the
    mean map value inside it times its share of the map's mass over the threshold (so a bright, large
    region outranks a faint speck). ``count`` (from the prompt) keeps at most that many, best first;
    None keeps all."""
    H, W = prob.shape
    mask = prob >= tau
    lab, n = label_components(mask)
    total = float(prob[mask].sum()) or 1.0
    out = []
    for k in range(1, n + 1):
        m = lab == k
        if m.sum() < min_area * H * W:
            continue
        mass = float(prob[m].sum())
        out.append((m, float(prob[m].mean()) * (mass / total) ** 0.5))
    out.sort(key=lambda t: -t[1])
    return out if count is None else out[:count]
