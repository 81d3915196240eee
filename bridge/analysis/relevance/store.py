"""On disk: resumable partial counts, and the results in the format ``serve --concepts`` reads.

``OUT/`` gets one ``CONCEPT.json`` per concept, ``{"layer": [weight per head], ...}`` (the head
relevance vector, unit L2 norm over all heads; ``serve --concepts OUT`` and ``--head-weights``
read it). ``OUT/.relevance/`` (hidden, so ``serve`` never mistakes it for a concept) holds
``run.json`` (what was asked), one ``chunk-*.npz`` per finished chunk of generations (their
indices and integer counts; plain arrays, no pickle) and ``summary.json`` (counts, timings).
A rerun with the same settings skips the generations already counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..files import atomic_write
from .hrv import relevance_vectors, select_heads, split_by_layer

PARTIAL = ".relevance"




@dataclass
class RunStore:
    """The partial state of one relevance run in ``out/.relevance``."""

    out: Path

    @property
    def dir(self) -> Path:
        return self.out / PARTIAL

    def open(self, manifest: dict[str, Any]) -> None:
        """Start or resume: a folder holding another run's state is an error, never overwritten."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "run.json"
        if path.is_file():
            old = json.loads(path.read_text())
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            if diff:
                raise ValueError(f"{self.out} holds a relevance run with other settings ({', '.join(diff)} differ); "
                                 "resume it with the same settings or write to another folder with -o")
        else:
            atomic_write(path, json.dumps(manifest, indent=1).encode())

    def save_chunk(self, indices: Sequence[int], counts: np.ndarray) -> None:
        idx = np.asarray(sorted(indices), dtype=np.int64)
        import io

        buf = io.BytesIO()
        np.savez(buf, indices=idx, counts=counts.astype(np.int64))
        atomic_write(self.dir / f"chunk-{int(idx[0]):09d}-{len(idx)}.npz", buf.getvalue())

    def load(self, shape: tuple[int, int]) -> tuple[set[int], np.ndarray]:
        """Indices already counted and their summed counts; a chunk of another shape is an error."""
        done: set[int] = set()
        total = np.zeros(shape, dtype=np.int64)
        for f in sorted(self.dir.glob("chunk-*.npz")):
            with np.load(f, allow_pickle=False) as z:
                idx, counts = z["indices"], z["counts"]
            if counts.shape != shape:
                raise ValueError(f"{f}: counts of shape {counts.shape}, this run needs {shape}")
            overlap = done & set(idx.tolist())
            if overlap:
                raise ValueError(f"{f}: generations {sorted(overlap)[:5]} counted twice; remove the duplicate chunk")
            done |= set(idx.tolist())
            total += counts
        return done, total


def write_results(out: Path, concepts: Sequence[str], counts: np.ndarray, layout: Sequence[tuple[str, int]],
                  summary: dict[str, Any], top_k: int | None = None) -> list[Path]:
    """One ``CONCEPT.json`` per concept (the HRV, or 0/1 weights of its top-k heads) and ``.relevance/summary.json``."""
    vectors = relevance_vectors(torch.as_tensor(counts))  # [C, heads]
    paths = []
    for c, vec in zip(concepts, vectors):
        weights = select_heads(vec, top_k) if top_k else vec
        path = out / f"{c}.json"
        atomic_write(path, (json.dumps(split_by_layer(weights, layout), indent=1) + "\n").encode())
        paths.append(path)
    full = {**summary, "concepts": list(concepts), "layout": [list(x) for x in layout], "counts": counts.tolist()}
    atomic_write(out / PARTIAL / "summary.json", (json.dumps(full, indent=1) + "\n").encode())
    return paths


def read_summary(out: str | Path) -> dict[str, Any]:
    """``summary.json`` of a finished run (concepts, layout, counts, timings)."""
    path = Path(out) / PARTIAL / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `stepx relevance ... -o {out}` first")
    return json.loads(path.read_text())
