"""``stepx relevance-eval --weights DIR``: the paper's tables on the shapes world.

All heads (DAAM) vs the k most / least relevant heads (and k random heads) at τ 0.3/0.4/0.5,
and the ablation over k, scored by IoU against the objects found in each generated image.
Needs a shapes-world model (the embedded one by default): its images carry their ground truth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bridge.commands.common import add_model_arguments

if TYPE_CHECKING:
    from bridge.models.shapes.evaluate import ScoredWord


def _pair(text: str) -> tuple[str, ScoredWord]:
    concept, _, kind = text.partition(":")
    if kind not in ("shape", "colour") or not concept:
        raise argparse.ArgumentTypeError(f"expected CONCEPT:KIND with KIND shape or colour (e.g. shape:shape), got {text!r}")
    return concept, cast("ScoredWord", kind)  # (checked just above)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="folder written by `stepx relevance` (its .relevance/summary.json holds the counts)")
    p.add_argument("--pairs", type=_pair, nargs="+", default=[("shape", "shape"), ("colour", "colour")],
                   help="CONCEPT:KIND pairs: score the concept's heads on the objects' shape or colour words (default shape:shape colour:colour)")
    p.add_argument("--k", type=int, default=7, help="heads in the top/bottom/random sets (default 7: a quarter, as 30 of SD's 128)")
    p.add_argument("--ablation", type=int, nargs="*", default=[3, 5, 7, 10, 14, 20], help="k values of the ablation")
    p.add_argument("--prompts", type=int, default=40, help="evaluation prompts (eval-shapes' deterministic captions)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--maps", default=None, metavar="DIR", help="keep each generation's per-head maps here and reuse them: "
                   "a rerun (other --k, --ablation, --pairs or relevance vectors) needs no model")
    p.add_argument("-o", "--out", required=True, help="folder for results.json and table.md")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from bridge.analysis.relevance.hrv import relevance_vectors
    from bridge.analysis.relevance.shapes_eval import evaluate, markdown
    from bridge.analysis.relevance.store import read_summary
    from bridge.commands.common import load_model
    from bridge.models.shapes.evaluate import eval_prompts

    summary = read_summary(args.weights)
    missing = [c for c, _ in args.pairs if c not in summary["concepts"]]
    if missing:
        raise ValueError(f"{args.weights} has no concept {missing[0]!r}; its concepts: {', '.join(summary['concepts'])}")
    vectors = relevance_vectors(torch.tensor(summary["counts"]))
    relevance = {c: vectors[summary["concepts"].index(c)] for c, _ in args.pairs}
    layout = [tuple(x) for x in summary["layout"]]
    result = evaluate(lambda: load_model(args)[0], relevance, layout, eval_prompts(args.prompts, args.seed, args.split), args.pairs,
                      k=args.k, ablation=args.ablation, seed=args.seed, steps=args.steps, guidance=args.guidance, maps_dir=args.maps)
    result.update(weights=str(args.weights), generations=summary.get("generations_counted"), split=args.split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "table.md").write_text(markdown(result))
    print(markdown(result))
    return 0
