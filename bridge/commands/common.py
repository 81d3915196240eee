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
    g.add_argument("--model", default=None, help="diffusers folder, hub id, .safetensors file, 'tiny' (random weights); default: the embedded shapes model")
    g.add_argument("--arch", default="auto", choices=["auto", "sd", "sdxl"], help="architecture of a single-file checkpoint")
    g.add_argument("--model-config", default=None, metavar="DIR", help="diffusers folder (or hub id) of the same architecture as a single-file --model; needed offline (default for shapes-architecture files: the embedded shapes folder)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", help="auto (float16 on cuda, else float32), float32, float16, bfloat16")


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale; 1 = off")
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--focus", nargs="*", default=[], help="focus words (must be words of the prompt)")
    g.add_argument("--phase-boundaries", type=float, nargs=2, default=None, metavar=("A", "B"), help="phase boundaries as fractions (default 0.2 0.6)")
    g.add_argument("--image-every", type=int, default=1, help="publish a quick step image every N steps (0 = final only)")
    g.add_argument("--head-weights", default=None, help="JSON file of head weights {layer: [w per head]} (selective aggregation)")
    g.add_argument("--max-step-seconds", type=float, default=30.0, metavar="S",
                   help="refuse a request predicted to take longer than S seconds per step on this machine (a cancel "
                        "or SIGTERM answers within one step; default 30; see docs/RELIABILITY.md)")


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
    """The pipeline the model options name: ``(pipe, name)``."""
    from bridge.models.loading import load_pipeline

    return load_pipeline(args.model, args.device, None if args.dtype == "auto" else args.dtype, args.arch,
                         config=args.model_config)


def phase_config_from_args(args: argparse.Namespace) -> Any:
    """The PhaseConfig the generation options ask for (default boundaries 0.2, 0.6)."""
    from bridge.phases import PhaseConfig

    return PhaseConfig(boundaries=tuple(args.phase_boundaries)) if args.phase_boundaries else PhaseConfig()


def request_factory(args: argparse.Namespace) -> Callable[[str], Any]:
    """``prompt -> Request`` with the generation options' settings (head weights read once)."""
    from bridge.capture import load_head_weights
    from bridge.runner import Request

    head_weights = load_head_weights(args.head_weights) if args.head_weights else None

    def make(prompt: str) -> Request:
        return Request(prompt=prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps,
                       guidance=args.guidance, focus=list(args.focus),
                       phase_boundaries=tuple(args.phase_boundaries) if args.phase_boundaries else None,
                       head_weights=head_weights)

    return make


#: seconds a command may take to stop cleanly after SIGTERM / Ctrl-C before it is ended anyway
STOP_GRACE = 5.0


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
