"""estimate_x0 against a scheduler that computes x0 itself (DDIM), with the device cache."""

from __future__ import annotations

import torch

from bridge.capture.steps import estimate_x0
from bridge.models.tiny import make_scheduler


def test_estimate_x0_matches_ddims_own_prediction():
    sched = make_scheduler("ddim")
    sched = type(sched).from_config(sched.config, clip_sample=False)  # DDIM would clip its x0 to [-1, 1]
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    cache: dict = {}
    for t in sched.timesteps[:3]:
        expected = sched.step(eps, t, sample).pred_original_sample
        got = estimate_x0(sched, eps, t, sample, cache)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(cache) == 2  # ᾱ moved to the device once (and the table held), reused for every step
    assert estimate_x0(make_scheduler("euler"), eps, sched.timesteps[0], sample) is None
