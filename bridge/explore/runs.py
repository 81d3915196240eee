"""One run to inspect, generated here or read from a trace, and its renderings.

A run is its words, per-step word maps and per-step images. Images may be filled lazily (the
engine decodes a step's predicted clean latent with the model's VAE the first time it is
shown, then keeps it). Rendering goes through the exporters' pure functions
(``bridge.export.render``) so a map looks the same in the page, in a GIF and in Export All.

Global is DAAM's global heat map: the sum of every word's map (DAAM's ``compute_global_heat_map``
sums over the prompt's tokens), then scaled like any map.
"""

from __future__ import annotations

import io
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bridge.export import ExportOptions, RunData, export_run, heat_rgb
from bridge.export.render import grey_canvas, overlay, resize_image, resize_map
from bridge.export.writers import write_gif

GLOBAL = "Global"

#: step -> uint8 ``[h, w, 3]`` image of that step, or None where it cannot be made
ImageSource = Callable[[int], "np.ndarray | None"]


class InspectError(ValueError):
    """A request about a run that cannot be answered (unknown word, step out of range)."""


def scaled(m: np.ndarray) -> np.ndarray:
    """A map scaled to its own maximum (DAAM's per-map normalisation), float32 in [0, 1]."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0).clip(min=0.0)
    top = float(m.max()) if m.size else 0.0
    return m / top if top > 0 else np.zeros_like(m)


@dataclass
class InspectRun:
    """A run the explorer can show.

    maps: ``[T, words, H, W]`` float32 word maps (raw probabilities for a generated run, the
    recorded textures for a trace); steps: ``[T]`` step numbers; ``images`` is filled on demand
    by ``image_source`` (a VAE decode for a generated run) and may start with recorded images.
    """

    header: dict[str, Any]
    words: list[str]
    steps: np.ndarray
    maps: np.ndarray
    image_source: ImageSource | None = None
    images: dict[int, np.ndarray] = field(default_factory=dict)
    final_image: np.ndarray | None = None
    source: str = "generated"  # generated | trace
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    ended: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- lookups ---------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` of the attention maps."""
        return int(self.maps.shape[2]), int(self.maps.shape[3])

    def choices(self) -> list[str]:
        """What the word picker offers: Global, then the prompt's words (``word#2`` for repeats)."""
        seen: dict[str, int] = {}
        out = [GLOBAL]
        for w in self.words:
            seen[w.lower()] = seen.get(w.lower(), 0) + 1
            out.append(w if seen[w.lower()] == 1 else f"{w}#{seen[w.lower()]}")
        return out

    def word_index(self, word: str) -> int | None:
        """Index of a picker choice among the words; None for Global."""
        choices = self.choices()
        if word == GLOBAL or word.lower() == GLOBAL.lower():
            return None
        for i, c in enumerate(choices[1:]):
            if c == word:
                return i
        lowered = [c.lower() for c in choices[1:]]
        if word.lower() in lowered:
            return lowered.index(word.lower())
        raise InspectError(f"{word!r} is not a word of this prompt; choose one of: {', '.join(choices)}")

    def step_position(self, step: int) -> int:
        """Position in ``steps`` of step number ``step``."""
        hits = np.nonzero(self.steps == step)[0]
        if not len(hits):
            raise InspectError(f"step {step} is not in this run; its steps are {int(self.steps[0])}-{int(self.steps[-1])}")
        return int(hits[0])

    # --- maps and images ----------------------------------------------------------------------------
    def raw_map(self, word: str, step: int) -> np.ndarray:
        """``[H, W]``: the word's map at the step, or Global's (the sum over words)."""
        t = self.step_position(step)
        i = self.word_index(word)
        return self.maps[t].sum(0) if i is None else self.maps[t, i]

    def heat(self, word: str, step: int) -> np.ndarray:
        """``[H, W]`` in [0, 1]: the map scaled to its maximum."""
        return scaled(self.raw_map(word, step))

    def image(self, step: int) -> np.ndarray | None:
        """The step's image (decoded on first use, then kept), else the last earlier one."""
        t = self.step_position(step)
        with self._lock:
            if step not in self.images and self.image_source is not None:
                img = self.image_source(step)
                if img is not None:
                    self.images[step] = img
            earlier = [s for s in self.images if s <= int(self.steps[t])]
            return self.images[max(earlier)] if earlier else None

    def canvas(self) -> tuple[int, int]:
        """``(height, width)`` the page shows: the final image's, else the run's, else the maps'."""
        if self.final_image is not None:
            return self.final_image.shape[:2]
        h, w = self.header.get("height"), self.header.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            return h, w
        return self.grid

    def background(self, step: int) -> np.ndarray:
        img = self.image(step)
        return grey_canvas(self.canvas()) if img is None else resize_image(img, self.canvas())

    def heat_rgb(self, word: str, step: int, cmap: str = "inferno") -> np.ndarray:
        """uint8 ``[h, w, 3]``: the colour-mapped heat map at the canvas size (bilinear)."""
        m = resize_map(self.heat(word, step), self.canvas())
        return np.clip(np.rint(heat_rgb(m, cmap) * 255.0), 0, 255).astype(np.uint8)

    def overlay(self, word: str, step: int, alpha: float, cmap: str = "inferno") -> np.ndarray:
        return overlay(self.background(step), self.heat(word, step), alpha, cmap)

    # --- exports ------------------------------------------------------------------------------------
    def all_images(self) -> None:
        """Decode every step's image (exports need them all)."""
        for s in self.steps:
            self.image(int(s))

    def gif(self, word: str, alpha: float, fps: float = 4.0) -> bytes:
        """A looping GIF of the word's overlay over every step (the exporters' GIF writer)."""
        frames = [self.overlay(word, int(s), alpha) for s in self.steps]
        with tempfile.TemporaryDirectory(prefix="stepx-gif-") as d:
            return write_gif(Path(d) / "word.gif", frames, fps).read_bytes()

    def run_data(self) -> RunData:
        """This run as the exporters' RunData: the words' maps scaled per step, then Global."""
        self.all_images()
        words = self.choices()[1:] + [GLOBAL]
        t = len(self.steps)
        maps = np.empty((t, len(words), *self.grid), np.float32)  # [T, words + 1, H, W]
        for k in range(t):
            for i in range(len(self.words)):
                maps[k, i] = scaled(self.maps[k, i])
            maps[k, -1] = scaled(self.maps[k].sum(0))
        final = self.final_image if self.final_image is not None else (self.images[max(self.images)] if self.images else None)
        return RunData(self.header.get("run_id"), dict(self.header), words, self.steps.copy(), maps,
                       np.asarray(self.header.get("phases") or [0] * t, np.int64)[:t], dict(self.images), final, self.ended)

    def export_zip(self, alpha: float = 0.5) -> bytes:
        """Export All: every word/step overlay PNG, the CSVs, per-word GIFs, plots and COCO JSON,
        written by ``bridge.export.export_run`` and zipped by its writer."""
        from bridge.export.writers import write_zip

        opts = ExportOptions(alpha=alpha, gif=True, csv=True, plots=True, coco=True)
        with tempfile.TemporaryDirectory(prefix="stepx-export-") as d:
            root = Path(d) / "export"
            files = export_run(self.run_data(), root, opts)
            return write_zip(Path(d) / "export.zip", root, files).read_bytes()

    def summary(self) -> dict[str, Any]:
        """What the page needs to draw the controls for this run."""
        h, w = self.canvas()
        return {
            "id": self.id, "source": self.source, "prompt": self.header.get("prompt", ""), "words": self.choices(),
            "steps": [int(s) for s in self.steps], "width": w, "height": h, "grid": list(self.grid),
            "seed": self.header.get("seed"), "model": self.header.get("model"), "complete": self.ended,
            "regions": self.source == "generated",
            "images": ("each step's image: the model's VAE on that step's predicted clean latent" if self.source == "generated"
                       else "each step's image as recorded: a quick linear preview per step, the VAE decode at the end"),
        }


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def runs_from_trace(path: str | Path) -> tuple[list[InspectRun], str | None]:
    """Every run of a recorded trace, no model needed, and what was wrong with the file (None if
    nothing): a partial or damaged trace opens with its intact records, and the page says so."""
    from bridge.export import load_run
    from bridge.trace import TraceReader

    runs: list[InspectRun] = []
    with TraceReader(path, allow_partial=True) as reader:
        problem = reader.problem if reader.partial else None
        for info in reader.runs:
            try:
                data = load_run(reader, info.number)
            except ValueError:
                continue  # a run with no step maps (it ended before its first step)
            words = data.words
            header = {**data.header, "phases": data.phases.tolist()}
            runs.append(InspectRun(header, list(words), data.steps, data.maps[:, : len(words)], images=dict(data.images),
                                   final_image=data.final_image, source="trace", ended=data.ended))
    if not runs:
        raise ValueError(f"{Path(path).name} holds no run with step maps to inspect"
                         + (f" ({problem})" if problem else ""))
    return runs, problem

