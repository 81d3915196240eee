"""COCO-style annotations from word maps: threshold -> binary mask -> RLE and polygons (pure).

Following DAAM's segmentation protocol, a word's map is resized (bilinear) to the image,
divided by its own maximum, and thresholded at ``tau``. RLE is the exact mask (COCO's
uncompressed form: column-major run lengths starting with a run of zeros); polygons are the
outer boundaries of each connected region, in pixel coordinates (pixel (r, c) covers
x in [c, c+1], y in [r, r+1]), holes not subtracted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .render import resize_map


def mask_from_map(m: np.ndarray, size: tuple[int, int], tau: float = 0.4) -> np.ndarray:
    """Binary mask ``[height, width]`` bool: ``resize(m) / max >= tau`` (all False if the map is empty)."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    r = np.nan_to_num(resize_map(m, size), nan=0.0)
    peak = float(r.max()) if r.size else 0.0
    if peak <= 0.0:
        return np.zeros(size, dtype=bool)
    return (r / peak) >= tau


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE ``{"size": [h, w], "counts": [...]}`` of a bool mask."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    if flat.size == 0:
        return {"size": list(mask.shape), "counts": []}
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode` (for checks and for readers without pycocotools)."""
    h, w = rle["size"]
    vals = np.zeros(h * w, dtype=np.uint8)
    pos, val = 0, 0
    for c in rle["counts"]:
        vals[pos:pos + c] = val
        pos, val = pos + c, 1 - val
    return vals.reshape((h, w), order="F").astype(bool)


def polygons(mask: np.ndarray, min_area: float = 0.25) -> list[list[float]]:
    """Outer boundary of each region of ``mask`` as a flat ``[x0, y0, x1, y1, ...]`` list."""
    from contourpy import FillType, contour_generator  # noqa: PLC0415 (ships with matplotlib)

    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    gen = contour_generator(z=padded, fill_type=FillType.OuterCode, corner_mask=False)
    points, codes = gen.filled(0.5, 2.0)
    out: list[list[float]] = []
    for pts, code in zip(points, codes):
        starts = np.flatnonzero(code == 1)
        ring = pts[: starts[1] if len(starts) > 1 else len(pts)]  # first ring = outer boundary
        if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
            ring = ring[:-1]
        if len(ring) < 3:
            continue
        x, y = ring[:, 0] - 0.5, ring[:, 1] - 0.5  # padded centre coords -> pixel-edge coords
        if 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) < min_area:
            continue
        out.append([round(float(v), 2) for xy in zip(x, y) for v in xy])
    return out


def bbox(mask: np.ndarray) -> list[int]:
    """``[x, y, width, height]`` of the mask's set pixels ([0, 0, 0, 0] if empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def coco_document(words: list[str], maps: list[np.ndarray], size: tuple[int, int], tau: float,
                  file_name: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A COCO JSON dict: one image, one category per word, one annotation per non-empty mask.

    ``segmentation`` holds polygons (iscrowd 0); ``rle`` holds the exact mask.
    """
    h, w = size
    cats = [{"id": i + 1, "name": word, "supercategory": "word"} for i, word in enumerate(words)]
    anns = []
    for i, (_word, m) in enumerate(zip(words, maps)):
        mask = mask_from_map(m, size, tau)
        if not mask.any():
            continue
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": i + 1, "iscrowd": 0,
                     "segmentation": polygons(mask), "rle": rle_encode(mask), "area": int(mask.sum()),
                     "bbox": bbox(mask), "tau": tau})
    return {"info": {"description": "StepX Bridge word masks (final-step maps)", "tau": tau, **(info or {})},
            "images": [{"id": 1, "file_name": file_name, "width": int(w), "height": int(h)}],
            "categories": cats, "annotations": anns}
