"""Each per-word measure has one definition (bridge.phases.measures), and the live stream,
the timeline summary and the export agree on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.phases import PhaseConfig, PhaseEngine
from bridge.phases.measures import agreement_with_final, stabilisation_steps, update_stable_since


def _run(seed: int, steps: int = 12, n: int = 3, settle_after: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 8, 8, generator=g)
    out = []
    for s in range(steps):
        jitter = 1.0 if s < settle_after else 0.001
        out.append((base + jitter * torch.rand(n, 8, 8, generator=g)).clamp_min(0))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_live_stable_since_ends_at_the_summary_stabilisation_step(seed):
    engine = PhaseEngine(["a", "b", "c"], PhaseConfig(stable_threshold=0.02))
    maps = _run(seed)
    frames = [engine.update(m, s, len(maps)) for s, m in enumerate(maps)]
    summary = engine.summary()
    last = frames[-1].scalars()["stable_since"]
    assert last == summary.stabilisation_step.tolist()
    assert all(v >= 0 for v in last)  # the maps settle after step 6
    assert all(v >= 6 for v in last)
    # every step: stable_since is the streak start implied by the changes so far
    change = summary.series["change"].astype(np.float64)
    for t, f in enumerate(frames):
        want = stabilisation_steps(change[: t + 1], summary.steps[: t + 1], 0.02).tolist()
        assert f.scalars()["stable_since"] == want


def test_update_stable_since_rule():
    prev = torch.tensor([-1.0, 3.0, 3.0, -1.0])
    change = torch.tensor([0.01, 0.01, 0.5, float("nan")])
    got = update_stable_since(prev, change, torch.tensor(7.0), torch.tensor(0.02))
    assert got.tolist() == [7.0, 3.0, -1.0, -1.0]


def test_agreement_with_final():
    d = np.zeros((3, 1, 4))
    d[0, 0, 0] = 1.0
    d[1, 0, :2] = 0.5
    d[2, 0, 1] = 1.0
    assert agreement_with_final(d)[:, 0].tolist() == [0.0, 0.5, 1.0]


def test_bicubic_upsampling_is_an_option_and_stays_non_negative():
    from bridge.capture import CaptureConfig
    from bridge.capture.maps import resize_maps

    x = torch.zeros(2, 4, 4)
    x[0, 1, 1] = 1.0  # a sharp peak: bicubic rings below zero next to it, clamped to 0
    x[1] = torch.linspace(0, 1, 16).view(4, 4)
    bil, bic = resize_maps(x, (16, 16)), resize_maps(x, (16, 16), "bicubic")
    assert bic.min() >= 0 and not torch.allclose(bil, bic)
    assert bic[0].argmax() == bil[0].argmax()  # same peak
    assert torch.equal(resize_maps(x, (2, 2), "bicubic"), resize_maps(x, (2, 2)))  # area when shrinking
    assert CaptureConfig().upsample == "bilinear"
    with pytest.raises(ValueError, match="upsample"):
        CaptureConfig(upsample="nearest")
