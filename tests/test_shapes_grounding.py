"""The training-time token grounding of the shapes model (bridge/models/shapes/grounding.py)
and the word positions the world reports for it."""

from __future__ import annotations

import pytest
import torch

from bridge.models.shapes.grounding import grounding_loss, install, targets
from bridge.models.shapes.vocab import SHAPES
from bridge.models.shapes.world import BG_NAMES, COLOUR_NAMES, World


@pytest.fixture(scope="module")
def world() -> World:
    return World(128, "cpu", seed=3)


def test_caption_tokens_point_at_each_objects_words(world):
    sc = world.sample(64)
    ids, pos = world.caption_tokens(sc)
    assert torch.equal(ids, world.caption_ids(sc))
    name = {v: k for k, v in world.ids.items()}
    sizes = ("", "small", "large")
    for i in range(64):
        n = int(sc.n[i])
        for k in range(3):
            if k >= n:
                assert pos["colour"][i, k] == pos["shape"][i, k] == pos["size"][i, k] == -1
                continue
            assert name[int(ids[i, pos["colour"][i, k]])] == COLOUR_NAMES[sc.colour[i, k]]
            assert name[int(ids[i, pos["shape"][i, k]])] == SHAPES[sc.shape[i, k]]
            if sc.size_word[i, k]:
                assert name[int(ids[i, pos["size"][i, k]])] == sizes[int(sc.size_word[i, k])]
            else:
                assert pos["size"][i, k] == -1
        if sc.bg_word[i]:
            assert name[int(ids[i, pos["background"][i]])] == BG_NAMES[sc.bg[i]]
        else:
            assert pos["background"][i] == -1


def test_processor_keeps_the_unet_output_and_records_every_cross_layer(world, tmp_path):
    from bridge.models.shapes.model import build_pipeline

    pipe = build_pipeline(tmp_path / "tok")  # random weights are enough
    sc = world.sample(2)
    ids, _ = world.caption_tokens(sc)
    with torch.no_grad():
        enc = pipe.text_encoder(ids).last_hidden_state
        z, t = torch.randn(2, 8, 16, 16), torch.tensor([10, 900])
        ref = pipe.unet(z, t, enc).sample
        store = install(pipe.unet)
        out = pipe.unet(z, t, enc).sample
    assert torch.allclose(out, ref, atol=1e-5)
    cross = [n for n in pipe.unet.attn_processors if ".attn2." in n]
    assert len(store) == len(cross) == 7
    for probs in store:
        assert probs.shape[0] == 2 and probs.shape[2] == ids.shape[1] and probs.shape[1] in (256, 64, 16)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)


def _one_word(region_cells: torch.Tensor, map_cells: torch.Tensor) -> torch.Tensor:
    """Loss of one grounded word (token 1) whose 4x4 attention map is ``map_cells`` and whose
    region, drawn at 16x16, covers ``region_cells`` (4x4 bool)."""
    regions = region_cells.float().repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None]  # [1, 1, 16, 16]
    probs = torch.full((1, 16, 3), 1e-3)
    probs[0, :, 1] = map_cells.flatten()
    return grounding_loss([probs], torch.tensor([[1]]), regions, torch.tensor([[True]]))


def test_loss_is_zero_for_a_map_that_is_the_region_and_grows_away_from_it():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 0:2] = True
    exact = _one_word(region, region.float())
    uniform = _one_word(region, torch.ones(4, 4))
    point = torch.zeros(4, 4)
    point[1, 1] = 1.0
    inside_point = _one_word(region, point)  # all mass inside, but covers a quarter of the region
    elsewhere = _one_word(region, (~region).float())
    assert exact.item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < inside_point < uniform < elsewhere
    assert elsewhere.item() == pytest.approx(2.0, abs=1e-4)  # mass 0 and IoU 0


def test_invalid_words_do_not_count_and_targets_cover_objects_and_background(world):
    sc = world.sample(4)
    _, masks = world.render(sc)
    _, positions = world.caption_tokens(sc)
    pos, regions, valid = targets(masks, positions)
    assert pos.shape == valid.shape == (4, 10) and regions.shape == (4, 10, 128, 128)
    assert torch.equal(valid[:, 9], sc.bg_word)
    assert torch.equal(regions[:, 9], 1 - masks.float().amax(1))  # background = no object
    assert torch.equal(valid[:, :3], sc.shape >= 0)
    probs = torch.rand(4, 64, 32).softmax(-1)
    base = grounding_loss([probs], pos, regions, valid)
    assert (pos[valid] > 0).all()  # a grounded word is never the start token...
    assert (pos[~valid] == 0).all()  # ...where every absent word points
    changed = probs.clone()
    changed[:, :, 0] = torch.rand(4, 64)
    assert grounding_loss([changed], pos, regions, valid).item() == pytest.approx(base.item(), rel=1e-6)
    changed[:, :, pos[0, 0]] = torch.rand(4, 64)  # a grounded word's map does count
    assert grounding_loss([changed], pos, regions, valid).item() != pytest.approx(base.item(), rel=1e-6)
