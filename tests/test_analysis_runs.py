"""bridge.analysis.capture_prompts: one captured generation per prompt, each reproducible alone."""

from __future__ import annotations

import torch

from bridge.analysis import capture_prompts
from bridge.capture import CaptureConfig, capture

PROMPTS = ["a red circle above a blue square", "a green triangle"]


def test_each_prompt_is_captured_with_its_own_seed(sd_pipe):
    done = list(capture_prompts(sd_pipe, PROMPTS, steps=2, guidance=4.0, seed=11, output_type="np"))
    assert [(d.index, d.prompt, d.seed) for d in done] == [(0, PROMPTS[0], 11), (1, PROMPTS[1], 12)]
    assert [d.run.steps_done for d in done] == [2, 2]
    assert [list(d.run.token_maps[0].words) for d in done] == [p.split() for p in PROMPTS]
    # the second run alone, from its seed, is the same run
    with capture(sd_pipe, CaptureConfig()) as cap:
        sd_pipe(PROMPTS[1], num_inference_steps=2, guidance_scale=4.0, generator=torch.Generator("cpu").manual_seed(12),
                output_type="np")
    torch.testing.assert_close(done[1].run.word_maps(), cap.last_run.word_maps())
