"""What the embedded model's timelines really show (docs/PHASES.md, 'On the embedded model').

Measured over 3 prompts × 3 seeds with the shipped weights (training run 3, grounded
cross-attention): "background", the background colour and the words of the later objects reach
half their peak attention mass at step 0 of 20; the first-named object's colour and shape at
steps 0–5 (median 1–2), never before the background. This test pins that finding for one prompt
and seed, so a change in capture, word mapping or timelines that alters it is noticed.
"""

from __future__ import annotations

import pytest

from bridge.runner import Request, collect


@pytest.fixture(scope="module")
def shapes_pipe():
    from bridge.models.loading import load_pipeline

    return load_pipeline(None, "cpu")[0]


def test_background_emerges_before_the_first_object(shapes_pipe):
    result, packets = collect(shapes_pipe, Request("a red circle above a blue square on a yellow background", seed=0, steps=20),
                              image_every=0)
    assert result.status == "done"
    timeline = next(p for p in packets if p.kind == "timeline").header
    emerge = dict(zip(timeline["words"], timeline["emergence_step"]))
    assert emerge["background"] == 0 and emerge["yellow"] == 0
    assert emerge["circle"] >= 1 and emerge["red"] >= 1
    assert emerge["background"] < emerge["circle"]
    assert timeline["emergence_order"][0] not in ("red", "circle")
