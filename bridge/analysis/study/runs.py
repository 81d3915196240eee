"""One generation of the study -> its numbers, by the phases' definitions (no new formulas here).

Per word and per phrase: the step series (mass, entropy, change, ...) and the run measures
(peak, emergence, stabilisation, AUC) from :class:`bridge.phases.PhaseEngine` — the same code
that fills the timeline packet — plus agreement with the final map
(:func:`bridge.phases.measures.agreement_with_final`); per block: each word's mass curve from
the block's own layers; per step: the top-k words by share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bridge.phases import PhaseConfig, PhaseEngine, TimelineSummary
from bridge.phases.measures import agreement_with_final
from bridge.phases.timeline import spatial_distribution

from .phrases import PhraseGrouper, TitanPhrases, phrase_maps
from .prompts import StudyPrompt, align_roles


@dataclass
class UnitCurves:
    """Words or phrases of one run: names, roles, series ``[T, U]`` and measures ``[U]``."""

    names: list[str]
    roles: list[str]
    summary: TimelineSummary
    agreement: np.ndarray  # [T, U]


@dataclass
class RunResult:
    """What the report needs from one (prompt, seed) generation."""

    prompt: str
    seed: int
    steps: int
    words: UnitCurves
    phrases: UnitCurves
    block_mass: dict[str, np.ndarray] = field(default_factory=dict)  # block -> [T, N] word mass from its layers
    layer_mass: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> [T, N] word mass
    seconds: float = 0.0


def unit_curves(maps: Tensor, names: list[str], roles: list[str], config: PhaseConfig) -> UnitCurves:
    """Run raw maps ``[T, U, H, W]`` through a PhaseEngine (the live definitions) and add the
    agreement of each step's layout with the last one."""
    engine = PhaseEngine(names, config)
    t = maps.shape[0]
    for s in range(t):
        engine.update(maps[s], s, t)
    dist = torch.stack([spatial_distribution(maps[s].clamp_min(0)) for s in range(t)]).numpy()  # [T, U, H*W]
    return UnitCurves(names, roles, engine.summary(), agreement_with_final(dist))


def block_of(layer: str) -> str:
    """``up_blocks.1.attentions.0....attn2`` -> ``up_blocks.1`` (``mid_block`` stays whole)."""
    parts = layer.split(".")
    return parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])


def layer_masses(run: Any, row: int = 0) -> dict[str, np.ndarray]:
    """Each kept layer's word mass curve ``[T, N]``: its per-head maps averaged over heads, split
    into words, then the mean over pixels at the layer's own grid (the layer's ``mass``)."""
    tm = run.tokens(row)
    per: dict[str, list[Tensor]] = {}
    for f in run.frames:
        for name, m in f.layers.items():  # [B, heads, tokens, h, w]
            per.setdefault(name, []).append(tm.word_maps(m[row].float().mean(0)).flatten(1).mean(1))  # [N]
    return {k: torch.stack(v).numpy().astype(np.float64) for k, v in sorted(per.items()) if len(v) == len(run.frames)}


def block_masses(layers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per UNet block, the mean of its layers' mass curves ``[T, N]``."""
    groups: dict[str, list[np.ndarray]] = {}
    for name, m in layers.items():
        groups.setdefault(block_of(name), []).append(m)
    return {b: np.mean(v, axis=0) for b, v in sorted(groups.items())}


def analyse(captured: Any, prompt: StudyPrompt, config: PhaseConfig | None = None,
            grouper: PhraseGrouper | None = None) -> RunResult:
    """A :class:`bridge.analysis.CapturedRun` of ``prompt`` -> its :class:`RunResult`."""
    config = config or PhaseConfig()
    grouper = grouper or TitanPhrases()
    run = captured.run
    words = run.words
    roles = align_roles(prompt, words)
    maps = run.word_maps().float().cpu()  # [T, N, H, W]
    groups = grouper.phrases(words, roles)
    phrase_roles = [roles[idx[-1]] for _, idx in groups]  # a phrase's role is its noun's
    layers = layer_masses(run)
    return RunResult(
        prompt=prompt.text, seed=captured.seed, steps=maps.shape[0],
        words=unit_curves(maps, words, roles, config),
        phrases=unit_curves(phrase_maps(maps, groups), [g for g, _ in groups], phrase_roles, config),
        block_mass=block_masses(layers), layer_mass=layers, seconds=captured.seconds,
    )


def top_k(curves: UnitCurves, k: int) -> list[tuple[int, list[tuple[str, float]]]]:
    """Per step: the k words with the largest share, ``(step, [(word, share), ...])``."""
    share = curves.summary.series["share"]  # [T, N]
    out = []
    for t, s in enumerate(curves.summary.steps.tolist()):
        order = np.argsort(-share[t], kind="stable")[:k]
        out.append((s, [(curves.names[i], float(share[t, i])) for i in order]))
    return out
