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
    add_threads_argument(g)


def add_threads_argument(g: Any) -> None:
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: on a CPU, the CPUs not busy with other work at start, at least 1; on a GPU, torch's)")


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
    from bridge.runner import denoiser
    from bridge.threads import configure_threads

    pipe, name = load_pipeline(args.model, args.device, None if args.dtype == "auto" else args.dtype, args.arch,
                               config=args.model_config)
    configure_threads(args.threads, next(denoiser(pipe).parameters()).device)
    return pipe, name


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
