"""COCO-style annotations from word maps: threshold -> binary mask -> RLE and polygons (pure).

Categories are the prompt's *objects* (``bridge.analysis.objects``: "two red apples" is the
category "red apple"), not its words. Following DAAM's segmentation protocol, each of an object's
words' maps (noun and attributes) is resized (bilinear) to the image and divided by its own
maximum; their mean is thresholded at ``tau``, and each connected region is one instance (at most
as many as the prompt asks for). RLE is the exact mask (COCO's
uncompressed form: column-major run lengths starting with a run of zeros); polygons are the
outer boundaries of each connected region, in pixel coordinates (pixel (r, c) covers
x in [c, c+1], y in [r, r+1]), holes not subtracted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np

from .render import resize_map

if TYPE_CHECKING:  # a stub-only alias: contourpy's filled() returns this shape for FillType.OuterCode
    from contourpy._contourpy import FillReturn_OuterCode

#: ``(category, mentions, count)``: each mention's word indices (noun first); count None = any
ObjectWords = tuple[str, Sequence[Sequence[int]], "int | None"]


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
    points, codes = cast("FillReturn_OuterCode", gen.filled(0.5, 2.0))
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


def object_mask(maps: Sequence[np.ndarray], size: tuple[int, int], tau: float) -> np.ndarray:
    """Bool ``[height, width]``: the mean of the maps' ``resize / max``, thresholded at ``tau``."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    norm = []
    for m in maps:
        r = np.nan_to_num(resize_map(m, size), nan=0.0)
        peak = float(r.max()) if r.size else 0.0
        norm.append(r / peak if peak > 0 else np.zeros(size))
    return np.mean(norm, axis=0) >= tau if norm else np.zeros(size, dtype=bool)


def coco_document(objects: Sequence[ObjectWords], maps: np.ndarray | Sequence[np.ndarray], size: tuple[int, int], tau: float,
                  file_name: str, info: dict[str, Any] | None = None, min_area: float = 0.002) -> dict[str, Any]:
    """A COCO JSON dict: one image, one category per object, one annotation per instance.

    ``objects``: ``(category, mentions, count)`` with each mention's word indices into ``maps``
    (``[words, h, w]``). A category's mentions share its evidence, and up to ``count`` of its
    connected regions (None = all) above ``min_area`` of the image become instances, largest first.
    ``segmentation`` holds polygons (iscrowd 0); ``rle`` holds the exact mask.
    """
    from bridge.analysis.objects.detect import label_components  # noqa: PLC0415
    import torch  # noqa: PLC0415

    h, w = size
    cats = [{"id": i + 1, "name": name, "supercategory": "object"} for i, (name, _, _) in enumerate(objects)]
    anns: list[dict[str, Any]] = []
    for i, (_name, mentions, count) in enumerate(objects):
        words = sorted({j for m in mentions for j in m})
        mask = object_mask([maps[j] for j in words], size, tau)
        labels, n = label_components(torch.from_numpy(mask))
        regions = sorted((labels.numpy() == k for k in range(1, n + 1)), key=lambda r: -int(r.sum()))
        regions = [r for r in regions if r.sum() >= min_area * h * w][: None if count is None else count]
        for r in regions:
            anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": i + 1, "iscrowd": 0,
                         "segmentation": polygons(r), "rle": rle_encode(r), "area": int(r.sum()),
                         "bbox": bbox(r), "tau": tau})
    return {"info": {"description": "StepX Bridge object masks (final-step maps)", "tau": tau, **(info or {})},
            "images": [{"id": 1, "file_name": file_name, "width": int(w), "height": int(h)}],
            "categories": cats, "annotations": anns}


def prompt_objects(prompt: str, run_words: list[str]) -> tuple[list[ObjectWords], list[str]]:
    """The prompt's objects as ``coco_document`` takes them, and the words the handler could not
    classify (needs the ``objects`` extra: the prompt handler's lexicon)."""
    try:
        from bridge.analysis.objects.annotate import object_word_indices  # noqa: PLC0415
        from bridge.analysis.objects.prompt import parse_prompt  # noqa: PLC0415

        parsed = parse_prompt(prompt)
    except ImportError as exc:
        raise ImportError(f"COCO export finds the prompt's objects with the prompt handler: pip install 'stepx-bridge[objects]' ({exc})") from exc
    return [(c.name, idx, c.count) for c, idx in object_word_indices(parsed, run_words)], parsed.unknown
