"""Selective aggregation (the paper's Eq. 4) and its evaluation: per-head maps of a generation,
averaged over a chosen set of heads instead of all of them (DAAM).

One generation is captured once with per-head maps for every cross-attention layer
(``CaptureConfig(detail_layers="*")``); any head set — all heads, the k most or least relevant
to a concept, any k — is then a weighted mean of those maps, with no second generation.
``save_head_maps`` / ``load_head_maps`` keep a generation's per-head maps on disk (``.npz``, no
pickle), so the tables can be recomputed for other head sets and relevance vectors without the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bridge.analysis.runs import CapturedRun, capture_prompts
from bridge.capture import CaptureConfig
from bridge.capture.tokens import TokenMap


@dataclass
class HeadMaps:
    """One generation's per-head word maps, mean over steps: ``maps [total_heads, words, R, R]``
    in ``layout`` order (heads of smaller layers upsampled bilinearly to the largest grid)."""

    image: np.ndarray  # [H, W, 3] float in [0, 1]
    tokens: TokenMap
    layout: list[tuple[str, int]]
    maps: torch.Tensor

    def word(self, word: str, weights: torch.Tensor) -> torch.Tensor:
        """``[R, R]``: Σ_h w_h · map_h / Σ_h w_h of one word (``weights [total_heads]`` ≥ 0)."""
        return aggregate(self.maps[:, self.tokens.index(word)], weights)


def aggregate(head_maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the head axis: ``[heads, ...]`` with ``[heads]`` → ``[...]``."""
    w = weights.to(head_maps.dtype)
    total = w.sum()
    if total <= 0:
        raise ValueError("the head set is empty (all weights zero)")
    return torch.tensordot(w, head_maps, dims=1) / total


def head_maps(pipe: Any, prompt: str, layout: Sequence[tuple[str, int]], *, seed: int, steps: int = 20,
              guidance: float = 4.0) -> HeadMaps:
    """Generate ``prompt`` once (the shared ``capture_prompts`` loop) and keep every head's word maps."""
    names = [n for n, _ in layout]
    config = CaptureConfig(detail_layers=names, layers=names)
    return from_run(next(capture_prompts(pipe, [prompt], steps=steps, guidance=guidance, seed=seed, config=config)), layout)


def from_run(captured: CapturedRun, layout: Sequence[tuple[str, int]]) -> HeadMaps:
    """The per-head word maps of a run captured with ``detail_layers`` over ``layout``, mean over steps."""
    run = captured.run
    tm = run.tokens(0)
    missing = [n for n, _ in layout if n not in run.frames[0].layers]
    if missing:
        raise ValueError(f"the run kept no per-head maps of {missing[:2]}; capture it with CaptureConfig(detail_layers=...)")
    size = max(tuple(run.frames[0].layers[n].shape[-2:]) for n, _ in layout)
    per_layer = []
    for name, _heads in layout:
        m = torch.stack([f.layers[name][0] for f in run.frames]).mean(0).float()  # [heads, T, h, w]
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        per_layer.append(m)
    tokens = torch.cat(per_layer).cpu()  # [total_heads, T, R, R]
    words = torch.stack([tm.word_maps(t) for t in tokens])  # [total_heads, words, R, R]
    image = np.asarray(captured.image, dtype=np.float32) / 255.0
    return HeadMaps(image, tm, [(str(name), int(heads)) for name, heads in layout], words)


def save_head_maps(hm: HeadMaps, path: str | Path) -> Path:
    """Write one generation's per-head maps as ``.npz`` (plain arrays and a JSON string, no pickle)."""
    meta = {"prompt": hm.tokens.prompt, "length": hm.tokens.length, "tokens": list(hm.tokens.tokens),
            "words": list(hm.tokens.words), "word_tokens": [list(t) for t in hm.tokens.word_tokens],
            "special": list(hm.tokens.special), "layout": [list(x) for x in hm.layout]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, image=(hm.image * 255).round().astype(np.uint8), maps=hm.maps.numpy().astype(np.float32),
                            meta=np.array(json.dumps(meta)))
    tmp.replace(path)
    return path


def load_head_maps(path: str | Path) -> HeadMaps:
    """Read what :func:`save_head_maps` wrote: selective aggregation without the model."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        image = z["image"].astype(np.float32) / 255.0
        maps = torch.from_numpy(z["maps"])
    tm = TokenMap(prompt=meta["prompt"], length=meta["length"], tokens=tuple(meta["tokens"]), words=tuple(meta["words"]),
                  word_tokens=tuple(tuple(t) for t in meta["word_tokens"]), special=tuple(meta["special"]))
    return HeadMaps(image, tm, [tuple(x) for x in meta["layout"]], maps)
