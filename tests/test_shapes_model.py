"""The shipped shapes model: tokenizer, files, loading, generation (CPU)."""

import json

import pytest
import torch

from bridge.models.shapes import SHAPES_WEIGHTS, load_shapes_pipeline
from bridge.models.shapes.tokenizer import CLIP_TOKENIZER_DIR, save_tokenizer
from bridge.models.shapes.vocab import MAX_LENGTH, WORDS

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import CLIPTokenizer

    small = CLIPTokenizer.from_pretrained(str(save_tokenizer(tmp_path_factory.mktemp("tok"))))
    full = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))
    shipped = CLIPTokenizer.from_pretrained(str(SHAPES_WEIGHTS / "tokenizer"))
    return small, full, shipped


def test_every_word_is_one_token_as_in_clip(tokenizers):
    small, full, shipped = tokenizers
    for w in WORDS:
        assert small.tokenize(w) == [w + "</w>"] == full.tokenize(w), w
        assert shipped.tokenize(w) == [w + "</w>"]
        assert small.convert_tokens_to_ids(w + "</w>") != small.unk_token_id
    assert len(small) < 200
    assert small.model_max_length == MAX_LENGTH == shipped.model_max_length


def test_tokenizer_segments_captions_like_clip(tokenizers):
    small, full, _ = tokenizers
    cap = "A small RED circle left of a large blue square  on a gray background"
    assert small.tokenize(cap) == full.tokenize(cap)
    ids = small(cap).input_ids
    assert ids[0] == small.bos_token_id and ids[-1] == small.eos_token_id


def test_out_of_vocabulary_degrades_to_unk(tokenizers):
    small, _, _ = tokenizers
    toks = small.tokenize("a zebra circle")
    assert toks[0] == "a</w>" and toks[-1] == "circle</w>"
    assert "<|unk|>" in toks
    assert len(small("zebra " * 40, truncation=True).input_ids) <= MAX_LENGTH


def test_weight_files_within_limits():
    files = [f for f in SHAPES_WEIGHTS.rglob("*") if f.is_file()]
    assert all(f.stat().st_size <= 16 * MiB for f in files), [(f.name, f.stat().st_size) for f in files]
    assert sum(f.stat().st_size for f in files) <= 32 * MiB
    index = json.loads((SHAPES_WEIGHTS / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


@pytest.fixture(scope="module")
def pipe():
    return load_shapes_pipeline("cpu", torch.float32)


def test_pipeline_loads_and_generates_128(pipe):
    from diffusers import StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.dtype == torch.float32
    assert pipe.safety_checker is None
    out = pipe("a red circle above a blue square", num_inference_steps=4, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 128, 128, 3)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0


def test_cross_attention_at_two_resolutions(pipe):
    sizes = set()

    def hook(mod, args, kwargs, out):
        if kwargs.get("encoder_hidden_states") is not None:
            sizes.add(args[0].shape[1])

    handles = [m.register_forward_hook(hook, with_kwargs=True) for n, m in pipe.unet.named_modules() if n.endswith("attn2")]
    try:
        pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    finally:
        for h in handles:
            h.remove()
    assert {256, 64} <= sizes  # 16x16 and 8x8 query grids


def test_evaluate_scores_each_object_and_draws_the_sheet(pipe, tmp_path):
    """``stepx eval-shapes``'s scorer end to end (2 prompts, 3 steps): every object found gets its
    shape and colour words' IoU at each tau, adherence by shape is the mean over the objects of
    that shape (None for a shape no prompt names), and the contact sheet has a row per prompt."""
    from PIL import Image

    from bridge.models.shapes.evaluate import TAUS, eval_prompts, evaluate
    from bridge.models.shapes.vocab import SHAPES

    res = evaluate(pipe, eval_prompts(2), steps=3, sheet=tmp_path / "sheet.png")
    summary, objects = res["summary"], [o for p in res["per_prompt"] for o in p["objects"]]
    assert summary["prompts"] == len(res["per_prompt"]) == 2 and summary["objects"] == len(objects) >= 2
    present = [o for o in objects if o["present"]]
    assert summary["iou_count"] == len(present)
    assert all(0.0 <= o[f"iou_{kind}_{t}"] <= 1.0 for o in present for kind in ("shape", "colour") for t in TAUS)
    for shape in SHAPES:
        marks = [o["correct"] for o in objects if o["shape"] == shape]
        assert summary["adherence_by_shape"][shape] == (pytest.approx(sum(marks) / len(marks)) if marks else None)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (512, 128 * 2)


def test_missing_weights_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_shapes_pipeline(path=tmp_path)
