"""``stepx record PROMPT -o TRACE``: one run with capture, recorded to a trace (no daemon).

A failed write is a failed command (exit 1, no success summary); SIGTERM or Ctrl-C cancels the
run within one step and finalises the trace with an ``end`` packet of status ``cancelled`` (exit
143 / 130), as the daemon does; an existing TRACE is refused unless ``--record-existing`` says
append or overwrite.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from pathlib import Path

from bridge.commands.common import (add_generation_arguments, add_model_arguments, add_stop_argument, check_generation_args,
                                    load_model, request_factory, stop_on_signals)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("-o", "--out", default=None, help="trace file to write (default: out/<prompt>.stepx)")
    p.add_argument("--export", default=None, metavar="DIR", help="then export heat-map overlays, per-word GIFs, CSV tables, timeline plots and COCO masks to DIR")
    p.add_argument("--objects", action="store_true", help="find the prompt's objects and record them as an 'objects' packet at the run's end (docs/OBJECTS.md)")
    add_model_arguments(p)
    add_generation_arguments(p)
    add_stop_argument(p)
    from bridge.stream.sinks import add_sink_arguments

    add_sink_arguments(p, rotation=False)  # one run, one file: nothing to rotate
    p.set_defaults(record_existing="refuse")  # one take, one file: a second take never replaces the first


def default_path(prompt: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "run"
    return Path("out") / f"{slug}.stepx"


def check_output_path(out: Path) -> None:
    """Make ``out``'s folder, or ValueError naming the part of the path that is in the way."""
    for parent in [out.parent, *out.parent.parents]:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write {out}: {parent} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from None
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; give a trace file name (e.g. {out / 'run.stepx'})")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bridge.stream.fanout import FanOut
    from bridge.protocol import Packet
    from bridge.runner import Runner, check_request
    from bridge.stream.sinks import SinkError, build_sinks, open_recorder

    check_generation_args(args, args.prompt)  # the rules a control request meets, before the model loads
    out = Path(args.out) if args.out else default_path(args.prompt)
    check_output_path(out)
    if args.export and (Path(args.export) / "export.json").exists():  # export never writes over an earlier one
        print(f"stepx record: error: {Path(args.export) / 'export.json'} is an earlier export: not written over; "
              f"choose another --export folder", file=sys.stderr)
        return 2
    try:  # before the model loads: a path that cannot be written fails in a second, not after a load
        writer = open_recorder(out, args.record_existing, min_free_mb=args.record_min_free_mb)
    except SinkError as exc:
        print(f"stepx record: error: {exc}", file=sys.stderr)
        return 2
    try:
        args.record = None  # the trace above is this command's own
        sinks = [writer, *build_sinks(args)]
        pipe, name = load_model(args)
        request = request_factory(args, name)(args.prompt)
        for warning in check_request(pipe, request):  # ValueError: a focus word that is not a word of the prompt
            print(f"stepx record: warning: {warning}", file=sys.stderr)
    except BaseException:
        writer.close()
        raise
    from bridge.budget import Budget, BudgetError

    try:
        Budget(pipe, args.max_step_seconds).check(request.width, request.height, request.guidance)
    except BudgetError as exc:
        writer.close()
        print(f"stepx record: {exc}", file=sys.stderr)
        return 2
    cancel = threading.Event()
    signalled = stop_on_signals(cancel.set, grace=args.stop_grace)
    bar = tqdm(total=args.steps, desc="denoising", unit="step", file=sys.stderr, disable=not sys.stderr.isatty())

    with FanOut(sinks) as fanout:
        def publish(packet: Packet) -> None:
            if packet.kind == "step":
                bar.update(1)
            fanout.publish(packet)

        runner = Runner(pipe, publish, name, image_every=args.image_every, objects=args.objects)  # the request carries the phase boundaries
        result = runner.run(request, cancel)
    bar.close()
    if writer.failed:
        print(f"stepx record: error: {writer.failed}", file=sys.stderr)
        return 1
    if result.status == "error":
        print(f"stepx record: the run failed: {result.error}", file=sys.stderr)
        return 1
    if signalled:
        print(f"stepx record: stopped by signal {signalled[0]} after {result.steps} steps; the trace is finalised "
              f"(end status cancelled): {out}", file=sys.stderr)
        return 128 + signalled[0]
    summary = {"trace": str(out), "run_id": result.run_id, "steps": result.steps, "seconds": round(result.seconds, 2),
               "words": result.run.words if result.run else []}
    if args.export:
        from bridge.export import ExportOptions, export_trace

        opts = ExportOptions(words=None, gif=True, csv=True, plots=True, coco=True, zip=False)
        try:
            files = export_trace(out, Path(args.export), opts)
        except (OSError, ValueError) as exc:  # the trace is written and kept; only the export failed
            print(f"stepx record: error: export to {args.export} failed ({exc}); the trace is kept: {out}", file=sys.stderr)
            return 1
        summary["export"] = {"folder": args.export, "files": len(files)}
    print(json.dumps(summary))
    return 0
