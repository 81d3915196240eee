"""The ``stepx`` command: one sub-command per job, each defined in its own module.

Each module named in COMMANDS exposes ``add_arguments(parser)`` and ``run(args) -> int``;
it is imported only when its command runs, so ``stepx --help`` stays fast and optional
extras stay optional.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "record": ("bridge.commands.record", "generate one image with capture and write a trace (no daemon)"),
    "serve": ("bridge.commands.serve", "run the generation daemon: control in, every step out to the sinks"),
    "replay": ("bridge.commands.replay", "play a recorded trace through the same sinks, no model or GPU needed"),
    "export": ("bridge.commands.export", "export a trace: heat-map PNGs, GIFs, CSV, timeline plots, ZIP"),
    "explore": ("bridge.commands.explore", "the browser explorer: generate and inspect, regions, live, traces"),
    "preview": ("bridge.commands.preview", "render the stream or a trace with the moderngl preview"),
    "bench": ("bridge.commands.bench", "benchmark capture overhead against plain diffusers in one process"),
    "relevance": ("bridge.commands.relevance", "head relevance vectors: which heads attend to which concept, over random generations"),
    "relevance-eval": ("bridge.commands.relevance_eval", "selective aggregation on the shapes world: all vs top-k vs bottom-k heads, ablation over k"),
    "relevance-diagnose": ("bridge.commands.relevance_diagnose", "one word's map under each concept's most relevant heads, side by side (PNG)"),
    "study": ("bridge.commands.study", "when does each element emerge? per-word/phrase timings over templates and seeds, with CIs"),
    "titan": ("bridge.commands.titan", "TITAN: generate (or read traces), find the prompts' objects, write a COCO dataset"),
    "eval-objects": ("bridge.commands.eval_objects", "score object detection from attention against the shapes world's ground truth"),
    "eval-shapes": ("bridge.commands.eval_shapes", "evaluate the embedded shapes model: adherence and attention IoU"),
    "train-shapes": ("bridge.commands.train_shapes", "train the embedded shapes model (GPU)"),
    "doctor": ("bridge.commands.doctor", "what this machine can do, and the fix for each thing that is missing"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    known, rest = parser.parse_known_args(argv)
    full = argparse.ArgumentParser(prog="stepx", description="StepX Bridge: live per-step attention from diffusion models.")
    full.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = full.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in rest if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = full.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(2, max(known.verbose, args.verbose) + 1 if args.command else 0)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.command:
        full.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT (128 + 2)
        if max(known.verbose, args.verbose) >= 2:
            raise
        print(f"stepx {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        # what a user got wrong (a path, a model, a word, an extra not installed): say it plainly;
        # -vv shows the traceback
        if max(known.verbose, args.verbose) >= 2:
            raise
        print(f"stepx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
