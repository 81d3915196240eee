"""The shapes trainer runs end to end on the CPU: resume from the shipped weights, a few decoder
and grounded UNet steps, export, and a pipeline that loads the exported files."""

from __future__ import annotations

import argparse
import pytest
import json

import torch


@pytest.mark.slow
def test_resume_train_export_and_load(tmp_path):
    from bridge.models.shapes import SHAPES_WEIGHTS
    from bridge.commands.train_shapes import add_arguments
    from bridge.models.shapes.train import export, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([
        "--device", "cpu", "--resume", str(SHAPES_WEIGHTS), "--out", str(out), "--ckpt-dir", str(tmp_path / "ck"),
        # stopped by step counts, not the clock: a busy machine gets the same steps, only later
        "--minutes", "60", "--decoder-seconds", "3600", "--decoder-steps", "1", "--unet-steps", "2",
        "--batch", "2", "--vae-batch", "2", "--ground", "0.005",
        "--log-every", "1",
    ])
    assert run(args) == 0
    meta, shipped = json.loads((out / "meta.json").read_text()), json.loads((SHAPES_WEIGHTS / "training.json").read_text())
    assert meta["step"] == shipped["step"] + 2 and meta["decoder_steps"] == shipped["decoder_steps"] + 1  # both trained
    assert meta["ground_from_step"] is not None
    log = (out / "train_log.txt").read_text()
    assert "decoder fine-tuned" in log and " ground " in log
    for name in ("unet_0", "unet_1", "text_encoder", "vae"):
        assert (out / f"{name}.safetensors").stat().st_size < 16 * 2**20

    export(out, tmp_path / "pipe")
    from bridge.models.shapes import load_shapes_pipeline

    pipe = load_shapes_pipeline("cpu", torch.float32, path=tmp_path / "pipe")
    assert type(pipe.unet.attn_processors["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"]).__name__ == "AttnProcessor2_0"
