"""What a user types or draws in the Region-to-region tab, turned into self-attention queries.

Pure functions. Image coordinates arrive in pixels of the shown image (x right, y down); grid
indices count cells of the run's ``H × W`` attention grid row-major (row 0 = top), as the
explorer guide's ``100``, ``0-1023``, ``0,1,2,3`` do. Every error names what was wrong and what
would be right, in one line.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.capture import Query

#: at most this many cells in one typed pixel set (a 128 × 128 grid)
MAX_CELLS = 16384


class RegionError(ValueError):
    """A region the user gave cannot be used; the message says why and what would work."""


def parse_indices(spec: str, cells: int) -> list[int]:
    """``"100"``, ``"0-1023"``, ``"0,1,2,3"`` or a mix (``"5, 10-12"``) → sorted unique cell
    indices in ``[0, cells)``."""
    text = (spec or "").strip()
    if not text:
        raise RegionError(f"no pixel index given; type one (100), a range (0-{cells - 1}) or a list (0,1,2,3)")
    out: set[int] = set()
    for part in re.split(r"[,\s]+", text):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise RegionError(f"{part!r} is not a pixel index or range; use 100, 0-{cells - 1} or 0,1,2,3")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo > hi:
            raise RegionError(f"range {part!r} runs backwards; write it low-high, e.g. {hi}-{lo}")
        if hi >= cells:
            raise RegionError(f"pixel index {hi} is out of range: this run's attention grid has {cells} cells (0-{cells - 1})")
        if hi - lo + 1 + len(out) > MAX_CELLS:
            raise RegionError(f"too many pixels (over {MAX_CELLS}); use a box or a polygon for large regions")
        out.update(range(lo, hi + 1))
    return sorted(out)


def indices_query(name: str, spec: str, grid: tuple[int, int]) -> Query:
    """A pixel-set query from typed grid indices (cell centres in normalised coordinates)."""
    h, w = grid
    idx = parse_indices(spec, h * w)
    points = [((i % w + 0.5) / w, (i // w + 0.5) / h) for i in idx]
    return Query.pixel(name, *points[0]) if len(points) == 1 else Query.pixels(name, points)


def parse_points(spec: str) -> list[tuple[float, float]]:
    """``"x1,y1 x2,y2 x3,y3"`` or ``"x1 y1 x2 y2 x3 y3"`` → ``[(x, y), ...]`` (image pixels)."""
    numbers = re.split(r"[,\s;]+", (spec or "").strip())
    numbers = [n for n in numbers if n]
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        bad = next(n for n in numbers if not _is_number(n))
        raise RegionError(f"{bad!r} is not a number; write the polygon as x1,y1 x2,y2 x3,y3") from None
    if len(values) % 2:
        raise RegionError(f"the polygon has {len(values)} numbers, an odd count; each point needs an x and a y")
    return list(zip(values[0::2], values[1::2]))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fraction(x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """Image pixel ``(x, y)`` → normalised ``(x, y)``; out of the image is an error."""
    h, w = size
    if not (0 <= x <= w and 0 <= y <= h):
        raise RegionError(f"pixel ({x:g}, {y:g}) is outside the {w}×{h} image (x in 0-{w}, y in 0-{h})")
    return min(x / w, 1.0), min(y / h, 1.0)


def query_from_request(body: dict[str, Any], image_size: tuple[int, int], grid: tuple[int, int]) -> Query:
    """The Query a region request asks for.

    ``body`` is one of ``{"kind": "pixels", "spec": "0-1023"}`` (grid indices),
    ``{"kind": "pixel" | "diffused", "x": .., "y": ..}``, ``{"kind": "box", "x0", "y0", "x1", "y1"}``,
    ``{"kind": "polygon", "spec": "x1,y1 x2,y2 ..."}`` or ``{"kind": "polygon", "points": [[x, y], ...]}``,
    coordinates in pixels of the ``image_size = (height, width)`` image.
    """
    kind = body.get("kind")
    try:
        if kind == "pixels":
            return indices_query("region", str(body.get("spec", "")), grid)
        if kind in ("pixel", "diffused"):
            x, y = _fraction(float(body["x"]), float(body["y"]), image_size)
            if kind == "pixel":
                return Query.pixel("region", x, y)
            iterations = int(body.get("iterations", 2))
            if not 1 <= iterations <= 8:
                raise RegionError(f"diffusion iterations must be 1-8, got {iterations}")
            return Query.diffused("region", x, y, iterations=iterations)
        if kind == "box":
            x0, y0 = _fraction(float(body["x0"]), float(body["y0"]), image_size)
            x1, y1 = _fraction(float(body["x1"]), float(body["y1"]), image_size)
            if x0 == x1 or y0 == y1:
                raise RegionError("the box has no area; drag from one corner to the opposite one")
            return Query.box("region", x0, y0, x1, y1)
        if kind == "polygon":
            raw = body.get("points")
            points = [(float(p[0]), float(p[1])) for p in raw] if raw is not None else parse_points(str(body.get("spec", "")))
            if len(points) < 3:
                raise RegionError(f"a polygon needs at least 3 points, got {len(points)}; click more points or type x1,y1 x2,y2 x3,y3")
            return Query.polygon("region", [_fraction(x, y, image_size) for x, y in points])
    except (KeyError, TypeError) as exc:
        raise RegionError(f"a {kind} region needs {exc} as a number") from None
    except RegionError:
        raise
    except ValueError as exc:  # Query's own checks, float() of text
        raise RegionError(str(exc)) from None
    raise RegionError(f"unknown region kind {kind!r}; expected pixels, pixel, box, polygon or diffused")
