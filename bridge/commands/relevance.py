"""``stepx relevance --concepts CONCEPTS.toml --runs N -o weights/``: head relevance vectors.

Runs N random generations (Ray-distributed past one GPU), counts per head which concept its
image queries attend to most, and writes one ``CONCEPT.json`` per concept in the format
``serve --concepts`` and ``--head-weights`` read. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from bridge.commands.common import add_model_arguments

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("bridge.relevance")


def _workers(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes auto or a number ≥ 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"--workers takes auto or a number ≥ 0, got {n}")
    return n


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {n}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concepts", required=True, help="concept-set TOML file, or a shipped set: shapes, sd14")
    p.add_argument("--runs", type=_positive, required=True, help="number of random generations (a rerun with more resumes)")
    p.add_argument("-o", "--out", required=True, help="folder for one CONCEPT.json per concept (serve --concepts reads it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random generations (default 0): same seed, same counts")
    p.add_argument("--steps", type=_positive, default=None, help="denoising steps (default: the concept set's, else 20)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the concept set's, else 7.5)")
    p.add_argument("--width", type=_positive, default=None)
    p.add_argument("--height", type=_positive, default=None)
    p.add_argument("--top-k", type=_positive, default=None, help="write 0/1 weights of each concept's k most relevant heads instead of the HRV")
    g = p.add_argument_group("distribution (Ray)")
    g.add_argument("--workers", type=_workers, default=None, metavar="auto|N",
                   help="auto: Ray with one worker per GPU when there are ≥2, else this process; 0: this process; N: Ray with N workers")
    g.add_argument("--chunk", type=_positive, default=4, help="generations per task (default 4)")
    g.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    g.add_argument("--factory", default=None, metavar="MODULE:FUNCTION", help="build the pipeline with this function instead of --model (random-weight benchmarks)")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bridge.analysis.relevance.collect import GenerationPlan
    from bridge.analysis.relevance.concepts import load_concepts
    from bridge.analysis.relevance.distribute import ModelSpec, run_counts
    from bridge.analysis.relevance.store import RunStore, write_results

    concepts = load_concepts(args.concepts)
    gen = concepts.generation
    plan = GenerationPlan(seed=args.seed, steps=args.steps or int(gen.get("steps", 20)),
                          guidance=args.guidance if args.guidance is not None else float(gen.get("guidance", 7.5)),
                          width=args.width or gen.get("width"), height=args.height or gen.get("height"))
    spec = ModelSpec(args.model, args.device, None if args.dtype == "auto" else args.dtype, args.arch, args.model_config,
                     args.factory, args.threads)
    workers = args.workers
    if workers is None:
        workers = _gpu_count()
        workers = workers if workers >= 2 else 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = RunStore(out)
    store.open({"concepts": concepts.name, "concepts_sha256": concepts.digest, "model": spec.model, "factory": spec.factory,
                "dtype": spec.dtype, "arch": spec.arch, "plan": plan.as_dict()})
    layout_path = store.dir / "layout.json"
    shape = (len(concepts.concepts), _layout_heads(layout_path))
    done, _ = store.load(shape) if shape[1] else (set(), None)
    if shape[1] == 0 and any(store.dir.glob("chunk-*.npz")):
        raise ValueError(f"{store.dir} has chunks but no layout.json; remove the folder to start over")
    todo = [i for i in range(args.runs) if i not in done]
    bar = tqdm(total=args.runs, initial=args.runs - len(todo), unit="gen", desc=f"relevance {concepts.name}")

    def on_chunk(indices: list[int], counts: np.ndarray) -> None:
        store.save_chunk(indices, counts)
        bar.update(len(indices))

    stats = None
    if todo:
        _, layout, stats = run_counts(spec, concepts, plan, todo, workers=workers, chunk=args.chunk, on_chunk=on_chunk,
                                      ray_address=args.ray_address)
        if not layout_path.is_file():
            layout_path.write_text(json.dumps([list(x) for x in layout]))
    bar.close()
    layout = [tuple(x) for x in json.loads(layout_path.read_text())]
    done, total = store.load((len(concepts.concepts), sum(h for _, h in layout)))
    extra = sorted(done - set(range(args.runs)))
    previous = json.loads((store.dir / "summary.json").read_text()) if (store.dir / "summary.json").is_file() else {}
    runs_stats = list(previous.get("runs_stats", [])) + ([stats.as_dict()] if stats else [])  # every session's timings, kept
    summary = {"runs_stats": runs_stats, "runs": args.runs, "generations_counted": len(done), "plan": plan.as_dict(), "model": spec.model or spec.factory or "shapes",
               "concept_set": concepts.name}
    if extra:
        log.warning("the folder holds %d generations past --runs %d (an earlier, longer run); they are counted too", len(extra), args.runs)
    paths = write_results(out, concepts.concepts, total, layout, summary, top_k=args.top_k)
    from bridge.analysis.relevance.diagnose import hrv_figure
    from bridge.analysis.relevance.hrv import relevance_vectors
    import torch

    hrv_figure(relevance_vectors(torch.as_tensor(total)), list(concepts.concepts), layout, store.dir / "hrv.png")
    print(f"wrote {len(paths)} concept files to {out} ({len(done)} generations, {sum(h for _, h in layout)} heads in {len(layout)} layers)")
    if stats:
        print(f"{stats.generations} new generations in {stats.wall_s:.1f} s: {stats.generations_per_s:.3f} gen/s on {stats.workers} "
              f"{stats.backend} worker(s); startup {stats.startup_s:.1f} s, Ray scheduling+transfer {stats.ray_overhead_s:.2f} s")
    for c, row in zip(concepts.concepts, total):
        top = [i for i in sorted(range(len(row)), key=lambda i: -row[i])[:3] if row[i] > 0]
        print(f"  {c:>14}: {int(row.sum()):7d} wins; top heads {[_head_name(layout, i) for i in top]}")
    return 0


def _layout_heads(path: Path) -> int:
    return sum(h for _, h in json.loads(path.read_text())) if path.is_file() else 0


def _head_name(layout: Sequence[tuple[str, int]], i: int) -> str:
    for name, heads in layout:
        if i < heads:
            return f"{name}#{i}"
        i -= heads
    raise IndexError(i)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
