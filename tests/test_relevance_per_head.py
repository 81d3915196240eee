"""bench/relevance_per_head.py: its head-set IoU is relevance-eval's, its statistics are right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def per_head():
    spec = importlib.util.spec_from_file_location("relevance_per_head", ROOT / "bench" / "relevance_per_head.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_spearman(per_head):
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert per_head.spearman(a, a ** 3) == pytest.approx(1.0)
    assert per_head.spearman(a, -a) == pytest.approx(-1.0)
    assert per_head.spearman(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486833, abs=1e-6)  # ties: mean ranks


def test_spread(per_head):
    m = torch.zeros(4, 4)
    m[0, :2] = 1.0
    assert per_head.spread(m) == pytest.approx(2 / 16)
    assert per_head.spread(torch.ones(4, 4)) == 0.0  # a flat map normalises to zeros, as in map_iou: nothing above τ


def test_agrees_with_relevance_eval_from_kept_maps(per_head, tmp_path, monkeypatch, capsys):
    from bridge.cli import main

    w, maps, out = tmp_path / "w", tmp_path / "maps", tmp_path / "eval"
    assert main(["relevance", "--concepts", "shapes", "--runs", "2", "--chunk", "1", "--steps", "2", "-o", str(w), "--workers", "0"]) == 0
    assert main(["relevance-eval", "--weights", str(w), "--prompts", "3", "--steps", "3", "--k", "3", "--ablation", "1",
                 "--maps", str(maps), "-o", str(out)]) == 0
    table = json.loads((out / "results.json").read_text())["table"]
    from bridge.analysis.relevance.hrv import relevance_vectors, select_heads
    from bridge.analysis.relevance.store import read_summary
    from bridge.models.shapes.evaluate import eval_prompts

    summary = read_summary(w)
    rel = relevance_vectors(torch.tensor(summary["counts"]))[summary["concepts"].index("shape")]
    prompts = eval_prompts(3)
    for name, weights in (("all heads (DAAM)", torch.ones(rel.numel(), dtype=torch.float64)), ("top-3", select_heads(rel, 3)),
                          ("top-1", select_heads(rel, 1))):
        assert per_head.set_iou(maps, prompts, "shape", weights) == pytest.approx(list(table["shape:shape"][name].values()), abs=1e-12)
    iou, spreads, cover = per_head.per_head_iou(maps, prompts, ["shape"], rel.numel())
    best = int(select_heads(rel, 1).argmax())  # one head alone: the top-1 row of the table
    assert iou["shape"][best] == pytest.approx(list(table["shape:shape"]["top-1"].values()), abs=1e-12)
    assert iou["shape"].shape == (rel.numel(), 3) and 0 < cover < 1 and ((0 <= spreads["shape"]) & (spreads["shape"] <= 1)).all()
    monkeypatch.setattr(sys, "argv", ["x", "--maps", str(maps), "--weights", str(w), "--prompts", "3", "--k", "3", "--json", str(tmp_path / "r.json")])
    per_head.main()
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["pairs"]) == {"shape", "colour"} and set(report["split_half_topk_overlap"]) == set(summary["concepts"])
    assert all(0 <= v <= 3 for v in report["split_half_topk_overlap"].values())
    assert "Spearman" in capsys.readouterr().out


def test_peak_vote_differs_from_the_mean_vote_where_it_should():
    """One head, four positions, two concepts: concept 0 gets a little everywhere, concept 1 a lot at one
    position. The paper's mean vote picks 0, the peak vote 1."""
    from bridge.analysis.relevance.hrv import head_winners

    spec = importlib.util.spec_from_file_location("relevance_peak_vote", ROOT / "bench" / "relevance_peak_vote.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    k = torch.eye(2)[None]  # [heads 1, C 2, d 2]
    q = torch.tensor([[[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 4.0]]]])  # [B 1, heads 1, N 4, d 2]
    assert head_winners(q, k, 1.0).tolist() == [[0]]
    assert mod.head_winners_peak(q, k, 1.0).tolist() == [[1]]
