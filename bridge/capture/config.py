"""What to capture: layers, head weights, resolution, self-attention queries.

Weights are data, not code paths: uniform weights give DAAM; a head-relevance vector gives
selective aggregation. The aggregate over the chosen layers L and heads h is the weighted mean

    map = Σ_{l∈L} Σ_h w_{l,h} · resize(P_{l,h}) / Σ_{l∈L} Σ_h w_{l,h}
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .maps import UPSAMPLE_MODES
from .queries import Query


@dataclass
class CaptureConfig:
    """Settings of one capture.

    layers / self_layers: fnmatch patterns over attention layer names (``"*"`` = all;
      names look like ``up_blocks.1.attentions.0.transformer_blocks.0.attn2``).
    head_weights: per layer name, a weight per head; layers not listed get weight 1 per head.
      A layer whose weights are all zero is skipped (no work at all).
    resolution: canonical ``(H, W)`` of every map; ``None`` = the finest grid among the model's
      cross-attention layers (whichever are captured), its own attention resolution
      (``Adapter.map_grid``): the latent's for SD 1.x/2.x (64×64 at 512²),
      half of it for SDXL (64×64 at 1024²: its UNet has no attention at the latent's 128×128, so
      a latent-sized map would be an upsampling of the 64×64 one), the patch grid for SD3/FLUX.
    queries: self-attention queries (DAAM-I2I); none by default.
    detail_layers: patterns of layers whose per-head, per-layer maps are also kept.
    keep_frames: keep every StepFrame on the run (the default); off for a pure stream.
    cross: capture cross-attention word maps (on by default).
    upsample: how a layer coarser than ``resolution`` is upsampled: ``bilinear`` (default) or
      ``bicubic`` (DAAM's and the head-relevance paper's choice, negatives clamped to 0). Bilinear
      stays the default: it never leaves [min, max] of the coarse map (no ringing to clamp, so a
      word's mass and entropy are not shifted by overshoot), and the live textures and recorded
      traces keep their meaning; pick bicubic to compare numbers with DAAM.
    cuda_graphs: on CUDA, run each evaluation's map maths eagerly once, then capture them as a CUDA
      graph over static copies of their inputs and replay it (``bridge/capture/graphs.py``); off
      computes them eagerly every time.
    extra: family-specific options. Both families: ``fused_maps`` (default True: the maps by one
      Triton kernel per layer where it compiles and agrees with the op-by-op maths,
      ``cross_kernel.py`` / ``joint_kernel.py``; False: op by op). MM-DiT's others: see
      ``MMDiTAdapter.configure``.
    """

    layers: str | Sequence[str] = "*"
    head_weights: Mapping[str, Sequence[float]] | None = None
    resolution: tuple[int, int] | None = None
    queries: Sequence[Query] = ()
    self_layers: str | Sequence[str] = "*"
    detail_layers: Sequence[str] = ()
    keep_frames: bool = True
    cross: bool = True
    strict_prompt_length: bool = False
    cuda_graphs: bool = True
    upsample: str = "bilinear"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [q.name for q in self.queries]
        if len(set(names)) != len(names):
            raise ValueError(f"query names must be unique, got {names}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"CaptureConfig.upsample {self.upsample!r} is unknown; expected one of {', '.join(UPSAMPLE_MODES)}")
        if self.resolution is not None:
            h, w = self.resolution
            if h < 1 or w < 1:
                raise ValueError(f"resolution must be positive, got {self.resolution}")


def matches(name: str, patterns: str | Sequence[str]) -> bool:
    """Whether a layer name matches any fnmatch pattern."""
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return any(fnmatch.fnmatchcase(name, p) for p in pats)


def head_weight_vector(config: CaptureConfig, name: str, heads: int) -> torch.Tensor:
    """``[heads]`` float32 weights of layer ``name``; uniform ones where none are given."""
    given = (config.head_weights or {}).get(name)
    if given is None:
        return torch.ones(heads)
    w = torch.as_tensor(list(given), dtype=torch.float32)
    if w.numel() != heads:
        raise ValueError(f"head_weights[{name!r}] has {w.numel()} values but the layer has {heads} heads")
    if (w < 0).any():
        raise ValueError(f"head_weights[{name!r}] has negative values; weights must be ≥ 0")
    return w


def load_head_weights(path: str | Path) -> dict[str, list[float]]:
    """Read head weights from JSON: ``{"layer name": [w_head0, w_head1, ...], ...}``."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: head weights must be a JSON object mapping layer names to lists of numbers")
    return {str(k): [float(x) for x in v] for k, v in data.items()}


def top_heads(relevance: Mapping[str, Sequence[float]], k: int) -> dict[str, list[float]]:
    """Selective aggregation: weight 1 for the ``k`` most relevant heads over all layers, 0 elsewhere.

    ``relevance`` is a head relevance vector split by layer (as in "Selective Aggregation of
    Attention Maps"): larger = more relevant to the concept.
    """
    flat = [(float(v), name, i) for name, vs in relevance.items() for i, v in enumerate(vs)]
    if not 0 < k <= len(flat):
        raise ValueError(f"k must be in 1..{len(flat)}, got {k}")
    keep = {(name, i) for _, name, i in sorted(flat, key=lambda t: -t[0])[:k]}
    return {name: [1.0 if (name, i) in keep else 0.0 for i in range(len(vs))] for name, vs in relevance.items()}
