"""A labelled picture of a run's instances: masks tinted over the image, boxes, category and score."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .annotate import Instance

#: distinct tints (tab10), one per category in order of appearance
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def render(image: np.ndarray, found: Sequence[Instance], alpha: float = 0.45, min_side: int = 384) -> Image.Image:
    """``image [H, W, 3]`` uint8 with each instance's mask tinted, its box drawn and labelled
    ``category score``; upscaled (nearest) so the short side is at least ``min_side``."""
    h, w = image.shape[:2]
    base = image[:, :, :3].astype(np.float32)
    colours: dict[str, tuple[int, int, int]] = {}
    for inst in found:
        c = colours.setdefault(inst.category, PALETTE[len(colours) % len(PALETTE)])
        m = inst.mask[:, :, None]
        base = np.where(m, (1 - alpha) * base + alpha * np.asarray(c, np.float32), base)
    k = max(1, -(-min_side // min(h, w)))
    pic = Image.fromarray(base.round().clip(0, 255).astype(np.uint8)).resize((w * k, h * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(pic)
    font = ImageFont.load_default()
    for inst in found:
        c = colours[inst.category]
        x, y, bw, bh = inst.bbox
        draw.rectangle([x * k, y * k, (x + bw) * k - 1, (y + bh) * k - 1], outline=c, width=2)
        label = f"{inst.category} {inst.score:.2f}"
        tx, ty = x * k + 2, max(0, y * k - 12)
        box = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill=c)
        draw.text((tx, ty), label, fill=(255, 255, 255), font=font)
    return pic
