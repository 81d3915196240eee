"""One run of a trace gathered into arrays for export (the I/O edge on the reading side)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.phases.timeline import SERIES

from bridge.trace import TraceReader


@dataclass
class RunData:
    """A run's maps and images, aligned by step.

    maps: ``[T, V, H, W]`` float32 (V = words + global view); steps: ``[T]`` step numbers;
    images: step -> uint8 ``[h, w, 3]`` (only steps that had an image packet); phases: ``[T]``.
    series: the raw-map measures the step packets carried (SERIES name -> ``[T, words]``), or
    None when some step lacks them (then the export computes them from the textures).
    """

    run_id: str | None
    header: dict[str, Any]
    words: list[str]
    steps: np.ndarray
    maps: np.ndarray
    phases: np.ndarray
    images: dict[int, np.ndarray] = field(default_factory=dict)
    final_image: np.ndarray | None = None
    ended: bool = True
    series: dict[str, np.ndarray] | None = None

    def image_at(self, step: int) -> np.ndarray | None:
        """The image of ``step``, else the last earlier one, else None."""
        earlier = [s for s in self.images if s <= step]
        return self.images[max(earlier)] if earlier else None

    def canvas_size(self) -> tuple[int, int]:
        """(height, width) of the export frames: the largest image, else the run's size, else the maps'."""
        if self.images or self.final_image is not None:
            shapes = [im.shape[:2] for im in self.images.values()]
            if self.final_image is not None:
                shapes.append(self.final_image.shape[:2])
            return max(shapes, key=lambda s: s[0] * s[1])
        h, w = self.header.get("height"), self.header.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            return h, w
        return int(self.maps.shape[2]), int(self.maps.shape[3])


def select_words(words: list[str], wanted: list[str] | None) -> list[int]:
    """Indices of ``wanted`` in the prompt's ``words`` (all words if None); exact match first,
    then case-insensitive. An unknown word raises ValueError listing the prompt's words."""
    if not wanted:
        return list(range(len(words)))
    out: list[int] = []
    for w in wanted:
        if w in words:
            out.append(words.index(w))
            continue
        folded = [x.casefold() for x in words]
        if w.casefold() in folded:
            out.append(folded.index(w.casefold()))
            continue
        raise ValueError(f"word {w!r} is not in the prompt; its words are: {', '.join(words)}")
    return list(dict.fromkeys(out))


def load_run(reader: TraceReader, run: int | str = 0) -> RunData:
    """Read one run's step maps (``textures``) and images from an open trace."""
    info = reader.run(run)
    words = list(info.header.get("words") or [])
    steps: list[int] = []
    maps: list[np.ndarray] = []  # each [words, h, w]
    phases: list[int] = []
    images: dict[int, np.ndarray] = {}  # step -> [H, W, 3] uint8
    final: np.ndarray | None = None
    rows: list[list[Any]] = []  # per step, the SERIES values of its header
    for pos in info.records:
        kind = reader.index[pos].kind
        if kind not in ("step", "image"):
            continue
        p = reader.read(pos)
        if kind == "step":
            tex = p.arrays.get("textures")
            if tex is None or tex.ndim != 3:
                continue
            if not words:
                words = list(p.header.get("words") or [])
            steps.append(int(p.header.get("step", len(steps))))
            maps.append(np.asarray(tex, dtype=np.float32))
            phases.append(int(p.header.get("phase") or 0))
            rows.append([p.header.get(name) for name in SERIES])
        else:
            img = p.arrays.get("image")
            if img is None or img.ndim != 3 or img.shape[2] < 3:
                continue
            img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
            images[int(p.header.get("step") or 0)] = img
            if p.header.get("final"):
                final = img
    if not maps:
        raise ValueError(f"run {info.run_id!r} in {reader.path} has no step packets with textures to export")
    shapes = {m.shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"run {info.run_id!r}: step maps change shape within the run: {sorted(shapes)}")
    if maps[0].shape[0] < len(words):
        raise ValueError(f"run {info.run_id!r}: textures hold {maps[0].shape[0]} maps for {len(words)} words")
    if final is None and images:
        final = images[max(images)]
    return RunData(info.run_id, dict(info.header), words, np.asarray(steps, dtype=np.int64), np.stack(maps),
                   np.asarray(phases, dtype=np.int64), images, final, info.ended, _series(rows, len(words)))


def _series(rows: list[list[Any]], n: int) -> dict[str, np.ndarray] | None:
    """SERIES name -> ``[T, n]`` from the step headers, None unless every step has every series
    as n numbers (None in a header, the first step's change, reads as NaN)."""
    try:
        arr = np.array([[[np.nan if v is None else float(v) for v in col] for col in row] for row in rows], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (len(rows), len(SERIES), n):
        return None
    return {name: arr[:, i] for i, name in enumerate(SERIES)}
