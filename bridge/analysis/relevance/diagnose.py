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
    m = F.interpolate(word_map[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    m = ((m - m.min()) / (m.max() - m.min()).clamp_min(1e-8)).numpy()
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
