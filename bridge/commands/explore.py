"""``stepx explore``: the browser explorer (Generate & Inspect, Region-to-region, Live, Traces, …)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING

from bridge.explore.server import DEFAULT_PORT
from bridge.protocol import DEFAULT_HOST
from bridge.transport.zmq_sub import DEFAULT_SUB_ENDPOINT

if TYPE_CHECKING:  # the explorer's extra (starlette) is imported only when the command runs
    from bridge.explore.app import Explorer

log = logging.getLogger("stepx.explore")

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="*", help=".stepx traces to open at start (more can be opened in the page)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host other machines can reach")
    p.add_argument("--live", nargs="?", const=DEFAULT_SUB_ENDPOINT, default=None, metavar="ENDPOINT",
                   help="follow a running `stepx serve` in the Live tab through its ZeroMQ stream "
                        f"(default endpoint {DEFAULT_SUB_ENDPOINT})")
    p.add_argument("--concepts", default=None, metavar="DIR", help="folder of head-weight JSON files, one per concept (Head relevance tab)")
    p.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help="a model the page offers (repeatable; 'shapes' is always offered). On 127.0.0.1 the page may "
                        "also type any model the loader takes; with --allow-remote only these load")
    p.add_argument("--device", default="auto", help="device for models loaded by Generate: auto, cpu, cuda, mps")
    p.add_argument("--dtype", default="auto", help="auto (float16 on cuda, else float32), float32, float16, bfloat16")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")


def explorer_from_args(args: argparse.Namespace, live_source: str = "") -> Explorer:
    """The app state the options ask for, with the given traces already open."""
    from bridge.explore.app import Explorer
    from bridge.explore.engine import Engine
    from bridge.explore.runs import runs_from_trace

    allowed = list(args.model or []) if args.allow_remote else None
    ex = Explorer(Engine(args.device, None if args.dtype == "auto" else args.dtype, allowed=allowed), concepts_dir=args.concepts,
                  live_source=live_source, models=["shapes", *(m for m in args.model or [] if m != "shapes")])
    for path in args.traces:
        runs, problem = runs_from_trace(path)
        if problem:
            log.warning("%s is damaged: %s; opening its %d intact run(s)", path, problem, len(runs))
        for run in runs:
            ex.add(run)
    return ex


def run(args: argparse.Namespace) -> int:
    from bridge.explore.server import check_host

    check_host(args.host, args.allow_remote)  # before anything heavy is imported
    try:
        from bridge.explore.app import create_app
        from bridge.explore.live import ZmqFeed
        from bridge.explore.server import BackgroundServer
    except ImportError as exc:
        raise ImportError(f"the explorer needs its extra: pip install 'stepx-bridge[explorer]' ({exc})") from None
    import signal
    import threading

    ex = explorer_from_args(args, live_source=args.live or "")
    feed = ZmqFeed(ex.hub, args.live) if args.live else None
    try:
        server = BackgroundServer(create_app(ex), args.host, args.port).start()
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} (is the port taken? try --port 0 for any free port)") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"explorer": server.url, "live": args.live, "traces": list(args.traces)}), flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        while not stop.wait(0.5) and server.thread.is_alive():
            pass
    finally:
        server.stop()
        if feed is not None:
            feed.close()
    return 0
