"""``stepx eval-shapes``: evaluate the embedded shapes model (adherence and attention IoU).

The options live here and the work in :mod:`bridge.models.shapes.evaluate`, imported only when the
command runs: that module needs torch, and ``--help`` must answer without it.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=60, help="number of evaluation prompts")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout",
                   help="heldout: each prompt holds a held-out colour-shape pair; train: only pairs seen in training")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--min-area", type=int, default=60, help="pixels an object's colour region needs to count as present")
    p.add_argument("--weights", default=None, help="a diffusers folder (default: the shipped shapes model)")
    p.add_argument("--out", default=None, help="folder for results.json and a sample sheet")
    p.add_argument("--device", default="cpu", help="torch device for generation and capture (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--time", action="store_true", help="also time 20-step generations without capture")


def run(args: argparse.Namespace) -> int:
    from bridge.models.shapes.evaluate import run as run_evaluate

    return run_evaluate(args)
