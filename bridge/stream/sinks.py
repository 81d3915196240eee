"""Sink options shared by ``stepx serve``, ``record`` and ``replay``, and the factory behind them.

Why one place: every command that produces Packets offers the same outputs with the same
flags, and a missing platform transport (Spout on Linux, ...) gets the same clear error
naming the outputs that do work here.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any, Callable, TypedDict, TypeVar
from urllib.parse import urlsplit

from bridge.protocol import DEFAULT_DATA_ENDPOINT, OSC_OUT_PORT
from bridge.stream.fanout import Sink
from bridge.stream.recorder import Recorder, check_free
from bridge.trace import EXISTING

log = logging.getLogger(__name__)

#: ``--zmq`` with no value publishes here (the PUB port of docs/PROTOCOL.md).
DEFAULT_ZMQ = DEFAULT_DATA_ENDPOINT
DEFAULT_OSC_PORT = OSC_OUT_PORT

#: flag -> (module, class, platforms where it can work, pip extra)
PLATFORM_SINKS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "spout": ("bridge.transport.textures", "SpoutSender", ("win32",), "stepx-bridge[spout]"),
    "syphon": ("bridge.transport.textures", "SyphonSender", ("darwin",), "stepx-bridge[syphon]"),
    "ndi": ("bridge.transport.textures", "NdiSender", ("win32", "darwin", "linux"), "stepx-bridge[ndi]"),
}


class SinkError(ValueError):
    """A sink option that cannot work here; the message says why and what does work."""


def host_port(text: str) -> tuple[str, int]:
    """argparse type for ``HOST:PORT`` (``PORT`` alone means 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        p = int(port)
        if not 0 < p < 65536:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_OSC_PORT})") from None
    return host or "127.0.0.1", p


#: ``--record-min-free-mb`` default: a disk with less free is refused at the door (a few SD 1.5 runs)
DEFAULT_MIN_FREE_MB = 64.0


_Number = TypeVar("_Number", int, float)


def positive(kind: type[_Number]) -> Callable[[str], _Number]:
    """argparse type: a number of ``kind`` above 0."""
    def parse(text: str) -> _Number:
        v: _Number | None
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not v > 0 or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number above 0")
        return v
    return parse


def add_sink_arguments(parser: argparse.ArgumentParser, rotation: bool = True) -> None:
    """Add the output options (a group titled 'outputs') to ``parser``; ``rotation``: also the
    size cap and rotation of ``--record`` (a command that records many runs)."""
    g = parser.add_argument_group("outputs")
    g.add_argument("--zmq", nargs="?", const=DEFAULT_ZMQ, default=None, metavar="ENDPOINT",
                   help=f"publish on ZeroMQ (default endpoint {DEFAULT_ZMQ})")
    g.add_argument("--zmq-encoding", choices=("float16", "float32", "uint8"), default="float16",
                   help="wire encoding of float arrays on ZeroMQ (default float16)")
    g.add_argument("--osc", type=host_port, default=None, metavar="HOST:PORT",
                   help=f"send OSC over UDP (e.g. 127.0.0.1:{DEFAULT_OSC_PORT})")
    g.add_argument("--record", default=None, metavar="PATH", help="record a trace to PATH (docs/TRACE.md)")
    g.add_argument("--record-existing", choices=EXISTING, default="append",
                   help="when the trace file already exists: append the new runs, refuse (exit with an error), "
                        "or overwrite it (the only choice that replaces a recording); default: %(default)s")
    g.add_argument("--record-min-free-mb", type=float, default=DEFAULT_MIN_FREE_MB, metavar="MB",
                   help="refuse to start recording (and stop before a new file) when the disk has less free "
                        "(default %(default)s; 0 = no check)")
    if rotation:
        g.add_argument("--record-max-mb", type=positive(float), default=None, metavar="MB",
                       help="cap each trace file: at a run boundary, continue in the next numbered file "
                            "(show.stepx, show.0001.stepx, ...) when one more run would pass MB; a run is never split")
        g.add_argument("--record-max-runs", type=positive(int), default=None, metavar="N",
                       help="at most N runs per trace file, then continue in the next numbered file")
        g.add_argument("--record-keep", type=positive(int), default=None, metavar="K",
                       help="with rotation: delete the oldest files of the recording beyond K (off by default: "
                            "nothing recorded is deleted unless you ask)")
    g.add_argument("--spout", default=None, metavar="NAME", help="share textures over Spout (Windows)")
    g.add_argument("--syphon", default=None, metavar="NAME", help="share textures over Syphon (macOS)")
    g.add_argument("--ndi", default=None, metavar="NAME", help="send textures as an NDI source")
    g.add_argument("--bind-any", action="store_true",
                   help="let ZeroMQ bind on every network interface (reachable from other machines)")


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def zmq_endpoint(endpoint: str, bind_any: bool) -> str:
    """Check a ZeroMQ bind endpoint: loopback unless ``bind_any`` (which binds ``*``)."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return endpoint  # ipc:// and inproc:// never leave the machine
    host = parts.hostname or ""
    port = parts.netloc.rpartition(":")[2]
    if not port:
        raise SinkError(f"ZeroMQ endpoint {endpoint!r} has no port; e.g. {DEFAULT_ZMQ}")
    if bind_any:
        log.warning("--bind-any: the ZeroMQ stream on port %s is reachable from other machines on the network", port)
        return f"tcp://*:{port}"
    if host == "*" or not _loopback(host):
        raise SinkError(f"refusing to bind ZeroMQ to {endpoint!r}: it is not a loopback address; "
                        f"use tcp://127.0.0.1:{port}, or pass --bind-any to publish to the network")
    return endpoint


def _platform_sink(kind: str, name: str) -> Sink:
    module, cls, platforms, extra = PLATFORM_SINKS[kind]
    works = ["--zmq", "--osc", "--record"] + [f"--{k}" for k, v in PLATFORM_SINKS.items()
                                              if sys.platform in v[2] and k != kind]
    if sys.platform not in platforms:
        raise SinkError(f"--{kind} does not work on {sys.platform} (only on {', '.join(platforms)}); "
                        f"outputs that can work here: {', '.join(works)}")
    try:
        mod = importlib.import_module(module)
        factory = getattr(mod, cls)
    except (ImportError, AttributeError) as exc:
        raise SinkError(f"--{kind} is not available: {exc} (install {extra}); "
                        f"outputs that work here: {', '.join(works)}") from None
    return factory(name)


#: the attributes of parsed arguments that build_sinks reads
SINK_OPTIONS = ("zmq", "zmq_encoding", "osc", "record", "record_existing", "record_max_mb", "record_max_runs",
                "record_keep", "record_min_free_mb", "bind_any", *PLATFORM_SINKS)


def sink_options(args: Any) -> argparse.Namespace:
    """Only the output options of ``args``: a small picklable Namespace, so the sinks can be
    built in another process (``PacketProcess(partial(build_sinks, sink_options(args)))``)."""
    return argparse.Namespace(**{k: getattr(args, k) for k in SINK_OPTIONS if hasattr(args, k)})


def restart_options(args: argparse.Namespace) -> argparse.Namespace:
    """``sink_options`` for sinks that replace ones that died: the recording is continued (a
    finished trace is appended to; one cut off mid-run is kept aside by TraceWriter), never
    started again over what was recorded."""
    return argparse.Namespace(**{**vars(sink_options(args)), "record_existing": "append"})


def _check_number(flag: str, value: Any, kind: type, allow_zero: bool = False) -> None:
    """SinkError unless ``value`` is None or a finite number of ``kind`` above 0 (or 0 if allowed):
    a config file's value arrives unparsed."""
    if value is None:
        return
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or value != value or value in (float("inf"), float("-inf")) or value < 0 or (value == 0 and not allow_zero):
        want = "a whole number" if kind is int else "a number"
        raise SinkError(f"{flag} = {value!r}: expected {want} {'of 0 or more' if allow_zero else 'above 0'}")


class RecordingLimits(TypedDict):
    """The rotation and free-space keywords of :func:`open_recorder` (MB, runs, files, MB)."""

    max_mb: float | None
    max_runs: int | None
    keep: int | None
    min_free_mb: float


def recording_limits(args: Any) -> RecordingLimits:
    """The rotation and free-space options of ``args`` as :func:`open_recorder`'s keywords, checked."""
    limits: RecordingLimits = {
        "max_mb": getattr(args, "record_max_mb", None), "max_runs": getattr(args, "record_max_runs", None),
        "keep": getattr(args, "record_keep", None), "min_free_mb": getattr(args, "record_min_free_mb", DEFAULT_MIN_FREE_MB)}
    _check_limits(**limits)
    return limits


def _check_limits(max_mb: Any, max_runs: Any, keep: Any, min_free_mb: Any) -> None:
    _check_number("--record-max-mb", max_mb, float)
    _check_number("--record-max-runs", max_runs, int)
    _check_number("--record-keep", keep, int)
    _check_number("--record-min-free-mb", min_free_mb, float, allow_zero=True)
    if keep is not None and max_mb is None and max_runs is None:
        raise SinkError("--record-keep needs rotation: add --record-max-mb or --record-max-runs")


def open_recorder(path: str | Path, existing: str, *, max_mb: float | None = None, max_runs: int | None = None,
                  keep: int | None = None, min_free_mb: float = DEFAULT_MIN_FREE_MB) -> Recorder:
    """A :class:`~bridge.stream.recorder.Recorder` at ``path`` (rotating when ``max_mb`` or
    ``max_runs`` is given); an existing file handled as ``existing`` says (never destroyed unless
    it says ``overwrite``); what stops it (an existing file under ``refuse``, a damaged trace to
    append to, a path under a file, a full disk) is a one-line :class:`SinkError`."""
    from bridge.trace import TraceError  # noqa: PLC0415

    _check_limits(max_mb, max_runs, keep, min_free_mb)
    try:
        return Recorder(path, existing=existing, max_bytes=None if max_mb is None else int(max_mb * 2**20),
                        max_runs=max_runs, keep=keep, min_free=int(min_free_mb * 2**20))
    except FileExistsError as exc:
        raise SinkError(f"{exc} (--record-existing append|overwrite)") from None
    except TraceError as exc:
        raise SinkError(f"{exc}; record to another path, or pass --record-existing overwrite") from None
    except OSError as exc:
        raise SinkError(f"cannot record to {path}: {exc.strerror or exc}") from None


def check_record_door(args: Any) -> None:
    """The recording checks that need no model: ``--record-keep`` without rotation, a disk under
    ``--record-min-free-mb``. SinkError (one line) so ``stepx serve`` refuses before the model loads."""
    path = getattr(args, "record", None)
    if not path:
        return
    limits = recording_limits(args)
    try:
        check_free(Path(path), int(limits["min_free_mb"] * 2**20))
    except OSError as exc:
        raise SinkError(f"cannot record to {path}: {exc.strerror or exc}") from None


def build_sinks(args: Any, *, default_zmq: bool = False) -> list[Sink]:
    """The sinks that ``args`` (from :func:`add_sink_arguments`) ask for, opened and ready.

    With ``default_zmq`` and no output chosen, publish on ZeroMQ at the default endpoint.
    If one sink fails to open, the ones already opened are closed before the error is raised.
    """
    from bridge.transport.osc_out import OscSender  # noqa: PLC0415
    from bridge.transport.zmq_pub import ZmqPublisher  # noqa: PLC0415

    zmq_ep = getattr(args, "zmq", None)
    chosen = [zmq_ep, getattr(args, "osc", None), getattr(args, "record", None)] + \
        [getattr(args, k, None) for k in PLATFORM_SINKS]
    if default_zmq and not any(c is not None for c in chosen):
        zmq_ep = DEFAULT_ZMQ
    sinks: list[Sink] = []
    try:
        if zmq_ep is not None:
            import zmq  # noqa: PLC0415

            ep = zmq_endpoint(zmq_ep, bool(getattr(args, "bind_any", False)))
            try:
                sinks.append(ZmqPublisher(ep, encoding=getattr(args, "zmq_encoding", "float16")))
            except zmq.ZMQError as exc:
                raise SinkError(f"cannot bind ZeroMQ to {ep}: {exc} (another stepx on that port?)") from None
        if getattr(args, "osc", None) is not None:
            # a flag arrives parsed; a config file's `osc = "HOST:PORT"` arrives as the string
            host, port = host_port(args.osc) if isinstance(args.osc, str) else args.osc
            sinks.append(OscSender(host, port))
        if getattr(args, "record", None):
            sinks.append(open_recorder(args.record, getattr(args, "record_existing", "append"), **recording_limits(args)))
        for kind in PLATFORM_SINKS:
            if getattr(args, kind, None):
                sinks.append(_platform_sink(kind, getattr(args, kind)))
    except BaseException:
        for s in sinks:
            try:
                s.close()
            except Exception as exc:  # closing is best effort; the original error matters
                log.debug("closing %s after a failed start: %r", s.name, exc)
        raise
    return sinks
