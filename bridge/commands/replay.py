"""``stepx replay TRACE``: recorded Packets through the same fan-out and sinks, no model, no GPU.

Pacing: ``step`` packets are spaced ``1 / (fps * speed)`` seconds apart on a fixed schedule
(no drift); every other packet (run, image, timeline, end) goes out right after the packet
before it, so an image follows its step as it did live. A damaged trace is refused before
anything is sent; a partial one too, unless ``--allow-partial``.

Several files play one after another, in recording order (:mod:`bridge.trace_files`): the files
of a rotated recording (``--record-max-mb``) sort as they were written whatever order the shell
gave them in, and naming a rotated recording's first file (``show.stepx``) plays every file of
it that is on disk (``--only-this-file`` plays that file alone). ``--run`` counts runs across
all the files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Callable

from bridge.stream.fanout import FanOut
from bridge.stream.sinks import SinkError, add_sink_arguments, build_sinks
from bridge.trace import TraceError, TracePartialError, TraceReader
from bridge.trace_set import pick_runs, run_selector, trace_paths
from bridge.transport.zmq_pub import ZmqPublisher

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE", nargs="+",
                        help="trace file(s) written by --record or stepx record; a rotated recording's files play in "
                             "the order they were written (show.stepx alone plays show.0001.stepx, ... after it)")
    parser.add_argument("--only-this-file", action="store_true",
                        help="play only the files named, not the rest of a rotated recording")
    parser.add_argument("--fps", type=float, default=10.0, help="steps per second (default 10; 0 = as fast as possible)")
    parser.add_argument("--speed", type=float, default=1.0, help="multiplies --fps (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="play again from the start until interrupted")
    parser.add_argument("--start", type=int, default=None, metavar="STEP",
                        help="seek: start each run at this step (its run packet and latest image are sent first)")
    parser.add_argument("--run", default=None, metavar="RUN",
                        help="play one run only: its number (0-based) or run_id (default: every run in the file)")
    parser.add_argument("--delay", type=float, default=0.5, metavar="SECONDS",
                        help="wait after opening the outputs, before the first packet, so receivers that are "
                             "already running can (re)connect (default 0.5)")
    parser.add_argument("--wait-subscriber", type=float, default=0.0, metavar="SECONDS",
                        help="with a ZeroMQ output: before playing, wait up to SECONDS for a first subscriber "
                             "(TouchDesigner, stepx preview) to connect, then play at once; none by then: "
                             "play anyway, with a warning (default 0: don't wait)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="play a trace that stops early (crash mid-recording) instead of refusing it")
    add_sink_arguments(parser)


def _wait_subscriber(sinks: list, seconds: float) -> None:
    """``--wait-subscriber``: block until a ZeroMQ output has a subscriber, at most ``seconds``."""
    publishers = [s for s in sinks if isinstance(s, ZmqPublisher)]
    if seconds <= 0 or not publishers:
        return
    print(f"stepx replay: waiting up to {seconds:g} s for a subscriber on "
          f"{', '.join(p.endpoint for p in publishers)}", file=sys.stderr)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(p.wait_subscriber(min(0.1, max(0.0, deadline - time.monotonic()))) for p in publishers):
            return
    print(f"stepx replay: warning: no subscriber after {seconds:g} s; playing anyway", file=sys.stderr)


def step_interval(fps: float, speed: float) -> float:
    """Seconds between step packets (0 for no pacing); rejects nonsense with a clear error."""
    if speed <= 0:
        raise ValueError(f"--speed must be > 0, got {speed}")
    if fps < 0:
        raise ValueError(f"--fps must be >= 0 (0 = as fast as possible), got {fps}")
    return 0.0 if fps == 0 else 1.0 / (fps * speed)


def play(reader: TraceReader, positions: list[int], publish: Callable[[Any], None], interval: float,
         stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic) -> int:
    """Publish the packets at ``positions``, pacing step packets ``interval`` seconds apart.

    Returns the number of packets published (fewer if ``stop`` was set).
    """
    stop = stop or threading.Event()
    t0, n_steps, sent = clock(), 0, 0
    for pos in positions:
        if stop.is_set():
            break
        if reader.index[pos].kind == "step":
            if interval > 0 and n_steps:
                wait = t0 + n_steps * interval - clock()
                if wait > 0 and stop.wait(wait):
                    break
            elif n_steps == 0:
                t0 = clock()
            n_steps += 1
        publish(reader.read(pos))
        sent += 1
    return sent


def select(playlist: list[tuple[TraceReader, list[int]]], run: int | str | None,
           start: int | None) -> list[tuple[TraceReader, list[int]]]:
    """Each reader with the positions to play: every run, or the one ``run`` (a number counted
    across all the files, negative from the end, or a run_id); KeyError/IndexError naming the choices."""
    if run is None:
        return [(r, r.positions(None, start)) for r, _ in playlist]
    picked = pick_runs([r for r, _ in playlist], run)
    return [(reader, reader.positions(k, start)) for reader, k, _ in picked]


def run(args: argparse.Namespace) -> int:
    """Open and check the trace(s), open the sinks, play (looping if asked); exit code 0 / 2 / 130."""
    readers: list[TraceReader] = []
    try:
        interval = step_interval(args.fps, args.speed)
        for path in trace_paths(args.trace, not args.only_this_file):
            readers.append(TraceReader(path, allow_partial=args.allow_partial))
    except TracePartialError as exc:
        print(f"stepx replay: refusing to play a partial trace: {exc}", file=sys.stderr)
        return _closed(readers, 2)
    except (TraceError, ValueError, OSError) as exc:
        print(f"stepx replay: error: {exc}", file=sys.stderr)
        return _closed(readers, 2)
    try:
        return _play_all(args, readers, interval)
    finally:
        _closed(readers, 0)


def _closed(readers: list[TraceReader], code: int) -> int:
    for r in readers:
        r.close()
    return code


def _play_all(args: argparse.Namespace, readers: list[TraceReader], interval: float) -> int:
    for reader in readers:
        if reader.partial:
            print(f"stepx replay: warning: partial trace {reader.path} ({reader.problem}); playing the "
                  f"{len(reader.index)} complete records", file=sys.stderr)
    try:
        playlist = select([(r, []) for r in readers], run_selector(args.run), args.start)
    except (KeyError, IndexError) as exc:
        print(f"stepx replay: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    total = sum(len(pos) for _, pos in playlist)
    if not total:
        print(f"stepx replay: error: nothing to play in {', '.join(str(r.path) for r in readers)}", file=sys.stderr)
        return 2
    try:
        sinks = build_sinks(args, default_zmq=True)
    except SinkError as exc:
        print(f"stepx replay: error: {exc}", file=sys.stderr)
        return 2
    where = ", ".join(getattr(s, "endpoint", None) or s.name for s in sinks)
    files = str(readers[0].path) if len(readers) == 1 else f"{len(readers)} files ({readers[0].path} .. {readers[-1].path})"
    print(f"stepx replay: {files} ({sum(len(r.runs) for r in readers)} run(s), {total} packets) -> {where}",
          file=sys.stderr)
    stop = threading.Event()
    fan = FanOut(sinks)
    code, loops, sent = 0, 0, 0
    try:
        _wait_subscriber(sinks, args.wait_subscriber)
        stop.wait(max(0.0, args.delay))
        while True:
            for reader, positions in playlist:
                sent += play(reader, positions, fan.publish, interval, stop)
            loops += 1
            if not args.loop or stop.is_set() or stop.wait(interval):
                break  # (between passes: one step interval, so the loop point is not a jump cut)
    except KeyboardInterrupt:
        stop.set()
        code = 130
    finally:
        fan.close(timeout=5.0)
    print(f"stepx replay: sent {sent} packets in {loops} pass(es)", file=sys.stderr)
    failed = fan.recording().get("error")
    if failed:  # the recorder stopped (disk full, file removed): the copy is short, say so and fail
        print(f"stepx replay: error: the recording stopped: {failed}", file=sys.stderr)
        code = code or 1
    for name, st in fan.stats.items():
        if st.dropped or st.errors:
            print(f"stepx replay: sink {name}: {st.dropped} dropped (latest-wins), {st.errors} errors",
                  file=sys.stderr)
    return code
