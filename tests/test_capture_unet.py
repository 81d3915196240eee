"""Capture on UNet pipelines, checked against an independent float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bridge.capture import (
    CaptureConfig,
    Query,
    UnsupportedPipelineError,
    UnsupportedProcessorError,
    WordNotFoundError,
    capture,
    supported_pipelines,
)
from bridge.models.tiny import tiny_sd_pipeline

PROMPT = "a red circle above a blue square"


def generate(pipe, prompt=PROMPT, steps=3, guidance=7.5, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np", **kw).images


class Recorder:
    """Records what enters every attention layer, to recompute maps independently in float64."""

    def __init__(self, pipe, cross: bool = True):
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.evals = 0
        self.handles = [pipe.unet.register_forward_pre_hook(self._eval)]
        for name, m in pipe.unet.named_modules():
            if name.endswith("attn2" if cross else "attn1"):
                self.handles.append(m.register_forward_pre_hook(self._hook(name, m), with_kwargs=True))

    def _eval(self, *_):
        self.evals += 1

    def _hook(self, name, module):
        def hook(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states")
            if ctx is None:
                ctx = x
            self.calls.append((name, module, self.evals - 1, x.detach().clone(), ctx.detach().clone()))

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def ref_probs(module, x, ctx, rows):
    """float64 softmax(QKᵀ/√d) per head: [B, heads, N, M]."""
    heads = module.heads
    wq, wk = module.to_q.weight.double(), module.to_k.weight.double()
    q = x[rows].double() @ wq.T
    k = ctx[rows].double() @ wk.T
    if module.to_q.bias is not None:
        q = q + module.to_q.bias.double()
    if module.to_k.bias is not None:
        k = k + module.to_k.bias.double()
    b, n, c = q.shape
    d = c // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)


def grid_of(n, latent):
    h, w = latent
    while h * w > n:
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def reference_cross(rec, batch, latent, size, weights=None, evals_per_step=1):
    """[steps, B, T, H, W] float64 weighted mean over layers and heads."""
    per_eval: dict[int, torch.Tensor] = {}
    total = 0.0
    names = set()
    for name, module, ev, x, ctx in rec.calls:
        rows = slice(x.shape[0] - batch, x.shape[0])
        p = ref_probs(module, x, ctx, rows)  # [B, h, N, T]
        w = torch.ones(module.heads, dtype=torch.float64) if weights is None else torch.tensor(weights.get(name, [1.0] * module.heads), dtype=torch.float64)
        m = torch.einsum("bhnt,h->btn", p, w)
        h, wd = grid_of(m.shape[-1], latent)
        m = F.interpolate(m.reshape(batch, -1, h, wd), size=size, mode="bilinear", align_corners=False)
        per_eval[ev] = per_eval.get(ev, 0) + m
        if name not in names:
            names.add(name)
            total += float(w.sum())
    evs = [per_eval[e] / total for e in sorted(per_eval)]
    return torch.stack([torch.stack(evs[i : i + evals_per_step]).mean(0) for i in range(0, len(evs), evals_per_step)])


def rel_err(a, b):
    return float((a.double() - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("guidance", [7.5, 1.0])
@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_cross_maps_match_float64_reference(request, which, guidance):
    pipe = request.getfixturevalue(f"{which}_pipe")
    rec = Recorder(pipe)
    try:
        with capture(pipe) as cap:
            generate(pipe, steps=3, guidance=guidance)
    finally:
        rec.remove()
    run = cap.last_run
    assert run.guidance == (guidance > 1)
    assert len(run.frames) == 3 and run.status == "done"
    got = torch.stack([f.cross for f in run.frames])  # [S, B, T, H, W]
    ref = reference_cross(rec, run.batch, run.latent_hw, run.resolution)
    # the maps come at the model's finest attention grid: the latent's for SD, half of it for SDXL
    side = {"sd": 32, "sdxl": 16}[which]
    assert run.latent_hw == (32, 32) and run.resolution == (side, side)
    assert got.shape == ref.shape == (3, 1, 77, side, side)
    assert rel_err(got, ref) < 1e-3
    # every pixel's cross-attention is a distribution over the 77 tokens
    assert torch.allclose(got.sum(2), torch.ones_like(got.sum(2)), atol=1e-4)


def captured_with_reference(pipe, steps: int = 2, **options):
    """``(image, plain image, maps [S, B, T, H, W], their float64 reference)`` of one generation
    captured with ``options``, after one without capture."""
    plain = generate(pipe, steps=steps)
    rec = Recorder(pipe)
    try:
        with capture(pipe, **options) as cap:
            image = generate(pipe, steps=steps)
    finally:
        rec.remove()
    run = cap.last_run
    return image, plain, torch.stack([f.cross for f in run.frames]), reference_cross(rec, run.batch, run.latent_hw, run.resolution)


def test_head_weights_are_a_weighted_mean(sd_pipe):
    layers = [n for n, _ in sd_pipe.unet.named_modules() if n.endswith("attn2")]
    weights = {layers[0]: [0.0, 1.0], layers[1]: [3.0, 0.5], layers[2]: [0.0, 0.0]}
    rec = Recorder(sd_pipe)
    try:
        with capture(sd_pipe, head_weights=weights) as cap:
            generate(sd_pipe, steps=2)
    finally:
        rec.remove()
    rec.calls = [c for c in rec.calls if c[0] != layers[2]]  # an all-zero layer is skipped entirely
    got = torch.stack([f.cross for f in cap.last_run.frames])
    ref = reference_cross(rec, 1, cap.last_run.latent_hw, cap.last_run.resolution, weights)
    assert layers[2] not in cap.last_run.layers
    assert rel_err(got, ref) < 1e-3
    uniform = capture(sd_pipe)
    with uniform:
        generate(sd_pipe, steps=2)
    assert rel_err(torch.stack([f.cross for f in uniform.last_run.frames]), ref) > 1e-2  # weights really change the map


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_image_identical_with_capture(request, which):
    pipe = request.getfixturevalue(f"{which}_pipe")
    plain = generate(pipe, steps=3)
    with capture(pipe, queries=[Query.box("box", 0.1, 0.1, 0.5, 0.5)]):
        captured = generate(pipe, steps=3)
    np.testing.assert_allclose(captured, plain, rtol=0, atol=1e-6)


def snapshot(pipe):
    procs = dict(pipe.unet.attn_processors)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in pipe.unet.modules())
    return procs, hooks, dict(pipe.scheduler.__dict__), "encode_prompt" in pipe.__dict__


def test_hooks_removed_exactly_also_after_exception(sd_pipe):
    procs, hooks, sched_dict, patched = snapshot(sd_pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(sd_pipe, queries=[Query.pixel("p", 0.5, 0.5)]) as cap:
            assert "step" in sd_pipe.scheduler.__dict__
            generate(sd_pipe, steps=2)
            raise RuntimeError("boom")
    procs2, hooks2, sched_dict2, patched2 = snapshot(sd_pipe)
    assert all(procs2[k] is procs[k] for k in procs) and procs2.keys() == procs.keys()
    assert hooks2 == hooks and not patched2 and not patched
    assert "step" not in sd_pipe.scheduler.__dict__ and "set_timesteps" not in sd_pipe.scheduler.__dict__
    assert len(cap.last_run.frames) == 2


@pytest.mark.parametrize("name,evals", [("heun", [2, 2, 2, 1]), ("dpm2", [2, 2, 2, 1]), ("dpm", [1, 1, 1, 1]), ("ddim", [1, 1, 1, 1])])
def test_step_index_rule_for_multi_evaluation_schedulers(name, evals):
    pipe = tiny_sd_pipeline(scheduler=name)
    seen = []
    with capture(pipe, on_step=lambda f, r: seen.append((f.step, f.total_steps, f.evaluations))) as cap:
        generate(pipe, steps=4)
    assert [s for s, _, _ in seen] == [0, 1, 2, 3]
    assert {t for _, t, _ in seen} == {4}
    assert [e for _, _, e in seen] == evals
    assert cap.last_run.status == "done"


def test_batched_prompts_keep_one_map_set_per_row(sd_pipe):
    prompts = ["a red circle", "a blue square on a green background"]
    with capture(sd_pipe) as cap:
        g = torch.Generator().manual_seed(0)
        sd_pipe(prompts, num_inference_steps=2, num_images_per_prompt=2, generator=g, output_type="np")
    run = cap.last_run
    assert run.batch == 4 and run.frames[0].cross.shape[0] == 4
    assert [run.tokens(i).prompt for i in range(4)] == [prompts[0], prompts[0], prompts[1], prompts[1]]
    assert run.word_maps(row=2).shape == (2, 7, 32, 32)
    # rows of the same prompt differ only by their noise; different prompts give different maps
    assert not torch.allclose(run.frames[0].cross[0], run.frames[0].cross[2])


def test_img2img_counts_only_the_steps_it_runs():
    pipe = tiny_sd_pipeline(img2img=True)
    image = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    with capture(pipe) as cap:
        generate(pipe, steps=10, image=image, strength=0.5)
    run = cap.last_run
    assert run.total_steps == 5 and len(run.frames) == 5 and run.status == "done"


def test_self_attention_queries_match_reference(sd_pipe):
    queries = [Query.pixel("px", 0.3, 0.6), Query.box("box", 0.0, 0.0, 0.5, 0.25), Query.polygon("tri", [(0.5, 0.1), (0.9, 0.9), (0.1, 0.9)])]
    rec = Recorder(sd_pipe, cross=False)
    try:
        with capture(sd_pipe, queries=queries) as cap:
            generate(sd_pipe, steps=1)
    finally:
        rec.remove()
    frame = cap.last_run.frames[0]
    size = cap.last_run.resolution
    for q in queries:
        total, acc = 0.0, 0
        for _name, module, _ev, x, _ctx in rec.calls:
            p = ref_probs(module, x, x, slice(x.shape[0] - 1, x.shape[0]))  # full matrix: reference only
            h, w = grid_of(p.shape[2], cap.last_run.latent_hw)
            rows = q.cell_weights(h, w).double()
            m = torch.einsum("bhrn,r->bn", p, rows).reshape(1, 1, h, w)
            acc = acc + F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0] * (h * w / (size[0] * size[1]))
            total += module.heads
        ref = acc / total
        assert rel_err(frame.self_maps[q.name], ref) < 1e-3, q.name
        assert abs(float(frame.self_maps[q.name].sum()) - 1.0) < 0.05


def test_word_maps_without_cross_attention_say_why(sd_pipe):
    """A run captured with cross=False has self-attention maps but no word maps: asking for them
    names the reason (it was a bare TypeError on frame.cross = None)."""
    with capture(sd_pipe, queries=[Query.pixel("p", 0.5, 0.5)], cross=False) as cap:
        generate(sd_pipe, steps=1)
    run = cap.last_run
    assert run.frames[0].cross is None and run.frames[0].self_maps["p"].shape == (1, 32, 32)
    for ask in (run.word_maps, run.mean_word_maps, lambda: run.word_map("circle")):
        with pytest.raises(ValueError, match="no cross-attention maps"):
            ask()


def test_diffused_query_spreads_over_more_cells(sd_pipe):
    with capture(sd_pipe, queries=[Query.pixel("p", 0.5, 0.5), Query.diffused("d", 0.5, 0.5, iterations=2)]) as cap:
        generate(sd_pipe, steps=1)
    f = cap.last_run.frames[0]
    assert f.self_maps["d"].shape == f.self_maps["p"].shape == (1, 32, 32)
    assert not torch.allclose(f.self_maps["d"], f.self_maps["p"])


def test_query_cells():
    w = Query.box("b", 0.0, 0.0, 0.5, 0.5).cell_weights(4, 4).view(4, 4)
    assert torch.equal(w > 0, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    assert abs(float(w.sum()) - 1) < 1e-6
    p = Query.pixel("p", 0.99, 0.0).cell_weights(4, 4).view(4, 4)
    assert p[0, 3] == 1
    tri = Query.polygon("t", [(0, 0), (1, 0), (0, 1)]).cell_weights(4, 4).view(4, 4) > 0
    assert tri[0, 0] and tri[0, 2] and not tri[3, 3] and not tri[2, 2]
    with pytest.raises(ValueError, match="outside"):
        Query.pixel("bad", 1.5, 0)


def test_detail_layers_keep_per_head_maps(sd_pipe):
    layer = [n for n, _ in sd_pipe.unet.named_modules() if n.endswith("attn2")][0]
    with capture(sd_pipe, detail_layers=[layer]) as cap:
        generate(sd_pipe, steps=1)
    d = cap.last_run.frames[0].layers
    assert list(d) == [layer]
    assert d[layer].shape[:3] == (1, 2, 77)


def test_memory_does_not_grow_with_layers(sd_pipe):
    with capture(sd_pipe) as cap:
        generate(sd_pipe, steps=2)
    f = cap.last_run.frames[0]
    assert f.cross.numel() == 77 * 32 * 32 and not f.layers and not f.self_maps


def test_word_errors_and_unsupported_things(sd_pipe):
    with capture(sd_pipe) as cap:
        generate(sd_pipe, steps=1)
    with pytest.raises(WordNotFoundError, match="'circle'"):
        cap.last_run.word_map("triangle")
    assert cap.last_run.word_map("a#2").shape == (32, 32)
    with pytest.raises(UnsupportedPipelineError, match="StableDiffusionPipeline"):
        capture(object())
    assert "StableDiffusionXLPipeline" in supported_pipelines()


def test_unknown_processor_is_refused_and_nothing_installed():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class MyProcessor(AttnProcessor2_0):
        pass

    pipe = tiny_sd_pipeline()
    pipe.unet.set_attn_processor(MyProcessor())
    hooks = sum(len(m._forward_hooks) for m in pipe.unet.modules())
    with pytest.raises(UnsupportedProcessorError, match="MyProcessor"):
        with capture(pipe):
            pass
    assert sum(len(m._forward_hooks) for m in pipe.unet.modules()) == hooks
    assert "step" not in pipe.scheduler.__dict__
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    with capture(pipe):  # a known processor works
        generate(pipe, steps=1)


def test_canonical_resolution_option(sd_pipe):
    with capture(sd_pipe, CaptureConfig(resolution=(48, 40))) as cap:
        generate(sd_pipe, steps=1)
    assert cap.last_run.frames[0].cross.shape == (1, 77, 48, 40)


def test_the_default_size_is_the_finest_attention_grid_and_an_explicit_one_still_wins(sdxl_pipe):
    """SDXL has no attention at its latent's grid: by default its maps come at the finest grid its
    layers have (no map is an upsampling of a coarser one), the same values as asking for that
    size; asking for the latent's size gives that, with the float64 reference's values. The
    grid is the one every layer's probabilities were found at (the reference's own walk)."""
    with capture(sdxl_pipe) as native:
        generate(sdxl_pipe, steps=2)
    with capture(sdxl_pipe, CaptureConfig(resolution=(16, 16))) as asked:
        generate(sdxl_pipe, steps=2)
    assert native.last_run.resolution == (16, 16) and native.last_run.latent_hw == (32, 32)
    for a, b in zip(native.last_run.frames, asked.last_run.frames):
        torch.testing.assert_close(a.cross, b.cross, rtol=0, atol=0)
    image, _plain, got, ref = captured_with_reference(sdxl_pipe, resolution=(32, 32))
    assert got.shape[-2:] == (32, 32) and rel_err(got, ref) < 1e-3
    # the model's grid, whichever layers a capture takes: maps of any layer choice or head
    # weighting keep one size (the coarsest block alone is upsampled to it)
    with capture(sdxl_pipe, layers="mid_block.*") as mid:
        generate(sdxl_pipe, steps=1)
    assert mid.last_run.resolution == (16, 16) and mid.last_run.frames[0].cross.shape[-2:] == (16, 16)


@pytest.mark.parametrize("which", ["sd", "sdxl", "dispatch", "shapes"])
def test_the_model_grid_is_its_finest_cross_attention_grid(request, which):
    """``map_grid`` (from the UNet's block structure, before any evaluation) is the finest grid
    every cross-attention layer was seen at in a real generation (whose layers' grids include one
    whose halving rounded up, 5 → 3), and rounds up as the UNet does where its halving is odd."""
    from bridge.capture.adapters import adapter_for
    from bridge.models.tiny import dispatch_sd_pipeline

    pipe = dispatch_sd_pipeline() if which == "dispatch" else request.getfixturevalue(f"{which}_pipe")
    rec = Recorder(pipe)
    side = 20  # latent cells: 20 → 10 → 5 → 3 (the last halving rounds 5 up)
    size = side * pipe.vae_scale_factor
    try:
        generate(pipe, steps=1, height=size, width=size)
    finally:
        rec.remove()
    seen = {grid_of(x.shape[1], (side, side)) for _n, _m, _e, x, _c in rec.calls}
    assert {h * w for h, w in seen} == {x.shape[1] for _n, _m, _e, x, _c in rec.calls}  # every layer on a grid
    want = {"sd": (20, 20), "sdxl": (10, 10), "dispatch": (20, 20), "shapes": (20, 20)}[which]
    assert max(seen) == want and adapter_for(pipe).map_grid((side, side)) == want
    if which == "sdxl":  # attention from the second block: one halving, rounding up
        assert adapter_for(pipe).map_grid((21, 19)) == (11, 10)


def test_prompt_embeds_give_maps_without_words(sd_pipe):
    emb = sd_pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    with capture(sd_pipe) as cap:
        g = torch.Generator().manual_seed(0)
        sd_pipe(prompt_embeds=emb, num_inference_steps=1, guidance_scale=1.0, generator=g, output_type="np")
    assert cap.last_run.frames[0].cross.shape == (1, 77, 32, 32)
    with pytest.raises(ValueError, match="prompt text"):
        cap.last_run.words  # noqa: B018 (the property raises)


def test_layers_are_found_once_per_unet_and_again_when_one_is_replaced():
    """Every run installs a new capture: the walk over the UNet's modules is done once, and done
    again when a layer module was swapped (its hooks must go on the new one)."""
    import copy

    from bridge.capture import adapter_for

    pipe = tiny_sd_pipeline()
    first = adapter_for(pipe).layers()
    again = adapter_for(pipe).layers()
    assert [(l.name, l.module) for l in again] == [(l.name, l.module) for l in first]
    name = next(l.name for l in first if l.cross)
    parent, _, leaf = name.rpartition(".")
    new = copy.deepcopy(pipe.unet.get_submodule(name))
    setattr(pipe.unet.get_submodule(parent), leaf, new)
    swapped = {l.name: l.module for l in adapter_for(pipe).layers()}
    assert swapped[name] is new and len(swapped) == len(first)
    with capture(pipe) as cap:
        generate(pipe, steps=1)
    assert cap.last_run.frames[0].cross.shape[1] == 77


def test_strict_prompt_length_raises_on_unet_pipelines(sd_pipe):
    """``capture(pipe, strict_prompt_length=True)`` used to be read by the MM-DiT path only."""
    from bridge.capture import PromptTooLongError, capture

    limit = sd_pipe.tokenizer.model_max_length
    long_prompt = " ".join(["red circle"] * limit)
    with pytest.raises(PromptTooLongError, match="these words were cut"):
        with capture(sd_pipe, strict_prompt_length=True):
            sd_pipe(long_prompt, num_inference_steps=1, output_type="latent")
    with capture(sd_pipe) as cap:  # not strict: the words are cut and reported, the run goes on
        sd_pipe(long_prompt, num_inference_steps=1, output_type="latent")
    assert cap.last_run.tokens(0).truncated_words
