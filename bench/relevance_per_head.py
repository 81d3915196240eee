"""Does a head's relevance predict how well it localises? Per-head IoU from kept maps, no model.

Reads a `stepx relevance-eval --maps DIR` folder (each generation's per-head maps) and the
relevance run it was scored with, and prints, for each (concept, word kind) pair: every head's
own mean IoU (the head alone, τ 0.3/0.4/0.5), its relevance-vector weight, and the Spearman rank
correlation between the two; plus how stable the top-k set is between the two halves of the
relevance run's generations (chunk files). docs/RELEVANCE.md uses it to explain why selecting
the most relevant heads helps on one checkpoint and not on another.

    python bench/relevance_per_head.py --maps out/maps --weights out/hrv --prompts 60 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bridge.analysis.relevance.hrv import relevance_vectors
from bridge.analysis.relevance.selective import load_head_maps
from bridge.analysis.relevance.store import PARTIAL, read_summary
from bridge.models.shapes.evaluate import TAUS, eval_prompts, map_iou, score_image


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def spread(word_map: torch.Tensor, tau: float = 0.4) -> float:
    """Fraction of the image at or above ``tau`` of the min–max normalised map: how diffuse it is."""
    m = word_map.float()
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-8)
    return float((m >= tau).float().mean())


def per_head_iou(maps_dir: Path, prompts: list[str], kinds: list[str], heads: int,
                 min_area: int = 60) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """kind → ``[heads, taus]`` mean IoU of each head alone over every present object; kind →
    ``[heads]`` mean spread of its maps; the mean fraction of the image the objects cover."""
    sums = {k: np.zeros((heads, len(TAUS))) for k in kinds}
    spreads = {k: np.zeros(heads) for k in kinds}
    cover = 0.0
    n = 0
    for i, prompt in enumerate(prompts):
        hm = load_head_maps(maps_dir / f"{i:04d}.npz")
        assert hm.tokens.prompt == prompt, (i, hm.tokens.prompt, prompt)
        for o in score_image(hm.image, prompt, min_area)["objects"]:
            if not o["present"]:
                continue
            n += 1
            cover += float(o["mask"].mean())
            for kind in kinds:
                word_maps = hm.maps[:, hm.tokens.index(o[kind])]  # [heads, R, R]
                for h in range(heads):
                    sums[kind][h] += [map_iou(word_maps[h], o["mask"], t) for t in TAUS]
                    spreads[kind][h] += spread(word_maps[h])
    n = max(n, 1)
    return {k: v / n for k, v in sums.items()}, {k: v / n for k, v in spreads.items()}, cover / n


def set_iou(maps_dir: Path, prompts: list[str], kind: str, weights: torch.Tensor, min_area: int = 60) -> list[float]:
    """Mean IoU per τ of the weighted head set (``weights [heads]``) on ``kind`` words: one row of relevance-eval's table."""
    scores: list[list[float]] = []
    for i, prompt in enumerate(prompts):
        hm = load_head_maps(maps_dir / f"{i:04d}.npz")
        scores += [[map_iou(hm.word(o[kind], weights), o["mask"], t) for t in TAUS]
                   for o in score_image(hm.image, prompt, min_area)["objects"] if o["present"]]
    return np.mean(scores, axis=0).tolist()


def split_half_topk(weights: Path, concepts: list[str], k: int) -> dict[str, int]:
    """Heads shared by the top-k sets of the first and second half of the relevance run's chunks."""
    chunks = sorted((weights / PARTIAL).glob("chunk-*.npz"))
    half = len(chunks) // 2
    counts = [sum(np.load(c)["counts"].astype(np.int64) for c in part) for part in (chunks[:half], chunks[half:])]
    tops = [relevance_vectors(torch.as_tensor(c)).topk(k, dim=1).indices for c in counts]  # [concepts, k] each
    return {c: len(set(tops[0][i].tolist()) & set(tops[1][i].tolist())) for i, c in enumerate(concepts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", required=True, type=Path)
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--prompts", type=int, default=60)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    summary = read_summary(args.weights)
    concepts = summary["concepts"]
    vectors = relevance_vectors(torch.tensor(summary["counts"])).numpy()  # [concepts, heads]
    heads = vectors.shape[1]
    iou, spreads, cover = per_head_iou(args.maps, eval_prompts(args.prompts, args.seed, "heldout"), ["shape", "colour"], heads)
    stable = split_half_topk(args.weights, concepts, args.k)
    out: dict = {"split_half_topk_overlap": stable, "k": args.k, "object_cover": cover, "pairs": {}}
    print(f"objects cover {cover:.1%} of the image on average")
    t4 = TAUS.index(0.4)
    for kind in ("shape", "colour"):
        rel = vectors[concepts.index(kind)]
        rho = spearman(rel, iou[kind][:, t4])
        best = np.argsort(-iou[kind][:, t4])[: args.k]
        top = np.argsort(-rel)[: args.k]
        rho_spread = spearman(rel, spreads[kind])
        oracle = torch.zeros(heads, dtype=torch.float64)
        oracle[torch.as_tensor(best)] = 1.0
        oracle_iou = set_iou(args.maps, eval_prompts(args.prompts, args.seed, "heldout"), kind, oracle)
        out["pairs"][kind] = {"spearman_rel_vs_iou@0.4": rho, "spearman_rel_vs_spread": rho_spread,
                              "per_head_iou": iou[kind].tolist(), "per_head_spread": spreads[kind].tolist(), "relevance": rel.tolist(),
                              "best_single_heads": best.tolist(), "oracle_set_iou": oracle_iou, "top_relevant_heads": top.tolist(),
                              "overlap_best_vs_top": len(set(best.tolist()) & set(top.tolist()))}
        print(f"{kind}: Spearman(relevance, single-head IoU@0.4) = {rho:+.2f}; best {args.k} single heads {best.tolist()} "
              f"(IoU@0.4 {iou[kind][best, t4].mean():.3f}), top-{args.k} relevant {top.tolist()} "
              f"(IoU@0.4 {iou[kind][top, t4].mean():.3f}); overlap {out['pairs'][kind]['overlap_best_vs_top']}")
        print(f"    oracle set (the {args.k} best single heads, chosen on these same objects): IoU τ .3/.4/.5 "
              + " / ".join(f"{v:.3f}" for v in oracle_iou))
        print(f"    spread (image ≥ 0.4): top-{args.k} relevant {spreads[kind][top].mean():.1%}, best {args.k} single "
              f"{spreads[kind][best].mean():.1%}, all heads {spreads[kind].mean():.1%}; Spearman(relevance, spread) = {rho_spread:+.2f}")
    print(f"top-{args.k} heads shared by the two halves of the relevance run: {stable}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
