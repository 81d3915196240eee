"""``stepx titan PROMPTS.txt -o DIR``: generate (or read traces), find each prompt's objects, write
a COCO dataset (docs/OBJECTS.md). One prompt a line; a line naming a ``.stepx`` file annotates that
recorded run instead; blank lines and ``#`` comments are skipped. Resumable: rerun the same command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.commands.common import add_generation_arguments, add_model_arguments, load_model, request_factory

if TYPE_CHECKING:  # imported when the command runs, not when the CLI starts
    from bridge.analysis.objects import Evidence
    from bridge.request import GenerateParams

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", help="text file: one prompt (or .stepx trace path) a line")
    p.add_argument("-o", "--out", required=True, help="dataset folder (created; an existing one is resumed)")
    p.add_argument("--method", choices=("guided", "wordmap"), default="guided",
                   help="guided: word maps refined by self-attention (default); wordmap: word maps alone")
    p.add_argument("--grid", type=int, default=8, help="self-attention grid queries a side (default 8)")
    add_model_arguments(p)
    add_generation_arguments(p)


def read_lines(path: Path) -> list[str]:
    """The prompt file's entries (stripped; blank lines and ``#`` comments dropped)."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    out = [ln for ln in lines if ln and not ln.startswith("#")]
    if not out:
        raise ValueError(f"{path} holds no prompts (one prompt a line; # starts a comment)")
    return out


def _trace_entry(line: str, base: Path) -> Path | None:
    if not line.endswith(".stepx"):
        return None
    p = Path(line)
    p = p if p.is_absolute() else (base / p if (base / p).exists() else p)
    if not p.is_file():
        raise FileNotFoundError(f"trace {line} named in the prompt file does not exist")
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bridge.analysis.objects import annotate, from_trace, parse_prompt
    from bridge.analysis.objects.dataset import TitanDataset

    src = Path(args.prompts)
    entries = read_lines(src)
    ds = TitanDataset(args.out)
    base_seed = 0 if args.seed is None else args.seed  # fixed seeds: a resumed build makes the same images
    make_request = request_factory(args)
    model: tuple[Any, str] | None = None  # (pipe, name), loaded for the first prompt that needs generating
    failed: list[str] = []
    bar = tqdm(list(enumerate(entries, start=1)), desc="titan", unit="image", file=sys.stderr)
    for image_id, line in bar:
        trace_in = _trace_entry(line, src.parent)
        seed = None if trace_in else base_seed + image_id - 1
        if trace_in is not None:
            ev = from_trace(trace_in)
            prompt = _trace_prompt(trace_in) or " ".join(ev.words)
            trace = trace_in
        else:
            prompt, trace = line, ds.trace_path(image_id)
        if ds.done(image_id, prompt):
            continue  # finished before: never redone, never overwritten
        bar.set_postfix_str(prompt[:40])
        if trace_in is None:
            if trace.exists():  # generated before an interruption: annotate it, never overwrite it
                maps = ds.maps_path(image_id)
                ev = from_trace(trace)
                if maps.exists():
                    import numpy as np
                    import torch

                    with np.load(maps) as z:
                        if "affinity" in z:
                            ev.affinity = torch.from_numpy(z["affinity"].astype(np.float32))
            else:
                if model is None:
                    model = load_model(args)
                generated = _generate(*model, make_request(prompt), seed, trace, args.grid)
                if generated is None:
                    failed.append(prompt)
                    continue
                ev = generated
        try:
            found = annotate(ev, prompt, method=args.method)
            ds.add(image_id, prompt, ev, found, seed=seed, trace=trace, unknown=parse_prompt(prompt).unknown)
        except ValueError as exc:  # one bad entry (a trace without an image, words it lacks) is reported, the rest go on
            log.error("image %d (%s): %s", image_id, line, exc)
            failed.append(line)
            continue
        ds.write_coco()
    doc = ds.write_coco()
    print(json.dumps({"dataset": str(ds.root), "images": len(doc["images"]), "categories": len(doc["categories"]),
                      "annotations": len(doc["annotations"]), "failed": failed}))
    return 1 if failed else 0


def _trace_prompt(path: Path) -> str | None:
    from bridge.trace import TraceReader

    with TraceReader(path) as reader:
        return reader.run(0).header.get("prompt")


def _generate(pipe: Any, name: str, req: GenerateParams, seed: int | None, trace: Path, grid: int) -> Evidence | None:
    """One run through the Runner into ``trace``, its attention kept by an EvidenceRecorder."""
    from bridge.analysis.objects import EvidenceRecorder
    from bridge.analysis.objects.evidence import detection_config
    from bridge.stream.fanout import FanOut
    from bridge.runner import Runner
    from bridge.trace import TraceWriter

    rec = EvidenceRecorder()
    with FanOut([TraceWriter(trace)]) as fanout:
        runner = Runner(pipe, fanout.publish, name, image_every=0, capture_config=detection_config(pipe, grid),
                        observer=rec)
        result = runner.run(dataclasses.replace(req, seed=seed))
    if result.status != "done" or result.image is None:
        log.error("generation failed for %r: %s", req.prompt, result.error)
        return None
    return rec.evidence(result.image)
