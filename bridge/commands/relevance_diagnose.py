"""``stepx relevance-diagnose PROMPT --word W --weights DIR``: one word's map under each concept's
most relevant heads, beside all heads (DAAM), as a PNG — the paper's misinterpretation diagnosis."""

from __future__ import annotations

import argparse

from bridge.commands.common import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--word", required=True, help="the (ambiguous) word of the prompt to look at")
    p.add_argument("--weights", required=True, help="folder written by `stepx relevance`")
    p.add_argument("--concepts", nargs="+", default=None, help="concepts whose top-k heads to show (default: all of the folder's)")
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--bottom", action="store_true", help="also show each concept's k least relevant heads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("-o", "--out", required=True, help="PNG to write")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from bridge.analysis.relevance.diagnose import diagnosis_figure
    from bridge.analysis.relevance.hrv import relevance_vectors, select_heads
    from bridge.analysis.relevance.selective import head_maps
    from bridge.analysis.relevance.store import read_summary
    from bridge.commands.common import load_model

    summary = read_summary(args.weights)
    concepts = args.concepts or summary["concepts"]
    unknown = [c for c in concepts if c not in summary["concepts"]]
    if unknown:
        raise ValueError(f"{args.weights} has no concept {unknown[0]!r}; its concepts: {', '.join(summary['concepts'])}")
    vectors = relevance_vectors(torch.tensor(summary["counts"]))
    layout = [tuple(x) for x in summary["layout"]]
    pipe, _ = load_model(args)
    hm = head_maps(pipe, args.prompt, layout, seed=args.seed, steps=args.steps, guidance=args.guidance)
    hm.tokens.index(args.word)  # a word not in the prompt: the prompt's words, before any drawing
    sets = {"all heads (DAAM)": torch.ones(vectors.shape[1], dtype=torch.float64)}
    for c in concepts:
        v = vectors[summary["concepts"].index(c)]
        sets[f"top-{args.k} {c}"] = select_heads(v, args.k)
        if args.bottom:
            sets[f"bottom-{args.k} {c}"] = select_heads(v, args.k, most=False)
    path = diagnosis_figure(hm, args.word, sets, args.out)
    print(f"wrote {path}")
    return 0
