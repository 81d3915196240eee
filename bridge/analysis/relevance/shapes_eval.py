"""The paper's tables on the shapes world, where ground truth is free: the generated image's
objects are found by colour segmentation (``bridge.models.shapes.evaluate.score_image``, the
stand-in for the paper's Grounded-SAM), and each word's aggregated map is scored by IoU.

Head sets per (concept, word kind), e.g. the concept ``shape`` scored on shape words:
all heads (DAAM), the k most relevant, the k least relevant, k random heads (a control), and
the k most relevant for every k of the ablation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bridge.models.shapes.evaluate import TAUS, ScoredWord, map_iou, score_image

from .hrv import select_heads
from .selective import head_maps, load_head_maps, save_head_maps

log = logging.getLogger(__name__)
RANDOM_SETS = 5


def head_sets(relevance: torch.Tensor, k: int, ablation: Sequence[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Name → ``[total_heads]`` 0/1 weights: all, top-k, bottom-k, random-k (as separate sets), top-j for j in ablation."""
    n = relevance.numel()
    sets = {"all heads (DAAM)": torch.ones(n, dtype=torch.float64), f"top-{k}": select_heads(relevance, k),
            f"bottom-{k}": select_heads(relevance, k, most=False)}
    g = torch.Generator().manual_seed(seed)
    for r in range(RANDOM_SETS):
        w = torch.zeros(n, dtype=torch.float64)
        w[torch.randperm(n, generator=g)[:k]] = 1.0
        sets[f"random-{k}#{r}"] = w
    for j in ablation:
        if not 0 < j <= n:
            raise ValueError(f"ablation k={j} is out of range: the model has {n} heads")
        sets[f"top-{j}"] = select_heads(relevance, j)
    return sets


def evaluate(load_pipe: Callable[[], Any], relevance: dict[str, torch.Tensor], layout: Sequence[tuple[str, int]], prompts: Sequence[str],
             pairs: Sequence[tuple[str, ScoredWord]], *, k: int, ablation: Sequence[int] = (), seed: int = 1234, steps: int = 20,
             guidance: float = 4.0, min_area: int = 60, taus: Sequence[float] = TAUS,
             maps_dir: str | Path | None = None) -> dict[str, Any]:
    """Mean IoU per (concept, word kind) → head set → τ, over every present object of every prompt.

    ``pairs``: ``(concept, kind)`` with kind ``shape`` or ``colour`` (which word of the object is scored).
    ``random-k`` sets are pooled into one row (mean over the random sets).
    ``load_pipe()`` gives the pipeline; it is called only if a generation must run: with ``maps_dir``,
    the per-head maps of generation i are read from ``maps_dir/NNNN.npz`` when there (no model needed)
    and written there otherwise.
    """
    sets = {c: head_sets(relevance[c], k, ablation, seed) for c, _ in pairs}
    scores: dict[str, dict[str, dict[float, list[float]]]] = {
        f"{c}:{kind}": {name: {t: [] for t in taus} for name in sets[c]} for c, kind in pairs}
    objects = 0
    loaded: list[Any] = []

    def model() -> Any:
        if not loaded:
            loaded.append(load_pipe())
        return loaded[0]

    if maps_dir is not None:
        _check_settings(Path(maps_dir), {"seed": seed, "steps": steps, "guidance": guidance, "layout": [list(x) for x in layout]})
    for i, prompt in enumerate(prompts):
        cached = Path(maps_dir) / f"{i:04d}.npz" if maps_dir is not None else None
        if cached is not None and cached.is_file():
            hm = load_head_maps(cached)
            if hm.tokens.prompt != prompt or hm.layout != [tuple(x) for x in layout]:
                raise ValueError(f"{cached} holds maps of another prompt or model ({hm.tokens.prompt!r}); use another --maps folder")
        else:
            hm = head_maps(model(), prompt, layout, seed=seed + i, steps=steps, guidance=guidance)
            if cached is not None:
                save_head_maps(hm, cached)
        sc = score_image(hm.image, prompt, min_area)
        for o in sc["objects"]:
            if not o["present"]:
                continue
            objects += 1
            for c, kind in pairs:
                for name, w in sets[c].items():
                    m = hm.word(o[kind], w)
                    for t in taus:
                        scores[f"{c}:{kind}"][name][t].append(map_iou(m, o["mask"], t))
        log.info("%d/%d %s", i + 1, len(prompts), prompt)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for key, by_set in scores.items():
        rows: dict[str, dict[str, float]] = {}
        random_rows = [v for name, v in by_set.items() if name.startswith(f"random-{k}#")]
        for name, by_tau in by_set.items():
            if name.startswith(f"random-{k}#"):
                continue
            rows[name] = {str(t): float(np.mean(v)) if v else float("nan") for t, v in by_tau.items()}
        rows[f"random-{k} (mean of {len(random_rows)} sets)"] = {
            str(t): float(np.mean([np.mean(r[t]) for r in random_rows if r[t]])) if objects else float("nan") for t in taus}
        table[key] = rows
    return {"prompts": len(prompts), "objects_scored": objects, "k": k, "ablation": list(ablation), "taus": list(taus), "table": table}


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """A maps folder serves one set of generation settings: record them, or refuse others."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{folder} holds maps generated with other settings ({', '.join(diff)} differ); use another --maps folder")
    else:
        path.write_text(json.dumps(settings) + "\n")


def markdown(result: dict[str, Any]) -> str:
    """The tables as Markdown: per (concept, word kind), the head sets × τ."""
    taus = [str(t) for t in result["taus"]]
    k = result["k"]
    lines = [f"{result['objects_scored']} objects in {result['prompts']} prompts; mean IoU at τ"]
    for key, rows in result["table"].items():
        concept, kind = key.split(":")
        lines += ["", f"**concept `{concept}`, scored on {kind} words**", "",
                  "| head set | " + " | ".join(f"τ {t}" for t in taus) + " |", "|---|" + "---:|" * len(taus)]
        main = ["all heads (DAAM)", f"top-{k}", f"bottom-{k}"] + [n for n in rows if n.startswith(f"random-{k} ")]
        rest = sorted((n for n in rows if n not in main), key=lambda n: int(n.split("-")[1]))
        for name in main + rest:
            lines.append(f"| {name} | " + " | ".join(f"{rows[name][t]:.3f}" for t in taus) + " |")
    return "\n".join(lines) + "\n"
