"""Tie the pure pieces to files: one run -> overlays, GIFs, CSVs, plots, COCO JSON, manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.trace import TraceReader
from bridge.trace_set import pick_runs

from . import writers as W
from .coco import coco_document, prompt_objects
from .data import RunData, load_run, select_words
from .measures import MEASURES, SUMMARY, run_summary, step_table
from .plots import timeline_png
from .render import grey_canvas, overlay, resize_image

PLOTTED = ("mass", "entropy", "peak", "auc_so_far")


@dataclass
class ExportOptions:
    """What to export. Heat-map overlay PNGs are always written."""

    words: list[str] | None = None
    alpha: float = 0.5
    cmap: str = "inferno"
    gif: bool = False
    gif_fps: float = 8.0
    csv: bool = False
    plots: bool = False
    coco: bool = False
    tau: float = 0.4
    zip: bool = False


def frame_background(run: RunData, step: int, size: tuple[int, int]) -> np.ndarray:
    """The step's image, else the last earlier image, else grey; resized to ``size``."""
    img = run.image_at(step)
    return grey_canvas(size) if img is None else resize_image(img, size)


def export_run(run: RunData, out: Path, opts: ExportOptions) -> list[Path]:
    """Write every requested file for one run under ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    idx = select_words(run.words, opts.words)
    words = [run.words[i] for i in idx]
    size = run.canvas_size()
    files: list[Path] = []
    backgrounds = [frame_background(run, int(s), size) for s in run.steps]
    for i, word in zip(idx, words):
        name = W.slug(word, i)
        frames = []
        for t, s in enumerate(run.steps):
            frame = overlay(backgrounds[t], run.maps[t, i], opts.alpha, opts.cmap)
            files.append(W.write_png(out / "frames" / name / f"step_{int(s):03d}.png", frame))
            frames.append(frame)
        if opts.gif:
            files.append(W.write_gif(out / "gifs" / f"{name}.gif", frames, opts.gif_fps))
    if run.final_image is not None:
        files.append(W.write_png(out / "final.png", run.final_image))
    series = None if run.series is None else {k: v[:, idx] for k, v in run.series.items()}
    table = step_table(run.maps[:, idx], series)  # name -> [T, N]
    measures_from = "raw" if series is not None else "textures"
    if opts.csv:
        rows = [[run.run_id, int(s), word] + [float(table[m][t, j]) for m in MEASURES]
                for t, s in enumerate(run.steps) for j, word in enumerate(words)]
        files.append(W.write_csv(out / "measures.csv", ["run_id", "step", "word", *MEASURES], rows))
        summ = run_summary(table, run.steps, **_phase_settings(run.header))
        summary = [[run.run_id, word, *[summ[k][j].item() for k in SUMMARY], measures_from] for j, word in enumerate(words)]
        files.append(W.write_csv(out / "summary.csv", ["run_id", "word", *SUMMARY, "measures_from"], summary))
    if opts.plots:
        for m in PLOTTED:
            png = timeline_png(run.steps, table[m], words, m, run.phases)
            files.append(W.write_bytes(out / "plots" / f"{m}.png", png))
    if opts.coco:
        prompt = run.header.get("prompt") or " ".join(run.words)
        objects, unknown = prompt_objects(prompt, run.words)
        doc = coco_document(objects, run.maps[-1, : len(run.words)], size, opts.tau, "final.png" if run.final_image is not None else "",
                            {"run_id": run.run_id, "step": int(run.steps[-1]), "prompt": prompt, "unclassified_words": unknown})
        files.append(W.write_json(out / "coco.json", doc))
    manifest: dict[str, Any] = {
        "run_id": run.run_id, "prompt": run.header.get("prompt"), "words": words, "steps": run.steps.tolist(),
        "complete": run.ended, "measures_from": measures_from, "canvas": {"height": size[0], "width": size[1]}, "options": asdict(opts),
        "files": sorted(f.relative_to(out).as_posix() for f in files),
    }
    files.append(W.write_json(out / "export.json", manifest))
    return files


def _phase_settings(header: dict[str, Any]) -> dict[str, float]:
    """The run's stable_threshold / emergence_fraction if its header names them, else the defaults."""
    found = header.get("phases")
    phases: dict[str, Any] = found if isinstance(found, dict) else {}
    keys = ("stable_threshold", "emergence_fraction")
    return {k: float(phases[k]) for k in keys if isinstance(phases.get(k), (int, float))}


def export_trace(trace: TraceReader | str | Path, out: str | Path, opts: ExportOptions | None = None,
                 run: int | str | None = None) -> list[Path]:
    """Export one run (``run``) or every run of ``trace`` (an open reader, or a path opened here
    and refused if partial); with several runs each gets ``out/runNN_<id>/``. Default options:
    overlay PNGs only."""
    if not isinstance(trace, TraceReader):
        with TraceReader(trace) as reader:
            return export_trace(reader, out, opts, run)
    return export_set([trace], out, opts, run)


def run_folder(out: Path, number: int, run_id: str | None) -> Path:
    """``out/runNN_<id>``: NN is the run's number across the whole set (what ``--run`` takes), so
    two files' runs never share a folder, even with the same run_id."""
    return out / f"run{number:02d}_{W.slug(str(run_id or ''), 0)[3:]}"


def export_set(readers: list[TraceReader], out: str | Path, opts: ExportOptions | None = None,
               run: int | str | None = None) -> list[Path]:
    """Export every run of the files ``readers`` (a rotated recording's set, in recording order), or
    the one ``run`` (a number counted across the set, or a run_id). One run goes straight into
    ``out``; several get ``out/runNN_<id>/``. An earlier export in a target folder is refused
    before anything is written (FileExistsError): an export never writes over another."""
    out, opts = Path(out), opts or ExportOptions()
    picked = pick_runs(readers, run)
    if not picked:
        raise ValueError(f"no runs to export in {', '.join(str(r.path) for r in readers)}")
    targets = [(reader, k, out if len(picked) == 1 else run_folder(out, i, reader.runs[k].run_id))
               for reader, k, i in picked]
    taken = [t / "export.json" for _, _, t in targets] + ([out / "export.zip"] if opts.zip else [])
    for path in taken:
        if path.exists():
            raise FileExistsError(f"{path} is an earlier export: not written over; choose another output folder")
    files: list[Path] = []
    for reader, k, sub in targets:
        files += export_run(load_run(reader, k), sub, opts)
    if opts.zip:
        files.append(W.write_zip(out / "export.zip", out, files))
    return files

