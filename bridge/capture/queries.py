"""Self-attention queries (DAAM-I2I): which image regions' attention to show.

A query is given in normalised image coordinates (x to the right, y down, both in [0, 1]) so
it means the same at every layer resolution. At a layer of ``h × w`` cells it becomes a set of
query rows with weights; only those rows of the self-attention are ever computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

Kind = Literal["pixel", "pixels", "box", "polygon", "diffused"]


@dataclass(frozen=True)
class Query:
    """A named self-attention query. Build with the class methods, e.g. ``Query.box("sky", 0, 0, 1, .3)``.

    ``diffused`` starts from one pixel and, ``iterations`` times, replaces the query weights by
    the attention map they produce (keeping cells above ``keep`` × max), so attention spreads
    over the region the pixel belongs to.
    """

    name: str
    kind: Kind
    points: tuple[tuple[float, float], ...]
    iterations: int = 0
    keep: float = 0.5

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError(f"query {self.name!r} has no points")
        for x, y in self.points:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"query {self.name!r}: point ({x}, {y}) is outside [0, 1]²; coordinates are fractions of width and height")
        need = {"pixel": 1, "box": 2, "diffused": 1}.get(self.kind)
        if need is not None and len(self.points) != need:
            raise ValueError(f"a {self.kind} query takes {need} point(s), got {len(self.points)}")
        if self.kind == "polygon" and len(self.points) < 3:
            raise ValueError("a polygon query takes at least 3 points")

    @classmethod
    def pixel(cls, name: str, x: float, y: float) -> "Query":
        return cls(name, "pixel", ((x, y),))

    @classmethod
    def pixels(cls, name: str, points: Sequence[tuple[float, float]]) -> "Query":
        return cls(name, "pixels", tuple((float(x), float(y)) for x, y in points))

    @classmethod
    def box(cls, name: str, x0: float, y0: float, x1: float, y1: float) -> "Query":
        return cls(name, "box", ((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))))

    @classmethod
    def polygon(cls, name: str, points: Sequence[tuple[float, float]]) -> "Query":
        return cls(name, "polygon", tuple((float(x), float(y)) for x, y in points))

    @classmethod
    def diffused(cls, name: str, x: float, y: float, iterations: int = 2, keep: float = 0.5) -> "Query":
        if iterations < 1:
            raise ValueError("a diffused query needs at least 1 iteration")
        return cls(name, "diffused", ((x, y),), iterations, keep)

    def cell_weights(self, h: int, w: int) -> torch.Tensor:
        """``[h * w]`` float32 weights over the cells of an ``h × w`` grid (row-major, row 0 = top), summing to 1."""
        cx = (np.arange(w) + 0.5) / w  # cell centres
        cy = (np.arange(h) + 0.5) / h
        gx, gy = np.meshgrid(cx, cy)  # [h, w]
        if self.kind in ("pixel", "diffused", "pixels"):
            mask = np.zeros((h, w), bool)
            for x, y in self.points:
                mask[min(int(y * h), h - 1), min(int(x * w), w - 1)] = True
        elif self.kind == "box":
            (x0, y0), (x1, y1) = self.points
            mask = (gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1)
        else:
            mask = _inside_polygon(gx, gy, np.asarray(self.points))
        if not mask.any():  # region smaller than a cell: the cell nearest its centre
            x, y = np.asarray(self.points).mean(0)
            mask[min(int(y * h), h - 1), min(int(x * w), w - 1)] = True
        weights = mask.astype(np.float32).reshape(-1)
        return torch.from_numpy(weights / weights.sum())


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points (x, y) lie inside the closed polygon ``poly [n, 2]``."""
    inside = np.zeros(x.shape, bool)
    xs, ys = poly[:, 0], poly[:, 1]
    for i in range(len(poly)):
        x0, y0, x1, y1 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xint)
    return inside
