"""TITAN datasets: many runs annotated into one COCO dataset, written so nothing is lost.

Layout of ``DIR``::

    annotations.json        COCO: images, categories (objects, not words), annotations (RLE masks)
    images/000001.png       the generated (or recorded) final image
    traces/000001.stepx     its trace (generated runs), replayable with ``stepx replay``
    maps/000001.npz         word_maps [steps, words, h, w] f16, global_map [h, w], affinity [g·g, H, W]
    vis/000001.png          masks, boxes and labels over the image
    records/000001.json     the image's entry and its instances: written last, the commit point

Each file is written to a temporary name and renamed into place, and an image counts as done
only when its record exists, so an interrupted build resumes where it stopped and a finished
image is never redone or overwritten. ``annotations.json`` is rebuilt from the records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..files import atomic_write
from .annotate import Instance
from .evidence import Evidence




def stem(image_id: int) -> str:
    return f"{image_id:06d}"


class TitanDataset:
    """A TITAN dataset folder: what is done, and how to add one image."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for sub in ("images", "traces", "maps", "vis", "records"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def record_path(self, image_id: int) -> Path:
        return self.root / "records" / f"{stem(image_id)}.json"

    def trace_path(self, image_id: int) -> Path:
        return self.root / "traces" / f"{stem(image_id)}.stepx"

    def maps_path(self, image_id: int) -> Path:
        return self.root / "maps" / f"{stem(image_id)}.npz"

    def done(self, image_id: int, prompt: str) -> bool:
        """Whether the image is finished; a record for another prompt is an error (not overwritten)."""
        path = self.record_path(image_id)
        if not path.exists():
            return False
        had = json.loads(path.read_text())["image"]["prompt"]
        if had != prompt:
            raise ValueError(f"{path} holds image {image_id} for the prompt {had!r}, not {prompt!r}: "
                             "the prompt file changed; write to a new folder")
        return True

    def save_maps(self, image_id: int, ev: Evidence) -> Path:
        """The run's attention beside its image: per-step word maps, the global map, the affinity."""
        import io

        buf = io.BytesIO()
        arrays: dict[str, np.ndarray] = {"word_maps": ev.word_maps[:, : len(ev.words)].numpy().astype(np.float16),
                  "global_map": ev.global_map.numpy().astype(np.float32), "words": np.asarray(ev.words)}
        if ev.affinity is not None:
            arrays["affinity"] = ev.affinity.numpy().astype(np.float16)
        np.savez_compressed(buf, allow_pickle=False, **arrays)  # plain arrays: np.load reads them without pickle
        path = self.maps_path(image_id)
        atomic_write(path, buf.getvalue())
        return path

    def add(self, image_id: int, prompt: str, ev: Evidence, found: list[Instance], *, seed: int | None,
            trace: Path | None, unknown: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write one image: picture, maps, visualisation, then its record (the commit point)."""
        from PIL import Image

        from .visualise import render

        if ev.image is None:
            raise ValueError(f"image {image_id} ({prompt!r}) has no final image to annotate")
        s = stem(image_id)
        rel = lambda p: str(Path(p).relative_to(self.root)) if p is not None and Path(p).is_relative_to(self.root) else (str(p) if p else None)  # noqa: E731
        png = _png(Image.fromarray(ev.image[:, :, :3]))
        atomic_write(self.root / "images" / f"{s}.png", png)
        maps = self.save_maps(image_id, ev)
        atomic_write(self.root / "vis" / f"{s}.png", _png(render(ev.image, found)))
        h, w = ev.image.shape[:2]
        record = {
            "image": {"id": image_id, "file_name": f"images/{s}.png", "width": int(w), "height": int(h), "prompt": prompt,
                      "seed": seed, "trace": rel(trace), "maps": rel(maps), "visualisation": f"vis/{s}.png",
                      "unclassified_words": unknown, **(extra or {})},
            "instances": [i.to_json() for i in found],
        }
        atomic_write(self.record_path(image_id), json.dumps(record).encode())
        return record

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "records").glob("*.json"))]

    def write_coco(self, records: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
        """``annotations.json`` from the records: category ids by first appearance (image order)."""
        recs = sorted(self.records() if records is None else records, key=lambda r: r["image"]["id"])
        cats: dict[str, int] = {}
        anns: list[dict[str, Any]] = []
        for r in recs:
            for inst in r["instances"]:
                cid = cats.setdefault(inst["category"], len(cats) + 1)
                anns.append({"id": len(anns) + 1, "image_id": r["image"]["id"], "category_id": cid, "iscrowd": 0,
                             "segmentation": inst["segmentation"], "area": inst["area"], "bbox": inst["bbox"],
                             "score": inst["score"], "mentions": inst["mentions"], "method": inst["method"]})
        doc = {"info": {"description": "StepX Bridge TITAN dataset: objects found from attention maps",
                        "categories": "objects named by the prompts (attributes + singular noun), not words"},
               "images": [r["image"] for r in recs],
               "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in cats.items()],
               "annotations": anns}
        atomic_write(self.root / "annotations.json", json.dumps(doc).encode())
        return doc


def _png(img: Any) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
