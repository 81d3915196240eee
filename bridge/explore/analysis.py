"""The one seam between the explorer and the object-annotation package it shows.

Text-guided detection and TITAN come from ``bridge.analysis.objects`` (``annotate``, the
self-attention ``grid_queries`` it reads, ``Evidence``, its ``render`` picture and its dataset's COCO
writer). That package is optional here: when it is not importable in this install (or lacks
what the tabs call), the tabs say so plainly and show nothing made up. Every call into it goes
through this module, so a new version of its API touches only this file.

Head relevance needs no package here: ``stepx relevance -o DIR`` writes one head-weights JSON per
concept, the format ``--concepts DIR`` reads (``bridge.explore.app``).
"""

from __future__ import annotations

import base64
import importlib
import io
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

OBJECTS = "bridge.analysis.objects"
#: what the tabs call in it
NEEDED = ("annotate", "grid_queries", "Evidence")


class Unavailable(RuntimeError):
    """The package a tab needs is not usable in this install; the message says why."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason}


def availability() -> Availability:
    """Whether the objects package imports and offers what the tabs call."""
    try:
        module = importlib.import_module(OBJECTS)
    except ImportError as exc:
        return Availability(False, f"{OBJECTS} is not installed in this environment ({exc}); "
                                   f"these tabs show its results once it is (pip install 'stepx-bridge[objects]')")
    missing = [n for n in NEEDED if getattr(module, n, None) is None]
    if missing:
        return Availability(False, f"{OBJECTS} is installed but has no {', '.join(missing)}; this explorer cannot call it")
    return Availability(True, f"{OBJECTS} is available")


def status() -> dict[str, dict[str, Any]]:
    """Per tab: available or why not (the page shows the reason)."""
    got = availability().to_dict()
    return {"detect": got, "titan": got}


def _objects() -> Any:
    got = availability()
    if not got.available:
        raise Unavailable(got.reason)
    return importlib.import_module(OBJECTS)


def evidence(run: Any, engine: Any) -> Any:
    """The objects package's Evidence of an inspected run: a generated run is captured again with
    its self-attention grid (same seed, same image) so detection can refine word maps with it; a
    trace has word maps only (the package then says it used the ``wordmap`` method)."""
    import torch

    objects = _objects()
    image = run.final_image
    size = run.canvas()
    if run.source == "generated":
        from bridge.capture import CaptureConfig

        captured = engine.recapture(run, CaptureConfig(queries=objects.grid_queries()))
        return objects.from_capture(captured, image=image, size=size)
    return objects.Evidence(list(run.words), torch.from_numpy(np.ascontiguousarray(run.maps)), None, size, image, "trace")


def find(run: Any, engine: Any, text: str | None) -> dict[str, Any]:
    """Objects in ``run``: TITAN (``text`` None) finds every object of the prompt (``annotate``);
    text-guided detection finds the one a phrase of prompt words names, noun last as written
    ("red circle": ``detect_words(["circle", "red"])``). Returns the picture with masks and
    boxes, one record per instance, and the COCO document of this image."""
    objects = _objects()
    words = text.split() if text is not None else []
    if text is not None and not words:
        raise ValueError("type what to find, with words of the prompt (e.g. red circle)")
    ev = evidence(run, engine)
    if text is None:
        found = objects.annotate(ev)
    elif getattr(objects, "detect_words", None) is not None:
        found = objects.detect_words(ev, [words[-1], *words[:-1]])
    else:  # an older package: its prompt handler reads the phrase
        found = objects.annotate(ev, text)
    from bridge.analysis.objects.visualise import render

    image = ev.image if ev.image is not None else np.full((*ev.size, 3), 128, np.uint8)
    buf = io.BytesIO()
    render(image, found).save(buf, format="PNG")
    picture = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    records = [i.to_json() for i in found]
    return {
        "images": [{"src": picture, "label": f"{len(found)} object instance(s): " + (", ".join(sorted({i.category for i in found})) or "none found")}],
        "instances": [{k: v for k, v in r.items() if k != "segmentation"} for r in records],
        "coco": coco(run, records),
    }


def coco(run: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The COCO document of one image, written by the TITAN dataset's own writer (one format)."""
    from bridge.analysis.objects.dataset import TitanDataset

    h, w = run.canvas()
    record = {"image": {"id": 1, "file_name": "final.png", "width": int(w), "height": int(h), "prompt": run.header.get("prompt"),
                        "seed": run.header.get("seed")}, "instances": records}
    with tempfile.TemporaryDirectory(prefix="stepx-coco-") as d:
        return TitanDataset(d).write_coco([record])
