"""``stepx serve``: the daemon. Control in (ZeroMQ ROUTER and OSC), every step out to the sinks."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.protocol import DEFAULT_CONTROL_ENDPOINT, DEFAULT_HOST, OSC_CONTROL_PORT
from bridge.commands.common import (
    add_generation_arguments, add_model_arguments, add_stop_argument, apply_config_file, check_generation_args, given_flags,
    load_model, phase_config_from_args, request_factory, stop_on_signals,
)

if TYPE_CHECKING:  # (the explorer's modules need its extra: imported where it runs)
    from bridge.explore.live import LiveSink, ZmqFeed
    from bridge.explore.server import BackgroundServer
    from bridge.runner import Runner

log = logging.getLogger("stepx.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML file with any of these options; flags override it")
    p.add_argument("--objects", action="store_true", help="find each prompt's objects and stream them as an 'objects' packet at the run's end (docs/OBJECTS.md)")
    add_model_arguments(p)
    add_generation_arguments(p)
    add_stop_argument(p)
    from bridge.stream.sinks import add_sink_arguments

    add_sink_arguments(p)
    p.add_argument("--sink-process", choices=("auto", "on", "off"), default="auto",
                   help="run the outputs (encoding, sockets, the recorder) in a child process, so they never take "
                        "the model's thread's time (auto: on when the model runs on CUDA)")
    p.add_argument("--step-ring", choices=("off", "on"), default="on",
                   help="with the sink process: hand each step's maps and preview over through memory both processes map "
                        "(bridge/stream/ring.py; no thread of the model's process woken per step); off: through the packet "
                        "thread. On: 0.6-1.4 %% faster per SD 1.5 image in three H100 A/Bs (docs/BENCHMARKS.md, runs 21, 23)")
    c = p.add_argument_group("control")
    c.add_argument("--control", default=DEFAULT_CONTROL_ENDPOINT, help="ZeroMQ control endpoint (ROUTER; REQ or DEALER clients; '' = off)")
    c.add_argument("--osc-control", default=f"{DEFAULT_HOST}:{OSC_CONTROL_PORT}", help="OSC control HOST:PORT ('' = off)")
    c.add_argument("--allow-remote", action="store_true", help="allow binding control to non-local addresses (needs --token)")
    c.add_argument("--allow-remote-without-token", action="store_true",
                   help="with --allow-remote and no --token: let anyone who can reach the ports drive the daemon "
                        "(refused without this flag; docs/SECURITY.md)")
    c.add_argument("--token", default=None, help="shared token every control request must carry")
    i = p.add_argument_group("installation")
    i.add_argument("--prompt", default=None, help="generate this prompt at start")
    i.add_argument("--playlist", default=None, help="text file, one prompt per line, cycled forever")
    i.add_argument("--pause", type=float, default=2.0, help="seconds between playlist prompts")
    i.add_argument("--no-idle-replay", action="store_true", help="do not loop the last run while idle")
    i.add_argument("--replay-fps", type=float, default=10.0, help="frame rate of the idle replay")
    i.add_argument("--concepts", default=None, help="folder of head-weight JSON files, one per concept name")
    from bridge.explore.server import DEFAULT_PORT as EXPLORER_PORT

    i.add_argument("--explore", nargs="?", const=f"{DEFAULT_HOST}:{EXPLORER_PORT}", default=None, metavar="HOST:PORT",
                   help=f"also serve the browser explorer (default {DEFAULT_HOST}:{EXPLORER_PORT}): its Live tab follows this daemon step by step")
    i.add_argument("--run-for", type=float, default=None, help="stop after this many seconds (tests, timed shows)")


def _check_control_binds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse unsafe or malformed control endpoints before the model loads (one line, exit 2)."""
    from urllib.parse import urlsplit

    from bridge.transport.control import ControlError, check_bind

    hosts = []
    if args.control and args.control.startswith("tcp://"):
        hosts.append(urlsplit(args.control).hostname or "")
    if args.osc_control:
        host, _, port = args.osc_control.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            parser.error(f"--osc-control {args.osc_control!r}: expected HOST:PORT with a port 0..65535")
        hosts.append(host or "127.0.0.1")
    try:
        for host in hosts:
            check_bind(host, args.allow_remote, args.token, args.allow_remote_without_token)
    except ControlError as exc:
        parser.error(str(exc))


def read_playlist(path: str) -> list[str]:
    """The prompts of a playlist file (one a line; blank lines and ``#`` comments skipped), each
    checked by the request schema: ValueError naming the file and line."""
    from bridge.request import SchemaError, check_fields

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--playlist {path}: cannot read it: {exc}") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            check_fields({"prompt": text})
        except SchemaError as exc:
            raise ValueError(f"--playlist {path}, line {n}: {exc}") from None
        prompts.append(text)
    if not prompts:
        raise ValueError(f"--playlist {path} holds no prompt")
    return prompts


def phases_where(runner: Runner) -> str:
    """Where the daemon's runs compute their phases, for the start-up line."""
    if runner.phases_where() == "device":
        return "device"
    return "sink process" if runner.publisher.remote else "packet worker"


class _Explorer:
    """The explorer beside the daemon: its server thread, and what feeds its Live tab."""

    def __init__(self, server: BackgroundServer, sink: LiveSink | None, feed: ZmqFeed | None) -> None:
        """``sink`` feeds the Live tab from the daemon's own fan-out; ``feed`` from its ZeroMQ
        stream when the outputs run in the sink process (one of the two, the other None)."""
        self.server, self.sink, self.feed = server, sink, feed

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        self.server.stop()


def start_explorer(args: argparse.Namespace, outputs_in_child: bool) -> _Explorer:
    """Serve the explorer on ``args.explore``. Its Live tab is fed by a sink in the daemon's fan-out,
    or, when the outputs run in the sink process, by a subscriber to the daemon's ZeroMQ stream
    (published for it if no --zmq was asked for)."""
    try:
        from bridge.explore.app import Explorer, create_app
        from bridge.explore.engine import Engine
        from bridge.explore.live import LiveHub, LiveSink, ZmqFeed
        from bridge.explore.server import BackgroundServer, address
    except ImportError as exc:
        raise ImportError(f"--explore needs the explorer extra: pip install 'stepx-bridge[explorer]' ({exc})") from None
    from bridge.stream.sinks import DEFAULT_ZMQ

    host, port = address(args.explore, args.allow_remote)
    hub = LiveHub()
    sink = feed = None
    if outputs_in_child:
        args.zmq = args.zmq or DEFAULT_ZMQ
        source = args.zmq
    else:
        sink, source = LiveSink(hub), "this daemon's fan-out"
    engine = Engine(refuse="this explorer belongs to `stepx serve`: the model is the show's; follow it in the Live tab, "
                           "or run `stepx explore` (its own model) to generate and inspect")
    server = BackgroundServer(create_app(Explorer(engine, hub, args.concepts, live_source=source)), host, port).start()
    if outputs_in_child:
        feed = ZmqFeed(hub, args.zmq.replace("*", "127.0.0.1"))
    log.info("explorer on %s (live from %s)", server.url, source)
    print(json.dumps({"explorer": server.url}), flush=True)
    return _Explorer(server, sink, feed)


def run(args: argparse.Namespace) -> int:
    import threading
    from functools import partial

    from bridge.capture import load_head_weights
    from bridge.daemon import Daemon, DaemonOptions
    from bridge.stream.fanout import FanOut
    from bridge.stream.process import PacketProcess
    from bridge.stream.ring import SLOTS
    from bridge.stream.publisher import Publisher
    from bridge.runner import Publish, Runner, check_request, denoiser
    from bridge.stream.sinks import build_sinks, restart_options, sink_options
    from bridge.transport.control_osc import ControlOscServer
    from bridge.transport.control_zmq import ControlZmqServer

    parser = argparse.ArgumentParser(prog="stepx serve")
    args = apply_config_file(parser, given_flags(sys.argv[1:]), args, args.config)
    check_generation_args(args, args.prompt)
    _check_control_binds(parser, args)
    if args.explore:  # a bad address fails before the model loads
        from bridge.explore.server import address

        address(args.explore, args.allow_remote)
    from bridge.stream.sinks import check_record_door

    check_record_door(args)  # a full disk, before the model loads
    prompts = ([args.prompt] if args.prompt else []) + (read_playlist(args.playlist) if args.playlist else [])
    pipe, name = load_model(args)
    concepts = {}
    if args.concepts:
        concepts = {f.stem: load_head_weights(f) for f in sorted(Path(args.concepts).glob("*.json"))}
    defaults = request_factory(args, name)
    for prompt in prompts:  # focus words must be words of every prompt: refused now, not at 3 a.m.
        try:
            for warning in check_request(pipe, defaults(prompt), concepts):
                log.warning("%r: %s", prompt[:60], warning)
        except ValueError as exc:
            raise ValueError(f"prompt {prompt[:60]!r}: {exc}") from None
    on_cuda = next(denoiser(pipe).parameters()).device.type == "cuda"
    in_child = args.sink_process == "on" or (args.sink_process == "auto" and on_cuda)
    explorer = start_explorer(args, in_child) if args.explore else None
    fanout: PacketProcess | FanOut
    publish: Publisher | Publish
    if in_child:
        # with no output named, publish where `stepx preview` listens
        process = PacketProcess(partial(build_sinks, sink_options(args), default_zmq=True),
                                restart_sinks=partial(build_sinks, restart_options(args), default_zmq=True),
                                ring_slots=SLOTS if args.step_ring == "on" else 0)
        fanout, sink_names, publish = process, process.sink_names, process  # itself: a remote Publisher, it takes recipes
    else:
        sinks = build_sinks(args, default_zmq=True) + ([explorer.sink] if explorer is not None and explorer.sink is not None else [])
        fanout = FanOut(sinks)
        sink_names, publish = [s.name for s in sinks], fanout.publish
    runner = Runner(pipe, publish, name, image_every=args.image_every, phase_config=phase_config_from_args(args),
                    concepts=concepts, objects=args.objects)
    daemon = Daemon(runner, publish, DaemonOptions(idle_replay=not args.no_idle_replay, replay_fps=args.replay_fps, playlist_pause=args.pause, progress=sys.stderr.isatty(),
                                                         max_step_seconds=args.max_step_seconds),
                    recording=fanout.recording)
    base = defaults("")  # what a control request leaves out: serve's --steps, --guidance, … (prompt is required)
    door = dict(allow_remote=args.allow_remote, token=args.token,
                allow_unauthenticated=args.allow_remote_without_token, defaults=base)
    servers: list[ControlZmqServer | ControlOscServer] = []
    if args.control:
        servers.append(ControlZmqServer(daemon.handle, args.control, **door))
    if args.osc_control:
        host, _, port = args.osc_control.rpartition(":")
        servers.append(ControlOscServer(daemon.handle, host or "127.0.0.1", int(port), **door))

    if args.playlist:  # --prompt, if given too, plays first
        daemon.set_playlist([defaults(p) for p in prompts], loop=True)
    elif args.prompt:
        daemon.submit(defaults(args.prompt))

    def close_outputs() -> None:  # a forced exit still finalises what it can
        for s in servers:
            s.close()
        fanout.close(timeout=2.0)

    stop_on_signals(daemon.stop, grace=args.stop_grace, before_exit=close_outputs)
    timer = None
    if args.run_for:
        timer = threading.Timer(args.run_for, daemon.stop)
        timer.daemon = True  # a SIGTERM before it fires must end the process, not wait for it
        timer.start()
    log.info("serving %s; control %s, OSC control %s", name, args.control or "off", args.osc_control or "off")
    ring = isinstance(fanout, PacketProcess) and fanout.ring is not None
    print(json.dumps({"serving": name, "control": args.control, "osc_control": args.osc_control, "sinks": sink_names,
                      "phases": phases_where(runner), "step_ring": ring}), flush=True)
    try:
        daemon.serve_forever()
    finally:
        if timer is not None:
            timer.cancel()
        for s in servers:
            s.close()
        fanout.close()
        if explorer is not None:
            explorer.close()
        log.info("stopped; %d runs", daemon.runs_done)
    return 0
