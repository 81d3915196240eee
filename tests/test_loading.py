"""Model loading on checkpoints the project writes itself (offline): diffusers folders, single
LDM-format .safetensors files (bridge.models.convert), --model-config, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bridge.models.convert import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, architecture_mismatches, save_single_file
from bridge.models.loading import load_pipeline
from bridge.models.shapes import SHAPES_WEIGHTS
from bridge.models.tiny import tiny_sd_pipeline

PROMPT = "a red circle above a blue square"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny pipeline, its diffusers folder and its single file."""
    root = tmp_path_factory.mktemp("tiny")
    pipe = tiny_sd_pipeline(seed=3)
    pipe.save_pretrained(root / "folder")
    return pipe, root / "folder", save_single_file(pipe, root / "tiny.safetensors")


def image(pipe, size: int, steps: int = 3, seed: int = 7) -> np.ndarray:
    g = torch.Generator("cpu").manual_seed(seed)
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.0, height=size, width=size, generator=g, output_type="np").images[0]


def assert_same_weights(a, b) -> None:
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        differ = [k for k in sa if not torch.equal(sa[k].float(), sb[k].float())]
        assert not differ, f"{part}: {len(differ)} weights differ, e.g. {differ[:3]}"


def test_folder_round_trip_gives_the_same_image(tiny):
    pipe, folder, _ = tiny
    loaded, name = load_pipeline(str(folder), device="cpu", dtype="float32")
    assert name == str(folder) and type(loaded).__name__ == "StableDiffusionPipeline"
    assert_same_weights(pipe, loaded)
    assert np.array_equal(image(pipe, 64), image(loaded, 64))


def test_single_file_has_ldm_names_that_diffusers_converts_back(tiny):
    """Checked against diffusers' own LDM→diffusers converters, independently of from_single_file."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    pipe, _, path = tiny
    ckpt = load_file(str(path))
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) for k in ckpt)
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.middle_block.2.out_layers.3.weight", "model.diffusion_model.output_blocks.1.2.conv.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in ckpt, key
    assert ckpt["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # LDM's 1×1 conv
    for part, back in (("unet", convert_ldm_unet_checkpoint(ckpt, pipe.unet.config)),
                       ("vae", convert_ldm_vae_checkpoint(ckpt, pipe.vae.config))):
        want = getattr(pipe, part).state_dict()
        assert back.keys() == want.keys(), (part, sorted(back.keys() ^ want.keys())[:5])
        assert all(torch.equal(back[k].reshape(want[k].shape), want[k]) for k in want), part
    text = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ckpt).items()}
    assert text.keys() == pipe.text_encoder.state_dict().keys()


def test_single_file_round_trip_same_weights_and_image(tiny):
    pipe, folder, path = tiny
    assert architecture_mismatches(path, folder) == []
    loaded, name = load_pipeline(str(path), device="cpu", dtype="float32", arch="sd", config=str(folder))
    assert name == str(path)
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert_same_weights(pipe, loaded)
    assert np.array_equal(image(pipe, 64), image(loaded, 64))


def test_shapes_model_single_file_round_trip(tmp_path):
    from bridge.models.shapes import load_shapes_pipeline

    pipe = load_shapes_pipeline("cpu", torch.float32)
    path = save_single_file(pipe, tmp_path / "shapes.safetensors", dtype=torch.float16)  # stored fp16: lossless
    loaded, _ = load_pipeline(str(path), device="cpu", dtype="float32", arch="sd", config=str(SHAPES_WEIGHTS))
    assert_same_weights(pipe, loaded)
    assert np.array_equal(image(pipe, 128, steps=2), image(loaded, 128, steps=2))
    # without --model-config, a file with the shapes UNet gets the embedded folder as its config
    default, _ = load_pipeline(str(path), device="cpu", dtype="float32", arch="sd")
    assert torch.equal(default.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_record_with_single_file_and_model_config(tiny, tmp_path, capsys):
    from bridge.cli import main
    from bridge.trace import TraceReader

    _, folder, path = tiny
    trace = tmp_path / "run.stepx"
    rc = main(["record", PROMPT, "--model", str(path), "--model-config", str(folder), "--arch", "sd",
               "--steps", "2", "--seed", "1", "--device", "cpu", "-o", str(trace)])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    with TraceReader(trace) as tr:
        kinds = [p.kind for p in tr.packets()]
        assert tr.metadata["model"] == str(path)
    assert kinds[0] == "run" and kinds.count("step") == 2 and kinds[-1] == "end"


def test_single_file_offline_without_config_says_what_to_pass(tiny):
    _, _, path = tiny
    with pytest.raises(ValueError, match="--model-config DIR"):
        load_pipeline(str(path), device="cpu", arch="sd")


def test_single_file_with_a_config_of_another_architecture_fails_clearly(tiny):
    _, _, path = tiny
    with pytest.raises(ValueError, match="does not have the architecture of --model-config"):
        load_pipeline(str(path), device="cpu", arch="sd", config=str(SHAPES_WEIGHTS))


@pytest.mark.parametrize("bad", ["missing-dir", "not-a-pipeline"])
def test_model_config_must_be_a_diffusers_folder(tiny, tmp_path, bad):
    _, _, path = tiny
    cfg = tmp_path / bad
    if bad == "not-a-pipeline":
        cfg.mkdir()
    with pytest.raises((ValueError, FileNotFoundError), match="--model-config"):
        load_pipeline(str(path), device="cpu", arch="sd", config=str(cfg))


def test_file_that_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"must be \.safetensors or \.ckpt"):
        load_pipeline(str(f), device="cpu")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_pipeline(str(tmp_path / "nope.safetensors"), device="cpu")


def test_hub_id_not_cached_offline():
    with pytest.raises(RuntimeError) as err:
        load_pipeline("stepx-test/not-a-cached-model", device="cpu")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE=1" in msg and "Pass a diffusers folder" in msg and "--model-config" in msg


def test_save_single_file_rejects_other_formats(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_single_file(tiny[0], tmp_path / "x.ckpt")
