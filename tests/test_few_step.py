"""Few-step schedulers (SD-Turbo's trailing Euler at 1 and 4 steps, LCM at 4 steps): the step
rule gives one frame per step, each with the scheduler's own x0, the image is untouched, and the
runner publishes every step, also when a run has a single step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.capture import capture
from bridge.models.tiny import tiny_sd_pipeline
from bridge.runner import Request, collect

PROMPT = "a red circle above a blue square"
# (scheduler, steps, guidance): SD-Turbo runs without guidance; LCM-LoRA SD 1.5 with guidance ≤ 1 (no CFG)
CASES = [("turbo", 1, 0.0), ("turbo", 4, 0.0), ("lcm", 4, 1.0)]


@pytest.fixture(scope="module", params=["turbo", "lcm"])
def pipe(request):
    return tiny_sd_pipeline(scheduler=request.param)


def _generate(pipe, steps, guidance, **kw):
    g = torch.Generator().manual_seed(3)
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=g, **kw).images


def _cases(pipe):
    name = type(pipe.scheduler).__name__
    return [(s, g) for sched, s, g in CASES if (sched == "lcm") == (name == "LCMScheduler")]


def test_one_frame_per_step_with_the_schedulers_own_x0(pipe):
    name = type(pipe.scheduler).__name__
    for steps, guidance in _cases(pipe):
        seen, x0s = [], []
        original = type(pipe.scheduler).step

        def spy(self, *a, **k):  # the scheduler's own x0 at each step, read by field name outside the capture
            out = original(self, *a, **{**k, "return_dict": True})
            x0s.append((out.denoised if name == "LCMScheduler" else out.pred_original_sample).clone())
            return out if k.get("return_dict", True) else out.to_tuple()

        type(pipe.scheduler).step = spy
        try:
            with capture(pipe, on_step=lambda f, r: seen.append((f.step, f.total_steps, f.evaluations, f.x0))) as cap:
                latents = _generate(pipe, steps, guidance, output_type="latent")
        finally:
            type(pipe.scheduler).step = original
        run = cap.last_run
        assert run.status == "done" and len(run.frames) == steps == run.total_steps
        assert [s for s, _, _, _ in seen] == list(range(steps)) and {t for _, t, _, _ in seen} == {steps}
        assert [e for _, _, e, _ in seen] == [1] * steps  # guidance ≤ 1: one evaluation per step, no CFG rows
        for (_, _, _, x0), own in zip(seen, x0s, strict=True):
            torch.testing.assert_close(x0, own, rtol=0, atol=0)
        # the last step lands on its x0 (trailing Euler: σ → 0; LCM: no noise after the last step)
        torch.testing.assert_close(seen[-1][3], latents, rtol=1e-4, atol=1e-4)
        assert run.word_maps().shape[:2] == (steps, 7)


def test_image_identical_with_capture(pipe):
    for steps, guidance in _cases(pipe):
        plain = _generate(pipe, steps, guidance, output_type="np")
        with capture(pipe):
            captured = _generate(pipe, steps, guidance, output_type="np")
        np.testing.assert_array_equal(plain, captured)


def test_runner_publishes_every_step(pipe):
    for steps, guidance in _cases(pipe):
        result, packets = collect(pipe, Request(PROMPT, seed=1, steps=steps, guidance=guidance, focus=["square"]), image_every=1)
        assert result.status == "done", result.error
        kinds = [p.kind for p in packets]
        assert kinds[0] == "run" and kinds[-2:] == ["timeline", "end"]
        assert [p.header["step"] for p in packets if p.kind == "step"] == list(range(steps))
        images = [p for p in packets if p.kind == "image"]
        assert images[-1].header["final"] and images[-1].arrays["image"].shape == (64, 64, 3)
        textures = [p.arrays["textures"] for p in packets if p.kind == "step"]
        assert all(np.isfinite(t).all() for t in textures)
