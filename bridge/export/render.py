"""Heat-map overlays as pure array functions (uint8 RGB, row 0 = top, like every map and image).

The blend is the preview's (shaders/overlay.frag): ``mix(image, colormap(map), alpha)``, with
the same colour maps (bridge.colormap mirrors shaders/colormap.glsl).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bridge.colormap import COLORMAPS, colormap

GREY = 128


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one map ``[H, W]`` to ``size = (height, width)``; float32 out."""
    m = np.asarray(m, dtype=np.float32)
    if m.shape == tuple(size):
        return m.copy()
    img = Image.fromarray(np.ascontiguousarray(m))
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image ``[h, w, 3]`` to ``size = (height, width)``."""
    if img.shape[:2] == tuple(size):
        return np.asarray(img, dtype=np.uint8)
    return np.asarray(Image.fromarray(np.asarray(img, np.uint8)).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def grey_canvas(size: tuple[int, int]) -> np.ndarray:
    """Mid-grey RGB background ``[height, width, 3]`` for steps that have no image yet."""
    return np.full((size[0], size[1], 3), GREY, dtype=np.uint8)


def heat_rgb(m: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Colour-mapped map ``[H, W]`` (values clipped to [0, 1]) -> float64 RGB in [0, 1] ``[H, W, 3]``."""
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colour map {cmap!r}; expected one of {', '.join(COLORMAPS)}")
    return colormap(np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0), cmap)


def overlay(image: np.ndarray, m: np.ndarray, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """``round((1 - alpha) * image + alpha * 255 * colormap(map))`` as uint8 ``[h, w, 3]``.

    ``m`` is resized (bilinear) to the image size first; ``alpha`` in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [h, w, 3] uint8, got shape {image.shape}")
    heat = heat_rgb(resize_map(m, image.shape[:2]), cmap) * 255.0
    out = (1.0 - alpha) * image.astype(np.float64) + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
