"""Options shared by the commands that run a model (record, serve, bench), and TOML config files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="diffusers folder, hub id, .safetensors file, 'tiny' (random weights), 'shapes-free' (the embedded ungrounded checkpoint); default: the embedded shapes model")
    g.add_argument("--arch", default="auto", choices=["auto", "sd", "sdxl"], help="architecture of a single-file checkpoint")
    g.add_argument("--model-config", default=None, metavar="DIR", help="diffusers folder (or hub id) of the same architecture as a single-file --model; needed offline (default for shapes-architecture files: the embedded shapes folder)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", help="auto (float16 on cuda, else float32), float32, float16, bfloat16")
    add_threads_argument(g)


def add_threads_argument(g: Any) -> None:
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: on a CPU, the CPUs not busy with other work at start, at least 1; on a GPU, torch's)")


#: generation options derived from the request schema: schema field -> CLI flag (the same names,
#: types and ranges as a control request; ``--prompt``/the positional prompt is checked the same way).
CLI_FIELDS = {"steps": "--steps", "seed": "--seed", "guidance": "--guidance", "negative_prompt": "--negative",
              "focus": "--focus", "phase_boundaries": "--phase-boundaries", "width": "--width", "height": "--height"}


def schema_type(name: str) -> Callable[[str], Any]:
    """An argparse ``type`` that parses one command-line word and checks it by the schema's rule
    for ``name`` (a bad value is argparse's one-line usage error, exit 2)."""
    from bridge.request import FIELDS, SchemaError

    f = FIELDS[name]

    def parse(text: str) -> Any:
        value: Any = text
        if f.kind == "int":
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected {f.rule()}") from None
        elif f.kind in ("float", "pair"):
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if f.kind in ("int", "float", "text"):
            try:
                return f.check(value)
            except SchemaError as exc:
                raise argparse.ArgumentTypeError(str(exc).replace(f"'{name}'", CLI_FIELDS.get(name, name))) from None
        return value  # list kinds: each item here, the whole list in check_generation_args

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    from bridge.request import DEFAULT_STEPS, FIELDS

    def helps(name: str, extra: str = "") -> str:
        return f"{FIELDS[name].help}: {FIELDS[name].rule()}{extra}"

    g = p.add_argument_group("generation")
    g.add_argument("--steps", type=schema_type("steps"), default=DEFAULT_STEPS, help=helps("steps", f" (default {DEFAULT_STEPS})"))
    g.add_argument("--seed", type=schema_type("seed"), default=None, help=helps("seed"))
    g.add_argument("--guidance", type=schema_type("guidance"), default=None,
                   help=helps("guidance", " (default: the model's: 4.0 for the embedded model, else 7.5)"))
    g.add_argument("--negative", type=schema_type("negative_prompt"), default="", help=helps("negative_prompt"))
    g.add_argument("--focus", nargs="*", default=[], help=helps("focus"))
    g.add_argument("--phase-boundaries", type=schema_type("phase_boundaries"), nargs=2, default=None, metavar=("A", "B"),
                   help=helps("phase_boundaries", " (default 0.2 0.6)"))
    g.add_argument("--width", type=schema_type("width"), default=None, help=helps("width", " (default: the model's)"))
    g.add_argument("--height", type=schema_type("height"), default=None, help=helps("height", " (default: the model's)"))
    g.add_argument("--image-every", type=int, default=1, help="publish a quick step image every N steps (0 = final only)")
    g.add_argument("--head-weights", default=None, help="JSON file of head weights {layer: [w per head]} (selective aggregation)")
    g.add_argument("--max-step-seconds", type=float, default=30.0, metavar="S",
                   help="refuse a request predicted to take longer than S seconds per step on this machine (a cancel "
                        "or SIGTERM answers within one step; default 30; see docs/RELIABILITY.md)")


def check_generation_args(args: argparse.Namespace, prompt: str | None) -> None:
    """The door check for a command's generation options, by the rules a control request meets
    (a config file can set any of them, so they are checked again here): ValueError on the first
    bad one (``stepx`` prints it as one line, exit 2), before any model is loaded."""
    from bridge.request import SchemaError, check_fields

    fields: dict[str, Any] = {name: getattr(args, dest.lstrip("-").replace("-", "_"), None)
                              for name, dest in CLI_FIELDS.items()}
    if prompt is not None:
        fields["prompt"] = prompt
    try:
        check_fields({k: v for k, v in fields.items() if v is not None and v != []})
    except SchemaError as exc:
        msg = str(exc)
        for name, flag in CLI_FIELDS.items():
            msg = msg.replace(f"'{name}'", flag)
        raise ValueError(msg) from None
    if getattr(args, "image_every", 0) < 0:
        raise ValueError("--image-every must be >= 0")
    if not getattr(args, "stop_grace", STOP_GRACE) > 0:  # NaN too
        raise ValueError("--stop-grace must be a number of seconds > 0")


def apply_config_file(p: argparse.ArgumentParser, argv_flags: set[str], args: argparse.Namespace, path: str | None) -> argparse.Namespace:
    """Fill ``args`` from a TOML file; flags given on the command line win.

    Keys are the long option names with ``_`` or ``-`` (``image_every = 2``).
    """
    if not path:
        return args
    try:
        data: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        p.error(f"config file {path} does not exist")
    except tomllib.TOMLDecodeError as exc:
        p.error(f"config file {path} is not valid TOML: {exc}")
    known = vars(args)
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known:
            p.error(f"config file {path}: unknown key {key!r}; known keys: {', '.join(sorted(k for k in known if not k.startswith('_')))}")
        if dest not in argv_flags:
            setattr(args, dest, value)
    return args


def given_flags(argv: list[str]) -> set[str]:
    """Destinations of the long flags present on the command line."""
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def load_model(args: argparse.Namespace) -> tuple[Any, str]:
    """The pipeline the model options name: ``(pipe, name)``; a device that is not here is a
    ValueError (one line from ``stepx``), checked before anything loads. Sets torch's CPU threads
    (``--threads``, else the default for the model's device: bridge/threads.py). The objects
    alive once it is loaded are taken out of the collector's reach (bridge/heap.py): no
    collection walks the model's half a million objects mid-run."""
    from bridge.heap import freeze_heap
    from bridge.models.loading import load_pipeline, pick_device
    from bridge.runner import denoiser
    from bridge.threads import configure_threads

    pick_device(args.device)
    pipe, name = load_pipeline(args.model, args.device, None if args.dtype == "auto" else args.dtype, args.arch,
                               config=args.model_config)
    configure_threads(args.threads, next(denoiser(pipe).parameters()).device)
    freeze_heap()
    return pipe, name


def phase_config_from_args(args: argparse.Namespace) -> Any:
    """The PhaseConfig the generation options ask for (default boundaries 0.2, 0.6)."""
    from bridge.phases import PhaseConfig

    return PhaseConfig(boundaries=tuple(args.phase_boundaries)) if args.phase_boundaries else PhaseConfig()


def request_factory(args: argparse.Namespace, model_name: str = "") -> Callable[[str], Any]:
    """``prompt -> Request`` with the generation options' settings (head weights read once); no
    ``--guidance`` means the model's default (``default_guidance(model_name)``)."""
    from bridge.capture import load_head_weights
    from bridge.models.loading import default_guidance
    from bridge.runner import Request

    head_weights = load_head_weights(args.head_weights) if args.head_weights else None
    guidance = args.guidance if args.guidance is not None else default_guidance(model_name)

    def make(prompt: str) -> Request:
        return Request(prompt=prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps,
                       guidance=guidance, focus=list(args.focus),
                       phase_boundaries=tuple(args.phase_boundaries) if args.phase_boundaries else None,
                       head_weights=head_weights, width=getattr(args, "width", None), height=getattr(args, "height", None))

    return make


#: seconds a command may take to stop cleanly after SIGTERM / Ctrl-C before it is ended anyway
STOP_GRACE = 5.0


def add_stop_argument(p: argparse.ArgumentParser) -> None:
    """``--stop-grace``: how long a stop may take before the process ends anyway (stop_on_signals)."""
    p.add_argument("--stop-grace", type=float, default=STOP_GRACE, metavar="S",
                   help=f"after SIGTERM or Ctrl-C, end the process anyway if it is still running S seconds later "
                        f"(default {STOP_GRACE:.0f}; a recording cut off so stays .partial; docs/RELIABILITY.md)")


def stop_on_signals(stop: Callable[[], None], grace: float = STOP_GRACE,
                    before_exit: Callable[[], None] | None = None) -> list[int]:
    """On SIGTERM or SIGINT call ``stop()`` (cancel within one step, finalise, return normally).

    Why a deadline too: one step of an oversized request can outlast any patience, and a
    supervisor's SIGTERM must be honoured within seconds whatever is running. If the process is
    still here ``grace`` seconds after the first signal, or a second signal comes, it logs what
    it is doing, runs ``before_exit`` (best effort: close what can be closed) and exits with
    ``128 + signal``; a recording cut off so stays ``PATH.partial`` (docs/RELIABILITY.md).
    Returns the list the caught signal numbers are appended to (empty: none came).
    """
    import logging
    import os
    import signal
    import threading

    log = logging.getLogger("stepx")
    caught: list[int] = []

    def force(signum: int) -> None:
        log.error("still running %.0fs after signal %d: exiting now (an unfinished recording stays .partial)",
                  grace, signum)
        if before_exit is not None:
            try:
                before_exit()
            except Exception as exc:  # best effort: the exit matters more
                log.error("closing before exit failed: %r", exc)
        os._exit(128 + signum)

    def handler(signum: int, _frame: object) -> None:
        if caught:  # a second signal: the user means it
            force(signum)
        caught.append(signum)
        log.warning("signal %d: stopping (cancel within one step, then finalise)", signum)
        timer = threading.Timer(grace, force, args=(signum,))
        timer.daemon = True
        timer.start()
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return caught
