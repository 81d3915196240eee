"""The shipped ungrounded checkpoint (issue 22): an overlay of the default shapes folder, loaded
by name (``load_pipeline("shapes-free")``, ``--model shapes-free``) with its local text encoder."""

from __future__ import annotations

import json

import pytest
import torch

from bridge.models.loading import SHAPES_FREE_MODEL_NAME, SHAPES_GUIDANCE, SHAPES_MODEL_NAME, default_guidance, load_pipeline
from bridge.models.shapes import SHAPES_FREE_WEIGHTS, SHAPES_WEIGHTS, load_shapes_pipeline, overlay_components

MiB = 1 << 20
PROMPT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def free():
    pipe, name = load_pipeline("shapes-free", device="cpu", dtype="float32")
    assert name == SHAPES_FREE_MODEL_NAME
    return pipe


def test_folder_holds_only_what_differs_within_limits():
    files = sorted(str(f.relative_to(SHAPES_FREE_WEIGHTS)) for f in SHAPES_FREE_WEIGHTS.rglob("*") if f.is_file())
    assert {f.split("/")[0] for f in files} == {"unet", "text_encoder", "training.json", "train_log.txt"}, files
    assert overlay_components(SHAPES_FREE_WEIGHTS) == ["unet", "text_encoder"]
    sizes = [f.stat().st_size for f in SHAPES_FREE_WEIGHTS.rglob("*") if f.is_file()]
    assert max(sizes) <= 16 * MiB and sum(sizes) <= 32 * MiB  # the shipped folder's limits
    meta = json.loads((SHAPES_FREE_WEIGHTS / "training.json").read_text())
    assert meta["ground"] == 0 and meta["freeze_text"] and meta["rewrite_captions"] and meta["text_window"] == 1
    te = json.loads((SHAPES_FREE_WEIGHTS / "text_encoder" / "config.json").read_text())
    assert te["local_window"] == 1
    assert "local_window" not in json.loads((SHAPES_WEIGHTS / "text_encoder" / "config.json").read_text())


def test_guidance_is_the_embedded_models():
    from bridge.models.loading import EMBEDDED_MODELS
    from bridge.models.shapes import CHECKPOINTS

    assert set(EMBEDDED_MODELS) == set(CHECKPOINTS) == {"shapes", "shapes-free"}  # one name per shipped folder
    for name in ("shapes", "shapes-free", SHAPES_MODEL_NAME, SHAPES_FREE_MODEL_NAME):
        assert default_guidance(name) == SHAPES_GUIDANCE
    assert default_guidance("tiny-random-sd") != SHAPES_GUIDANCE


def test_shared_components_are_the_shipped_ones_and_own_ones_differ(free, shapes_pipe):
    for part in ("vae", "text_encoder", "unet"):
        mine, shipped = free.components[part].state_dict(), shapes_pipe.components[part].state_dict()
        same = mine.keys() == shipped.keys() and all(torch.equal(mine[k], shipped[k]) for k in mine)
        assert same == (part == "vae"), part
    assert free.tokenizer.get_vocab() == shapes_pipe.tokenizer.get_vocab()
    assert type(free.scheduler) is type(shapes_pipe.scheduler) and dict(free.scheduler.config) == dict(shapes_pipe.scheduler.config)


def test_local_text_encoder_band_is_installed(free):
    """Three layers of a ±1 band: a word four tokens on is out of reach of a changed word; a causal
    encoder would change every later token."""
    ids = [free.tokenizer(p, return_tensors="pt").input_ids for p in (PROMPT, "a green circle above a blue square")]
    assert ids[0].shape == ids[1].shape and (ids[0] != ids[1]).sum() == 1
    changed = int((ids[0] != ids[1]).nonzero()[0, 1])
    with torch.no_grad():
        a, b = (free.text_encoder(i).last_hidden_state[0] for i in ids)  # [tokens, 256]
    reach = free.text_encoder.config.num_hidden_layers * free.text_encoder.config.local_window
    assert torch.allclose(a[changed + reach + 1:], b[changed + reach + 1:], atol=1e-5)
    assert not torch.allclose(a[changed + 1], b[changed + 1], atol=1e-4)


def test_generates_deterministically_and_unlike_the_grounded_model(free, shapes_pipe):
    def image(pipe):
        return pipe(PROMPT, num_inference_steps=6, guidance_scale=SHAPES_GUIDANCE, generator=torch.Generator().manual_seed(3),
                    output_type="np").images[0]  # [128, 128, 3]

    first = image(free)
    assert first.shape == (128, 128, 3)
    assert (image(free) == first).all()
    assert abs(image(shapes_pipe) - first).mean() > 0.02


def test_overlay_folder_by_path_and_a_folder_that_is_neither(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json.*overlay"):
        load_shapes_pipeline(path=tmp_path)
    pipe = load_shapes_pipeline("cpu", torch.float32, path=SHAPES_FREE_WEIGHTS)
    assert pipe.text_encoder.config.local_window == 1


def test_commands_name_it(tmp_path):
    """`eval-shapes --weights shapes-free` and `record --model shapes-free` load the shipped checkpoint."""
    from bridge.cli import main
    from bridge.trace import TraceReader

    assert main(["eval-shapes", "--weights", "shapes-free", "--prompts", "1", "--steps", "2", "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "results_heldout.json").read_text())["summary"]
    assert summary["prompts"] == 1
    assert main(["record", PROMPT, "--model", "shapes-free", "--steps", "2", "--seed", "1", "-o", str(tmp_path / "r.stepx")]) == 0
    with TraceReader(tmp_path / "r.stepx") as tr:
        run = tr.metadata
    assert run["model"] == SHAPES_FREE_MODEL_NAME and run["guidance"] == SHAPES_GUIDANCE, run
