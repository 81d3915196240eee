"""The misinterpretation diagnosis (the paper's Fig. 3): one word's map under several head sets,
side by side — all heads (DAAM) and, per concept, its k most relevant heads. Where a word is
read as two things at once, different concepts' heads light up different regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .selective import HeadMaps


def overlay(image: np.ndarray, word_map: torch.Tensor, alpha: float = 0.6) -> np.ndarray:
    """``[H, W, 3]`` image in [0, 1] under the map (bilinear to the image, min-max, inferno)."""
    from matplotlib import colormaps

    h, w = image.shape[:2]
    up = F.interpolate(word_map[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]  # [H, W]
    m = ((up - up.min()) / (up.max() - up.min()).clamp_min(1e-8)).numpy()
    heat = colormaps["inferno"](m)[..., :3]
    return (1 - alpha) * image + alpha * heat


def diagnosis_figure(hm: HeadMaps, word: str, sets: dict[str, torch.Tensor], path: str | Path, title: str = "") -> Path:
    """Write a PNG: the image, then ``word``'s map under each named head set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 1 + len(sets)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8), dpi=110)
    axes[0].imshow(hm.image)
    axes[0].set_title("image", fontsize=9)
    for ax, (label, w) in zip(axes[1:], sets.items()):
        ax.imshow(overlay(hm.image, hm.word(word, w)))
        ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title or f"“{word}” in “{hm.tokens.prompt}”", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def hrv_figure(vectors: torch.Tensor, concepts: list[str], layout: list[tuple[str, int]], path: str | Path) -> Path:
    """A heat map of the head relevance vectors: concepts × heads, layers separated by lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = vectors.double().numpy()  # [C, heads]
    fig, ax = plt.subplots(figsize=(min(18, 2 + 0.12 * v.shape[1]), 1 + 0.3 * len(concepts)), dpi=110)
    im = ax.imshow(v, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(concepts)), concepts, fontsize=8)
    edges = np.cumsum([h for _, h in layout])[:-1] - 0.5
    for e in edges:
        ax.axvline(e, color="white", lw=0.6)
    centres = np.cumsum([0] + [h for _, h in layout])[:-1] + np.array([h for _, h in layout]) / 2 - 0.5
    ax.set_xticks(centres, [_short(n) for n, _ in layout], rotation=90, fontsize=6)
    ax.set_title("head relevance vectors (unit norm per concept)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _short(name: str) -> str:
    """``up_blocks.1.attentions.0.transformer_blocks.0.attn2`` → ``up1.0``."""
    parts = name.split(".")
    if parts[0].endswith("_blocks") and len(parts) > 3 and parts[1].isdigit():
        return f"{parts[0].split('_')[0]}{parts[1]}.{parts[3]}"
    if parts[0] == "mid_block":
        return "mid"
    return ".".join(parts[:2])
