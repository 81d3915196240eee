"""``stepx eval-objects``: score object detection from attention against the shapes world's ground truth.

The options live here and the work in :mod:`bridge.analysis.objects.evaluate`, imported only when
the command runs: that module needs torch, and ``--help`` must answer without it.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=100, help="held-out compositions drawn (default 100; a repeated draw counts once)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="generation seeds per composition (default 0 1)")
    p.add_argument("--prompt-seed", type=int, default=4321, help="seed of the composition sampler (the design set used 999)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--grid", type=int, default=8, help="self-attention grid queries a side (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", required=True, help="folder for records.jsonl and results.json")
    p.add_argument("--resume", action="store_true", help="keep the generations already in OUT/records.jsonl")
    p.add_argument("--score-only", action="store_true", help="score OUT/records.jsonl as it is (no generation)")


def run(args: argparse.Namespace) -> int:
    from bridge.analysis.objects.evaluate import run as run_evaluation

    return run_evaluation(args)
