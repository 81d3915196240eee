"""Options for an ungrounded shapes checkpoint (issue 22): caption rewrites, the local text
encoder, a frozen text encoder, the reused VAE; each trains, saves, exports and loads (CPU)."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import pytest
import torch

from bridge.models.shapes.world import REL_NAMES, World, parse_caption, relation_holds


@pytest.fixture(scope="module")
def world():
    return World(128, "cpu", seed=5)


def _objects(caption: str) -> Counter:
    return Counter((o["size"], o["colour"], o["shape"]) for o in parse_caption(caption)["objects"])


def test_rewrites_are_equivalent_scenes(world):
    sc = world.sample(256)
    sc2, perm = world.rewrite(sc, p=1.0)
    img, masks = world.render(sc)
    img2, masks2 = world.render(sc2)
    assert torch.equal(img, img2), "a rewrite describes the same picture"
    assert torch.equal(masks2, masks.gather(1, perm[:, :, None, None].expand_as(masks)))
    before, after = World.captions(sc), World.captions(sc2)
    changed = 0
    for i in range(len(sc)):
        n = int(sc.n[i])
        spec = parse_caption(after[i])
        assert _objects(after[i]) == _objects(before[i])
        assert spec["background"] == parse_caption(before[i])["background"]
        for k, rel in enumerate(spec["relations"]):  # every relation of the rewrite holds in the scene
            assert rel == REL_NAMES[int(sc2.rel[i, k])]
            assert relation_holds(rel, (float(sc2.cx[i, k]), float(sc2.cy[i, k])), (float(sc2.cx[i, k + 1]), float(sc2.cy[i, k + 1])))
        if n > 1:
            changed += after[i] != before[i]
            assert float(sc2.cx[i, 0]) == float(sc.cx[i, n - 1])  # the chain is reversed: last object first
    assert changed == int((sc.n > 1).sum())
    same, _ = world.rewrite(sc, p=0.0)
    assert World.captions(same) == before


def test_rewritten_tokens_match_clip_tokenizer_and_point_at_original_slots(world, tmp_path):
    from transformers import CLIPTokenizer

    from bridge.models.shapes.tokenizer import save_tokenizer
    from bridge.models.shapes.world import COLOUR_NAMES, SHAPES

    tok = CLIPTokenizer.from_pretrained(str(save_tokenizer(tmp_path / "tok")))
    sc = world.sample(128)
    state = world.gen.get_state()
    ids, pos = world.caption_tokens(sc, rewrite=True)
    world.gen.set_state(state)
    sc2, _ = world.rewrite(sc)  # the same draw
    text = World.captions(sc2)
    assert text != World.captions(sc)  # about half were rewritten
    ref = tok(text, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ref, ids)
    name = {v: k for k, v in world.ids.items()}
    for i in range(len(sc)):
        for k in range(int(sc.n[i])):  # positions follow the scene's own slots (what render's masks follow)
            assert name[int(ids[i, pos["colour"][i, k]])] == COLOUR_NAMES[sc.colour[i, k]]
            assert name[int(ids[i, pos["shape"][i, k]])] == SHAPES[sc.shape[i, k]]


def test_local_text_encoder_sees_only_its_neighbours(tmp_path):
    from bridge.models.shapes.local_text import band_mask
    from bridge.models.shapes.model import build_text_encoder

    assert torch.equal(band_mask(4, 1), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool))
    te = build_text_encoder(text_window=1).eval()
    layers = te.config.num_hidden_layers
    reach = layers * 1
    ids = torch.randint(0, 100, (1, 32))
    far = ids.clone()
    far[0, 20:] = (far[0, 20:] + 7) % 100  # change every token from 20 on
    with torch.no_grad():
        a, b = te(ids).last_hidden_state, te(far).last_hidden_state
    assert torch.allclose(a[0, : 20 - reach], b[0, : 20 - reach], atol=1e-5), "tokens out of reach are unaffected"
    assert not torch.allclose(a[0, 20 - reach], b[0, 20 - reach], atol=1e-5), "a token at the reach's edge is affected"
    # no absolute positions: the same words shifted give the same outputs
    shifted = torch.roll(ids, 5, 1)
    with torch.no_grad():
        c = te(shifted).last_hidden_state
    assert torch.allclose(a[0, 5:24], c[0, 10:29], atol=1e-4)  # away from the ends (3 tokens of reach)
    ordinary = build_text_encoder().eval()  # the shipped kind stays causal and global
    with torch.no_grad():
        d, e = ordinary(ids).last_hidden_state, ordinary(far).last_hidden_state
    assert torch.allclose(d[0, :20], e[0, :20], atol=1e-5) and not torch.allclose(d[0, 21:], e[0, 21:], atol=1e-3)


def _train(tmp_path, *extra: str) -> dict:
    from bridge.commands.train_shapes import add_arguments
    from bridge.models.shapes import SHAPES_WEIGHTS
    from bridge.models.shapes.train import run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--device", "cpu", "--vae-from", str(SHAPES_WEIGHTS), "--out", str(tmp_path / "out"), "--ckpt-dir", str(tmp_path / "ck"),
        "--minutes", "0.1", "--batch", "2", "--log-every", "1", "--ground", "0", "--skip-samples", *extra,
    ])
    assert run(args) == 0
    return json.loads((tmp_path / "out" / "meta.json").read_text())


@pytest.mark.parametrize("extra", [("--rewrite-captions",), ("--text-encoder", "local", "--rewrite-captions"), ("--text-encoder", "local", "--freeze-text")])
def test_options_train_export_and_load(tmp_path, extra):
    from safetensors.torch import load_file

    from bridge.models.loading import load_pipeline
    from bridge.models.shapes import SHAPES_WEIGHTS, load_shapes_pipeline
    from bridge.models.shapes.train import export

    meta = _train(tmp_path, *extra)
    assert meta["step"] > 0 and meta["vae_step"] == 0, "the UNet trained; the VAE phase was skipped"
    assert meta["rewrite_captions"] == ("--rewrite-captions" in extra) and meta["freeze_text"] == ("--freeze-text" in extra)
    log = (tmp_path / "out" / "train_log.txt").read_text()
    assert "VAE from" in log and "unet step 1:" in log
    local = "local" in extra
    (tmp_path / "out" / "vae.safetensors").unlink()  # weights travel without the reused VAE (bench/train_free.sh)
    export(tmp_path / "out", tmp_path / "pipe")
    shipped_vae = load_file(str(SHAPES_WEIGHTS / "vae" / "diffusion_pytorch_model.safetensors"))
    new_vae = load_file(str(tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(shipped_vae[k], new_vae[k]) for k in shipped_vae), "the shipped VAE is reused, untouched"
    cfg = json.loads((tmp_path / "pipe" / "text_encoder" / "config.json").read_text())
    assert cfg.get("local_window") == (1 if local else None)
    for pipe in (load_shapes_pipeline("cpu", torch.float32, path=tmp_path / "pipe"), load_pipeline(str(tmp_path / "pipe"), device="cpu")[0]):
        te = pipe.text_encoder
        ids = torch.randint(0, 100, (1, 32))
        far = ids.clone()
        far[0, 25:] = (far[0, 25:] + 3) % 100
        with torch.no_grad():
            a, b = te(ids).last_hidden_state, te(far).last_hidden_state
        assert torch.allclose(a[0, :20], b[0, :20], atol=1e-3)  # causal or local: the prefix never sees the tail
        assert torch.allclose(a[0, 26], b[0, 26], atol=1e-3) is False  # a changed token changes
        if local:
            pos = te.text_model.embeddings if hasattr(te, "text_model") else te.embeddings
            assert float(pos.position_embedding.weight.abs().max()) == 0.0
            assert torch.allclose(a[0, :22], b[0, :22], atol=1e-3), "the band mask is installed on load (3 layers x 1 token of reach)"
        g = torch.Generator().manual_seed(0)
        img = pipe("a red circle above a blue square", num_inference_steps=2, guidance_scale=4.0, generator=g, output_type="np").images
        assert img.shape == (1, 128, 128, 3) and float(img.std()) > 0
