"""The full-size random-weight architectures the GPU benchmarks build (bridge/models/fullsize.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.capture import adapter_for, capture
from bridge.models import fullsize


def test_flux_is_flux_dev_shaped():
    with torch.device("meta"):  # the structure only: 17B parameters are not built here
        pipe = fullsize._flux(19, 38, 24)
    t = pipe.transformer
    assert round(sum(p.numel() for p in t.parameters()) / 1e9, 1) == 11.9
    assert (len(t.transformer_blocks), len(t.single_transformer_blocks)) == (19, 38)
    assert (t.config.num_attention_heads, t.config.attention_head_dim, t.config.guidance_embeds) == (24, 128, True)
    assert pipe.text_encoder_2.config.d_model == 4096 and pipe.vae.config.latent_channels == 16
    assert len(adapter_for(pipe).layers()) == 57


@pytest.mark.slow
def test_full_width_flux_runs_with_capture_bit_identical():
    """One block of each kind at the real widths (24 heads × 128, a 4096-wide T5 with its 512
    positions): the capture taps the processor's attention call and leaves the image unchanged."""
    pipe = fullsize.flux_pipeline("cpu", torch.float32, layers=1, single_layers=1, t5_layers=1)

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe("a photograph of an astronaut riding a horse", height=128, width=128, num_inference_steps=2,
                    guidance_scale=3.5, generator=g, output_type="np").images

    plain = run()
    with capture(pipe) as cap:
        image = run()
    np.testing.assert_array_equal(image, plain)
    run_ = cap.last_run
    assert len(run_.frames) == 2 and run_.frames[-1].cross.shape == (1, 512, 8, 8)
    words = run_.tokens(0)
    maps = words.word_maps(run_.frames[-1].cross[0])
    assert maps.shape[0] == len(words.words) == 8 and torch.isfinite(maps).all() and (maps >= 0).all()
