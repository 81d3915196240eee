"""The traces a command works on: files named on the command line resolved to a rotated
recording's whole set, and a run picked by a number counted across every file of it.

One place for what ``stepx replay`` and ``stepx export`` agree on (docs/TRACE.md "Rotation"):
naming a rotated recording's first file (``show.stepx``) brings ``show.0001.stepx``, … with it,
``only_this_file`` keeps to the files named, several paths or a glob sort into recording order,
and ``.partial`` files are named in a note, never taken silently nor dropped silently.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from bridge.trace import TraceReader
from bridge.trace_files import base_of, recording_order, rotated_files, unfinished_files


def trace_paths(given: list[str], whole_recordings: bool = True, command: str = "stepx replay",
                verb: str = "played", err: TextIO | None = None) -> list[Path]:
    """The files to read: ``given`` in recording order; a rotated recording's first file (with
    ``whole_recordings``) brings the rest of that recording's files with it; no file twice.
    Each ``.partial`` file of such a recording is named in a note on ``err`` (stderr)."""
    err = err or sys.stderr
    out: list[Path] = []
    for text in given:
        p = Path(text)
        whole = whole_recordings and base_of(p) == p and p.is_file()
        more = rotated_files(p) if whole else [p]
        out += [q for q in more if q not in out]
        for left in unfinished_files(p) if whole else []:
            print(f"{command}: note: {left} is unfinished (cut off mid-run) and not {verb}; name it with "
                  f"--allow-partial to read what it holds", file=err)
    return recording_order(out)


def pick_runs(readers: list[TraceReader], run: int | str | None) -> list[tuple[TraceReader, int, int]]:
    """``(reader, run number in its file, run number across the set)`` for every run, or for the one
    ``run`` (a number counted across all the files, negative from the end, or a run_id);
    KeyError/IndexError naming the choices."""
    every = [(r, k) for r in readers for k in range(len(r.runs))]
    numbered = [(r, k, i) for i, (r, k) in enumerate(every)]
    if run is None:
        return numbered
    if isinstance(run, int):
        try:
            return [numbered[run]]
        except IndexError:
            raise IndexError(f"run #{run} not in the {len(readers)} file(s): they hold {len(every)} run(s)") from None
    for reader, k, i in numbered:
        if reader.runs[k].run_id == run:
            return [(reader, k, i)]
    raise KeyError(f"no run {run!r} in {', '.join(str(r.path) for r in readers)}")


def run_selector(text: str | None) -> int | str | None:
    """``--run``'s text: a whole number (counted across the set) or a run_id."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text
