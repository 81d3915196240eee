"""The shapes world: masks, captions, held-out compositions, the scorer (CPU, fast)."""

import numpy as np
import pytest
import torch

from bridge.models.shapes.evaluate import classify_shape, eval_prompts, score_image, segment
from bridge.models.shapes.vocab import BACKGROUNDS, COLOURS, HELD_OUT_PAIRS, SHAPES
from bridge.models.shapes.world import BG_NAMES, COLOUR_NAMES, World, allowed_pairs, parse_caption, shape_masks


@pytest.fixture(scope="module")
def batch():
    w = World(128, "cpu", seed=3)
    sc = w.sample(256)
    img, masks = w.render(sc)
    return w, sc, img, masks


def test_masks_match_rendered_colours(batch):
    w, sc, img, masks = batch
    pal = torch.tensor([BACKGROUNDS[c] for c in BG_NAMES])
    for i in range(64):
        union = masks[i].any(0)
        for k in range(int(sc.n[i])):
            m = masks[i, k]
            assert m.sum() > 50, "every object is visible"
            col = pal[sc.colour[i, k]]
            assert torch.all(img[i][:, m] == col[:, None])
        assert not (masks[i].sum(0) > 1).any(), "objects never overlap"
        assert torch.all(img[i][:, ~union] == pal[sc.bg[i]][:, None])


def test_shapes_stay_inside_their_box():
    """Each shape lies within its box [-1.1, 1.1]^2 (guards against an inverted inside test)."""
    g = torch.linspace(-2, 2, 201)
    v, u = torch.meshgrid(g, g, indexing="ij")
    for i, s in enumerate(SHAPES):
        m = shape_masks(u[None], v[None], torch.tensor([i]))[0]
        assert m[100, 100], f"{s} contains its centre"
        assert not m[torch.maximum(u.abs(), v.abs()) > 1.1].any(), f"{s} stays within its box"
        assert 0.3 < m.float().mean() * 16 / np.pi < 1.05


def test_captions_parse_back_to_the_scene(batch):
    w, sc, _, _ = batch
    for i, cap in enumerate(World.captions(sc)):
        spec = parse_caption(cap)
        n = int(sc.n[i])
        assert len(spec["objects"]) == n
        for k, o in enumerate(spec["objects"]):
            assert o["colour"] == COLOUR_NAMES[sc.colour[i, k]]
            assert o["shape"] == SHAPES[sc.shape[i, k]]
        assert len(spec["relations"]) == n - 1
        bg = spec["background"] or "gray"
        assert bg == BG_NAMES[sc.bg[i]]


def test_relations_hold_in_the_layout(batch):
    from bridge.models.shapes.world import REL_NAMES, relation_holds

    w, sc, _, _ = batch
    for i in range(len(sc)):
        for k in range(int(sc.n[i]) - 1):
            a = (float(sc.cx[i, k]), float(sc.cy[i, k]))
            b = (float(sc.cx[i, k + 1]), float(sc.cy[i, k + 1]))
            assert relation_holds(REL_NAMES[sc.rel[i, k]], a, b)


def test_caption_ids_match_clip_tokenizer(batch, tmp_path):
    from transformers import CLIPTokenizer

    from bridge.models.shapes.tokenizer import save_tokenizer

    w, sc, _, _ = batch
    tok = CLIPTokenizer.from_pretrained(str(save_tokenizer(tmp_path / "tok")))
    ref = tok(World.captions(sc), padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ref, w.caption_ids(sc))


def test_held_out_pairs_never_sampled_in_training():
    w = World(128, "cpu", seed=11)
    held = {(COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in HELD_OUT_PAIRS}
    seen = set()
    for _ in range(8):
        sc = w.sample(512)
        valid = sc.shape >= 0
        pairs = set(zip(sc.colour[valid].tolist(), sc.shape[valid].tolist()))
        assert not (pairs & held)
        seen |= pairs
    assert len(seen) == len(COLOURS) * len(SHAPES) - len(HELD_OUT_PAIRS), "every training pair occurs"
    assert len(allowed_pairs(True)) == len(HELD_OUT_PAIRS)


def test_eval_prompts_use_held_out_pairs():
    held = set(HELD_OUT_PAIRS)
    for p in eval_prompts(40, split="heldout"):
        spec = parse_caption(p)
        assert any((o["colour"], o["shape"]) in held for o in spec["objects"])
        assert len({o["colour"] for o in spec["objects"]}) == len(spec["objects"])
    for p in eval_prompts(40, split="train"):
        assert not any((o["colour"], o["shape"]) in held for o in parse_caption(p)["objects"])


def test_scorer_is_right_on_ground_truth_renders():
    prompts = eval_prompts(30, seed=7)
    w = World(128, "cpu", seed=1)
    sc = w.scenes_from_specs([parse_caption(p) for p in prompts])
    img, masks = w.render(sc)
    for i, p in enumerate(prompts):
        r = score_image(img[i].permute(1, 2, 0).numpy(), p)
        assert all(o["correct"] for o in r["objects"]), (p, [(o["shape"], o["shape_found"]) for o in r["objects"]])
        assert all(r["relations"]) and r["background"]
        for k, o in enumerate(r["objects"]):
            gt = masks[i, k].numpy()
            assert (o["mask"] & gt).sum() / (o["mask"] | gt).sum() > 0.98


def test_segment_and_classify_simple():
    img = np.full((64, 64, 3), 0.5, np.float32)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    disc = (xx - 32) ** 2 + (yy - 30) ** 2 <= 15**2
    img[disc] = COLOURS["red"]
    lab = segment(img)
    assert (lab == BG_NAMES.index("red")).sum() == disc.sum()
    assert classify_shape(disc)[0] == "circle"


def test_parse_caption_errors_name_the_grammar():
    with pytest.raises(ValueError, match="COLOUR SHAPE"):
        parse_caption("a red dog")
