"""``stepx export TRACE -o DIR``: heat-map overlays per word and step, plus GIFs, CSV tables,
timeline plots, COCO masks and a ZIP on request (docs/EXPORT.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from bridge.colormap import COLORMAPS
from bridge.trace import TraceError, TracePartialError, TraceReader
from bridge.trace_set import run_selector, trace_paths

if TYPE_CHECKING:  # bridge.export pulls in torch and Pillow: imported when the command runs, so --help stays fast
    from bridge.export import ExportOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE", nargs="+",
                        help="trace file(s) (docs/TRACE.md); a rotated recording's first file (show.stepx) exports "
                             "every file of it (show.0001.stepx, ...), in the order they were written")
    parser.add_argument("--only-this-file", action="store_true",
                        help="export only the files named, not the rest of a rotated recording")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--words", nargs="+", default=None, metavar="WORD", help="only these prompt words (default: all)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map overlay alpha in [0, 1] (default 0.5)")
    parser.add_argument("--cmap", choices=sorted(COLORMAPS), default="inferno", help="colour map (default inferno)")
    parser.add_argument("--gif", action="store_true", help="one GIF per word over the steps")
    parser.add_argument("--gif-fps", type=float, default=8.0, help="GIF frames per second (default 8)")
    parser.add_argument("--csv", action="store_true", help="measures.csv (per step, per word) and summary.csv")
    parser.add_argument("--plots", action="store_true", help="timeline plots (PNG; needs matplotlib)")
    parser.add_argument("--coco", action="store_true", help="coco.json: final-step word masks, polygons and RLE")
    parser.add_argument("--tau", type=float, default=0.4, help="COCO mask threshold on map / max (default 0.4)")
    parser.add_argument("--zip", action="store_true", help="export.zip of everything written")
    parser.add_argument("--all", action="store_true", help="same as --gif --csv --plots --coco --zip")
    parser.add_argument("--run", default=None, metavar="RUN", help="one run only: number (0-based, counted across the files) or run_id")
    parser.add_argument("--allow-partial", action="store_true", help="export a trace that stops early")


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """ExportOptions from parsed arguments (``--all`` switches every extra on)."""
    from bridge.export import ExportOptions

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 0.0 <= args.tau <= 1.0:
        raise ValueError(f"--tau must be in [0, 1], got {args.tau}")
    if args.gif_fps <= 0:
        raise ValueError(f"--gif-fps must be > 0, got {args.gif_fps}")
    every = bool(args.all)
    return ExportOptions(words=args.words, alpha=args.alpha, cmap=args.cmap, gif=args.gif or every,
                         gif_fps=args.gif_fps, csv=args.csv or every, plots=args.plots or every,
                         coco=args.coco or every, tau=args.tau, zip=args.zip or every)


def run(args: argparse.Namespace) -> int:
    """Export every run of the trace set (or ``--run``); exit code 0, or 2 with a one-line reason on stderr."""
    from bridge.export import export_set

    readers: list[TraceReader] = []
    try:
        opts = options_from_args(args)
        for path in trace_paths(args.trace, not args.only_this_file, "stepx export", "exported"):
            readers.append(TraceReader(path, allow_partial=args.allow_partial))
        for reader in readers:
            if reader.partial:
                print(f"stepx export: warning: partial trace {reader.path} ({reader.problem})", file=sys.stderr)
        files = export_set(readers, Path(args.out), opts, run_selector(args.run))
    except TracePartialError as exc:
        print(f"stepx export: refusing a partial trace: {exc}", file=sys.stderr)
        return 2
    except (TraceError, ValueError, KeyError, IndexError, OSError, RuntimeError) as exc:
        print(f"stepx export: error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    finally:
        for reader in readers:
            reader.close()
    source = str(readers[0].path) if len(readers) == 1 else f"{len(readers)} files ({readers[0].path} .. {readers[-1].path})"
    print(f"stepx export: wrote {len(files)} files from {source} to {args.out}", file=sys.stderr)
    return 0
