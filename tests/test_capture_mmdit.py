"""Capture on MM-DiT pipelines (SD3 joint attention, FLUX double/single stream), checked
against an independent float64 reference of the joint softmax."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch

from bridge.capture import CaptureConfig, Query, UnsupportedProcessorError, capture, supported_pipelines
from bridge.capture.maps import joint_text_probabilities
from bridge.capture.tokens import build_offset_token_map
from bridge.models.tiny import t5_tokenizer, tiny_flux_pipeline, tiny_sd3_pipeline

PROMPT = "a red circle above a blue square"
T5_LEN = 32
ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module")
def sd3_pipe():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline()


def generate(pipe, prompt=PROMPT, steps=3, guidance=7.0, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance, generator=g,
                max_sequence_length=T5_LEN, output_type="np", **kw).images


class Recorder:
    """Records what enters (and leaves) every joint attention layer."""

    def __init__(self, pipe, flux: bool):
        self.calls = []
        self.evals = 0
        self.txt_len = 0
        t = pipe.transformer
        self.handles = [t.register_forward_pre_hook(self._eval, with_kwargs=True)]
        layers = [(f"transformer_blocks.{i}.attn", b.attn, "double" if flux else "sd3") for i, b in enumerate(t.transformer_blocks)]
        if flux:
            layers += [(f"single_transformer_blocks.{i}.attn", b.attn, "single") for i, b in enumerate(t.single_transformer_blocks)]
        for name, module, kind in layers:
            self.handles.append(module.register_forward_hook(self._hook(name, module, kind), with_kwargs=True))

    def _eval(self, _m, args, kwargs):
        self.evals += 1
        self.txt_len = kwargs["encoder_hidden_states"].shape[1]

    def _hook(self, name, module, kind):
        def hook(_m, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states")
            rope = kwargs.get("image_rotary_emb")
            img_out = out[0] if isinstance(out, tuple) else out
            self.calls.append(dict(name=name, module=module, kind=kind, ev=self.evals - 1, x=x.clone(), txt=self.txt_len,
                                   ctx=None if ctx is None else ctx.clone(), rope=rope, out=img_out.clone()))

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def rope64(x, cos, sin):
    """RoPE on [b, S, heads, d] with interleaved (real, imag) pairs, float64."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
    return x * cos[None, :, None] + rotated * sin[None, :, None]


@torch.no_grad()
def ref_layer(call, batch):
    """float64 joint attention of the conditional rows: (P_text [b, h, N, T], image output)."""
    m = copy.deepcopy(call["module"]).double()
    rows = slice(call["x"].shape[0] - batch, call["x"].shape[0])
    x = call["x"][rows].double()
    heads = m.heads
    split = lambda y: y.view(y.shape[0], y.shape[1], heads, -1)  # [b, S, h, d]
    q, k, v = split(m.to_q(x)), split(m.to_k(x)), split(m.to_v(x))
    q, k = m.norm_q(q), m.norm_k(k)
    kind = call["kind"]
    if kind != "single":
        c = call["ctx"][rows].double()
        qt, kt, vt = split(m.add_q_proj(c)), split(m.add_k_proj(c)), split(m.add_v_proj(c))
        if m.norm_added_q is not None:
            qt, kt = m.norm_added_q(qt), m.norm_added_k(kt)
    if kind == "sd3":  # [image, text]
        n, t = x.shape[1], c.shape[1]
        q, k, v = torch.cat([q, qt], 1), torch.cat([k, kt], 1), torch.cat([v, vt], 1)
        img, txt = slice(0, n), slice(n, n + t)
    else:  # FLUX: [text, image]
        if kind == "double":
            t = c.shape[1]
            q, k, v = torch.cat([qt, q], 1), torch.cat([kt, k], 1), torch.cat([vt, v], 1)
        else:
            t = call["txt"]
        cos, sin = (r.double() for r in call["rope"])
        q, k = rope64(q, cos, sin), rope64(k, cos, sin)
        img, txt = slice(t, q.shape[1]), slice(0, t)
    q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # [b, h, S, d]
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)  # full matrix: reference only
    o = (p @ v).transpose(1, 2).flatten(2)[:, img]
    if kind != "single":
        o = m.to_out[0](o)
    return p[:, :, img, txt], o


def reference(rec, batch, grid, weights=None, detail=None):
    """[steps, B, T, h, w] float64 weighted mean over layers and heads (one evaluation per step)."""
    per_eval, total, names = {}, 0.0, set()
    for call in rec.calls:
        p, o = ref_layer(call, batch)
        # the reference really is the model's attention: it reproduces the layer output
        got = call["out"][-batch:].double()
        if call["kind"] == "single":
            got = got[:, call["txt"]:]
        assert float((got - o).abs().max() / o.abs().max()) < 1e-4, call["name"]
        heads = call["module"].heads
        w = torch.tensor((weights or {}).get(call["name"], [1.0] * heads), dtype=torch.float64)
        if not w.sum():
            continue
        if detail is not None and call["name"] == detail[0] and call["ev"] == 0:
            detail[1].append(p)
        m = torch.einsum("bhnt,h->btn", p, w).reshape(batch, p.shape[-1], *grid)
        per_eval[call["ev"]] = per_eval.get(call["ev"], 0) + m
        if call["name"] not in names:
            names.add(call["name"])
            total += float(w.sum())
    return torch.stack([per_eval[e] / total for e in sorted(per_eval)])


def rel_err(a, b):
    return float((a.double() - b).abs().max() / b.abs().max())


def run_with_reference(pipe, flux, steps=3, **kw):
    rec = Recorder(pipe, flux)
    try:
        with capture(pipe, **kw.pop("options", {})) as cap:
            generate(pipe, steps=steps, **kw)
    finally:
        rec.remove()
    return cap, rec


# --- exactness -------------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [7.0, 1.0])
def test_sd3_maps_are_the_joint_softmax_float64(sd3_pipe, guidance):
    cap, rec = run_with_reference(sd3_pipe, False, guidance=guidance)
    run = cap.last_run
    assert run.guidance == (guidance > 1) and run.status == "done" and len(run.frames) == 3
    got = torch.stack([f.cross for f in run.frames])
    ref = reference(rec, run.batch, run.latent_hw)
    assert got.shape == ref.shape == (3, 1, 77 + T5_LEN, 16, 16)
    ERRORS[f"sd3 cfg={guidance}"] = err = rel_err(got, ref)
    assert err < 1e-3
    # joint softmax: an image query's mass on text is < 1 (the rest goes to image keys)
    mass = got.sum(2)
    assert float(mass.max()) < 1.0 and float(mass.min()) > 0.0


def test_flux_maps_are_the_joint_softmax_float64(flux_pipe):
    cap, rec = run_with_reference(flux_pipe, True, guidance=3.5)
    run = cap.last_run
    assert run.layers == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"]
    got = torch.stack([f.cross for f in run.frames])
    ref = reference(rec, run.batch, run.latent_hw)
    assert got.shape == ref.shape == (3, 1, T5_LEN, 16, 16)
    ERRORS["flux"] = err = rel_err(got, ref)
    assert err < 1e-3


def test_head_weights_and_detail_layers(flux_pipe):
    weights = {"transformer_blocks.0.attn": [0.0, 2.0], "single_transformer_blocks.1.attn": [0.0, 0.0]}
    layer = "single_transformer_blocks.0.attn"
    opts = dict(head_weights=weights, detail_layers=[layer])
    cap, rec = run_with_reference(flux_pipe, True, steps=2, options=opts)
    run = cap.last_run
    assert "single_transformer_blocks.1.attn" not in run.layers
    per_head: list = []
    ref = reference(rec, 1, run.latent_hw, weights, detail=(layer, per_head))
    ERRORS["flux head weights"] = err = rel_err(torch.stack([f.cross for f in run.frames]), ref)
    assert err < 1e-3
    d = run.frames[0].layers[layer]  # [B, heads, T, h, w]
    assert d.shape == (1, 2, T5_LEN, 16, 16)
    ref_d = per_head[0].permute(0, 1, 3, 2).reshape(1, 2, T5_LEN, 16, 16)
    assert rel_err(d, ref_d) < 1e-3


@pytest.mark.parametrize("budget", [1 << 30, 300])
def test_blockwise_normaliser_matches_float64(budget):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 50, 8, generator=g) * 2
    k = torch.randn(2, 3, 70, 8, generator=g) * 2
    text = slice(50, 70)
    p = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8), -1)[..., text]  # [b, h, N, T]
    w = torch.tensor([1.0, 0.5, 0.0])
    got = joint_text_probabilities(q, k, text, w, budget)
    assert rel_err(got, torch.einsum("bhnt,h->btn", p, w.double())) < 1e-5
    assert rel_err(joint_text_probabilities(q, k, slice(0, 20), None, budget),
                   torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8), -1)[..., :20].transpose(-1, -2)) < 1e-5


# --- the normaliser from the model's own attention call (sdpa_tap) ----------------------------------
def _maps(pipe, **options):
    with capture(pipe, **options) as cap:
        image = generate(pipe, steps=2)
    return image, torch.stack([f.cross for f in cap.last_run.frames])


def test_sd3_normaliser_comes_from_the_models_own_attention_call(sd3_pipe, monkeypatch):
    """Every joint layer's lse comes from the SDPA call the processor makes (no second attention
    call); the stand-in is in the processor's module only while a capture runs."""
    import diffusers.models.attention_processor as ap

    from bridge.capture import maps, sdpa_tap

    given, recomputed = [], []
    real = sdpa_tap.attention_with_lse
    monkeypatch.setattr(sdpa_tap, "attention_with_lse", lambda q, k, v: given.append(real(q, k, v)[1] is not None) or real(q, k, v))
    monkeypatch.setattr(maps, "fused_logsumexp", lambda *a: recomputed.append(1))
    assert ap.F is torch.nn.functional
    with capture(sd3_pipe) as cap:
        assert ap.F is not torch.nn.functional
        with capture(tiny_sd3_pipeline()):  # a second user of the same module's namespace comes and goes
            pass
        assert ap.F is not torch.nn.functional  # still there for the first
        generate(sd3_pipe, steps=2)
    assert ap.F is torch.nn.functional
    layers = len(cap.last_run.layers)
    assert given == [True] * (2 * layers) and not recomputed  # 2 steps, CFG in one batch


def test_flux_normaliser_comes_from_the_models_own_attention_call(flux_pipe, monkeypatch):
    """FLUX's processor calls diffusers' dispatch_attention_fn: with the native backend the tap
    takes every joint layer's q, k and lse from that call (no projections observed, no norms or
    RoPE applied again, no second attention), and puts the function back afterwards."""
    import diffusers.models.transformers.transformer_flux as tf

    from bridge.capture import maps, sdpa_tap

    given, recomputed = [], []
    real = sdpa_tap.attention_with_lse
    monkeypatch.setattr(sdpa_tap, "attention_with_lse", lambda q, k, v: given.append(real(q, k, v)[1] is not None) or real(q, k, v))
    monkeypatch.setattr(maps, "fused_logsumexp", lambda *a: recomputed.append(1))
    original = tf.dispatch_attention_fn
    hooks = sum(len(m._forward_hooks) for m in flux_pipe.transformer.modules())
    with capture(flux_pipe) as cap:
        assert tf.dispatch_attention_fn is sdpa_tap.dispatch_attention_fn
        assert sum(len(m._forward_hooks) for m in flux_pipe.transformer.modules()) == hooks + 1  # the evaluation's end: no projection or layer hooks
        assert all("forward" in layer.module.__dict__ for layer in cap.cross_layers)  # each layer's forward shadowed
        generate(flux_pipe, steps=2)
    assert tf.dispatch_attention_fn is original
    assert given == [True] * (2 * len(cap.last_run.layers)) and not recomputed


def test_flux_maps_are_the_same_with_another_backend_or_without_the_tap(flux_pipe, monkeypatch):
    """Another attention backend (here diffusers' math one) keeps its own kernel and the capture
    computes the normaliser; a processor that cannot be tapped is observed at its projections.
    Same maps, image unchanged."""
    from bridge.capture import sdpa_tap

    plain = generate(flux_pipe, steps=2)
    image, tapped = _maps(flux_pipe)
    np.testing.assert_array_equal(image, plain)
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend

    with attention_backend("_native_math"):  # the active backend, for every processor
        plain_math = generate(flux_pipe, steps=2)
        image_math, other = _maps(flux_pipe)
    np.testing.assert_array_equal(image_math, plain_math)
    assert rel_err(other, tapped.double()) < 1e-5
    t = flux_pipe.transformer
    t.set_attention_backend("_native_math")  # the processors' own backend (it also sets the active one)
    try:
        image_set, per_processor = _maps(flux_pipe)
    finally:
        t.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)  # reset leaves the active one
    np.testing.assert_array_equal(image_set, plain_math)
    assert rel_err(per_processor, tapped.double()) < 1e-5
    monkeypatch.setattr(sdpa_tap, "tappable", lambda processor: False)
    image_hooks, hooked = _maps(flux_pipe)
    np.testing.assert_array_equal(image_hooks, plain)
    assert rel_err(hooked, tapped.double()) < 1e-5


def test_sd3_maps_and_image_are_the_same_whether_or_not_the_kernel_gives_the_lse(sd3_pipe):
    """The math backend has no lse to give: the capture computes the normaliser itself."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    plain = generate(sd3_pipe, steps=2)
    image, tapped = _maps(sd3_pipe)
    with sdpa_kernel(SDPBackend.MATH):
        plain_math = generate(sd3_pipe, steps=2)
        image_math, untapped = _maps(sd3_pipe)
    np.testing.assert_array_equal(image, plain)
    np.testing.assert_array_equal(image_math, plain_math)
    assert rel_err(tapped, untapped.double()) < 1e-5


def test_a_kernel_whose_output_differs_is_not_used(sd3_pipe, monkeypatch, caplog):
    """The one-time check: a kernel that would change the image is never used for these shapes."""
    from bridge.capture import sdpa_tap

    def off_by_a_bit(q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)[:2]
        return out + 1e-3, lse

    plain = generate(sd3_pipe, steps=2)
    _, good = _maps(sd3_pipe)
    monkeypatch.setattr(sdpa_tap, "_checked", {})
    monkeypatch.setitem(sdpa_tap._KERNELS, ("cpu", sdpa_tap._FLASH), off_by_a_bit)
    with caplog.at_level("WARNING"):
        image, maps_ = _maps(sd3_pipe)
    np.testing.assert_array_equal(image, plain)
    assert "no exact output" in caplog.text and set(sdpa_tap._checked.values()) == {False}
    assert rel_err(maps_, good.double()) < 1e-5


# --- image unchanged, hooks removed ------------------------------------------------------------------
@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_image_identical_with_capture(request, which):
    pipe = request.getfixturevalue(f"{which}_pipe")
    plain = generate(pipe, steps=2)
    with capture(pipe, detail_layers=["*"]):
        captured = generate(pipe, steps=2)
    np.testing.assert_array_equal(captured, plain)


def snapshot(pipe):
    t = pipe.transformer
    procs = dict(t.attn_processors)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in t.modules())
    shadowed = {name for name, m in t.named_modules() if "forward" in m.__dict__}  # layers' forward shadowed by the capture
    return procs, hooks, set(pipe.scheduler.__dict__), set(pipe.__dict__), set(t.__dict__), shadowed


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_hooks_removed_exactly_also_after_exception(request, which):
    pipe = request.getfixturevalue(f"{which}_pipe")
    before = snapshot(pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(pipe) as cap:
            assert "step" in pipe.scheduler.__dict__ and "encode_prompt" in pipe.__dict__
            generate(pipe, steps=2)
            raise RuntimeError("boom")
    after = snapshot(pipe)
    assert after[0].keys() == before[0].keys() and all(after[0][k] is before[0][k] for k in before[0])
    assert after[1:] == before[1:]
    assert len(cap.last_run.frames) == 2


# --- steps -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which,guidance", [("sd3", 7.0), ("flux", 3.5)])
def test_flow_match_euler_gives_one_frame_per_step(request, which, guidance):
    pipe = request.getfixturevalue(f"{which}_pipe")
    seen = []
    with capture(pipe, on_step=lambda f, r: seen.append((f.step, f.total_steps, f.evaluations))) as cap:
        generate(pipe, steps=4, guidance=guidance)
    assert seen == [(i, 4, 1) for i in range(4)]
    assert cap.last_run.status == "done" and cap.last_run.info["scheduler"] == "FlowMatchEulerDiscreteScheduler"


def test_flux_true_cfg_skips_the_negative_pass(flux_pipe):
    with capture(flux_pipe) as plain:
        generate(flux_pipe, steps=2)
    with capture(flux_pipe) as cap:
        generate(flux_pipe, steps=2, negative_prompt="a green triangle", true_cfg_scale=2.0)
    run = cap.last_run
    assert [f.evaluations for f in run.frames] == [1, 1]
    assert run.tokens().prompt == PROMPT  # not the negative prompt, encoded second
    # step 0 sees the same latents: the conditional maps are the same as without true CFG
    assert torch.allclose(run.frames[0].cross, plain.last_run.frames[0].cross, atol=1e-6)
    assert "cache_context" not in flux_pipe.transformer.__dict__


def test_flux_frame_latents_are_unpacked(flux_pipe):
    with capture(flux_pipe) as cap:
        generate(flux_pipe, steps=1)
    assert cap.last_run.frames[0].latents.shape == (1, 4, 32, 32)


# --- tokens ------------------------------------------------------------------------------------------
def test_sd3_text_encoder_option(sd3_pipe):
    maps = {}
    for choice in ("clip", "t5", "both"):
        with capture(sd3_pipe, extra={"text_encoder": choice}) as cap:
            generate(sd3_pipe, steps=1)
        tm = cap.last_run.tokens()
        assert tm.length == 77 + T5_LEN and tm.words == tuple(PROMPT.split())
        pos = tm.word_tokens[tm.index("circle")]
        maps[choice] = cap.last_run.word_map("circle")
        if choice == "clip":
            assert all(p < 77 for p in pos) and tm.tokens[pos[0]] == "circle</w>"
        elif choice == "t5":
            assert all(p >= 77 for p in pos) and tm.tokens[pos[0]] == "▁circle"
        else:
            assert [p < 77 for p in pos] == [True, False]
    assert torch.allclose(maps["both"], (maps["clip"] + maps["t5"]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="'clip', 't5'"):
        capture(sd3_pipe, extra={"text_encoder": "clip-g"})


def test_sd3_prompt_3_feeds_the_t5_part(sd3_pipe):
    with capture(sd3_pipe, extra={"text_encoder": "t5"}) as cap:
        generate(sd3_pipe, steps=1, prompt_3="a photo of a cat")
    tm = cap.last_run.tokens()
    assert tm.words == ("a", "photo", "of", "a", "cat")
    assert tm.tokens[tm.word_tokens[tm.index("cat")][0]] == "▁cat"
    assert "circle" in tm.truncated_words  # a CLIP-only word has no T5 token


def test_sd3_without_t5():
    pipe = tiny_sd3_pipeline(t5=False)
    with capture(pipe, extra={"text_encoder": "t5"}) as cap:  # falls back to CLIP with a warning
        generate(pipe, steps=1)
    tm = cap.last_run.tokens()
    assert cap.last_run.frames[0].cross.shape == (1, 77 + T5_LEN, 16, 16)
    assert all(p < 77 for span in tm.word_tokens for p in span) and len(tm.words) == 7


def test_t5_offsets_map_words_with_punctuation_and_unknown_words():
    tok = t5_tokenizer()
    tm = build_offset_token_map(tok, "a red circle, above a Blue squarish thing!", 40)
    assert tm.words == ("a", "red", "circle", "above", "a", "Blue", "squarish", "thing")
    for w, span in zip(tm.words, tm.word_tokens):
        assert "".join(tm.tokens[p] for p in span).replace("▁", "") in (w, w[1:] and "<unk>" + w[1:])
    assert tm.tokens[tm.special[0]] == "</s>" and len(tm.tokens) == 40
    cut = build_offset_token_map(tok, "a red circle above a blue square", 5)
    assert cut.words == ("a", "red", "circle", "above") and "blue" in cut.truncated_words


def test_flux_words_are_t5_tokens_and_option_is_checked(flux_pipe):
    with capture(flux_pipe) as cap:
        generate(flux_pipe, steps=1)
    tm = cap.last_run.tokens()
    assert tm.length == T5_LEN and tm.tokens[:3] == ("▁a", "▁red", "▁circle") and tm.word_tokens[2] == (2,)
    assert cap.last_run.word_map("square").shape == (16, 16)
    with pytest.raises(ValueError, match="not available for FluxPipeline"):
        capture(flux_pipe, extra={"text_encoder": "clip"})


# --- self-attention queries, bad input --------------------------------------------------------------
def test_sd35_dual_attention_serves_self_queries(sd3_pipe, flux_pipe):
    with capture(sd3_pipe, queries=[Query.pixel("p", 0.5, 0.5)]) as cap:
        generate(sd3_pipe, steps=1)
    m = cap.last_run.frames[0].self_maps["p"]
    assert m.shape == (1, 16, 16) and abs(float(m.sum()) - 1) < 1e-3
    with pytest.raises(ValueError, match="no image-only self-attention"):
        capture(flux_pipe, queries=[Query.pixel("p", 0.5, 0.5)])


def test_unsupported_processors_are_refused_and_nothing_installed():
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    class MyJoint(JointAttnProcessor2_0):
        pass

    pipe = tiny_sd3_pipeline()
    pipe.transformer.set_attn_processor(MyJoint())
    before = snapshot(pipe)[1:]
    with pytest.raises(UnsupportedProcessorError, match="MyJoint"):
        capture(pipe).apply()
    assert snapshot(pipe)[1:] == before
    pipe.transformer.set_attn_processor(JointAttnProcessor2_0())
    with capture(pipe, CaptureConfig(layers="transformer_blocks.1.*")) as cap:
        generate(pipe, steps=1)
    assert cap.last_run.layers == ["transformer_blocks.1.attn"]

    flux = tiny_flux_pipeline()
    flux.transformer.fuse_qkv_projections()
    with pytest.raises(UnsupportedProcessorError, match="fused QKV|unfuse_qkv_projections"):
        capture(flux).apply()
    assert "step" not in flux.scheduler.__dict__


def test_an_sd3_processor_that_does_not_call_sdpa_is_refused(sd3_pipe, monkeypatch):
    """Where a diffusers version computes the joint attention some other way, the tap would never
    fire: capture() says so instead of producing maps without those layers."""
    from bridge.capture import sdpa_tap

    monkeypatch.setattr(sdpa_tap, "tappable", lambda processor: False)
    before = snapshot(sd3_pipe)[1:]
    with pytest.raises(UnsupportedProcessorError, match="does not call F.scaled_dot_product_attention"):
        capture(sd3_pipe).apply()
    assert snapshot(sd3_pipe)[1:] == before


# --- no host synchronisation in the step path --------------------------------------------------------
#: ops that read a tensor's value back on the host (on a GPU: the host waits for the device)
HOST_READS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::equal", "aten::allclose")


def host_reads(fn) -> dict[str, int]:
    """Host reads of tensor values while ``fn`` runs, counted by torch.profiler (it records every
    aten op, also those called inside other ops' C++, which a dispatch mode does not see)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.name in HOST_READS:
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("which,guidance", [("sd3", 7.0), ("flux", 3.5)])
def test_capture_adds_no_host_read_to_a_run(request, monkeypatch, which, guidance, fused):
    """A run under a capture reads no more tensor values back than the plain run does (SD3's
    scheduler reads its start index once in both): on a GPU each such read stalls the host until
    the device catches up. The capture is set up first (its one-time checks of the head weights,
    on the CPU, are not part of a run) and has run once (the attention kernel's one check per shape).
    ``fused``: the path that launches the fused map kernel (as on CUDA), with a stand-in kernel
    that launches nothing, so only the capture's own host work is counted."""
    from bridge.capture import joint_kernel

    pipe = request.getfixturevalue(f"{which}_pipe")
    if fused:
        launches = []
        monkeypatch.setattr(joint_kernel, "kernel_for", lambda device: "stand-in")
        monkeypatch.setattr(joint_kernel, "usable", lambda kernel, *a: kernel == "stand-in")
        monkeypatch.setattr(joint_kernel, "launch", lambda *a: launches.append(a[-1]))
    with torch.inference_mode():
        plain = host_reads(lambda: generate(pipe, steps=3, guidance=guidance))
        with capture(pipe) as cap:
            generate(pipe, steps=2, guidance=guidance)
            captured = host_reads(lambda: generate(pipe, steps=3, guidance=guidance))
        fresh = capture(pipe)  # a new capture per run, as the runner makes: still nothing read back
        with fresh:
            again = host_reads(lambda: generate(pipe, steps=3, guidance=guidance))
    assert cap.last_run.status == fresh.last_run.status == "done"
    assert captured == plain and again == plain, (plain, captured, again)
    assert not fused or len(launches) == 8 * len(cap.cross_layers)  # every layer of the 2 + 3 + 3 steps took the fused path


def test_flux_grid_follows_each_runs_size_without_reading_the_ids(flux_pipe):
    """FLUX's token grid comes from the ids the pipeline builds for each call's size (host ints),
    wide or tall, and places the maps right side up."""
    with capture(flux_pipe) as cap:
        for height, width in ((64, 128), (128, 64), (64, 64)):
            g = torch.Generator().manual_seed(0)
            flux_pipe(PROMPT, height=height, width=width, num_inference_steps=1, guidance_scale=3.5, generator=g,
                      max_sequence_length=T5_LEN, output_type="latent")
    assert [r.latent_hw for r in cap.runs] == [(16, 32), (32, 16), (16, 16)]
    assert [tuple(r.frames[0].cross.shape[-2:]) for r in cap.runs] == [(16, 32), (32, 16), (16, 16)]


def test_flux_grid_when_a_run_reuses_the_last_runs_ids_address(flux_pipe, monkeypatch):
    """A run's ids may land at the freed address of the last run's (the allocator reuses it): a
    wide then a tall run of the same token count must still get their own grids."""
    cls = type(flux_pipe)
    built = cls._prepare_latent_image_ids
    buffer: dict[tuple, torch.Tensor] = {}

    @functools.wraps(built)  # the pipeline's own signature, which the capture binds
    def same_address(*args, **kwargs):  # [N, 3]: written into one buffer per shape, as a reused block would be
        ids = built(*args, **kwargs)
        out = buffer.setdefault(tuple(ids.shape), torch.empty_like(ids))
        return out.copy_(ids)

    monkeypatch.setattr(cls, "_prepare_latent_image_ids", staticmethod(same_address))
    with capture(flux_pipe) as cap:
        for height, width in ((64, 128), (128, 64)):
            flux_pipe(PROMPT, height=height, width=width, num_inference_steps=1, guidance_scale=3.5,
                      generator=torch.Generator().manual_seed(0), max_sequence_length=T5_LEN, output_type="latent")
    assert len(buffer) == 1  # both runs' ids at one address
    assert [r.latent_hw for r in cap.runs] == [(16, 32), (32, 16)]


def test_head_weights_reach_the_device_once_for_all_layers(flux_pipe):
    """Every layer's head weights are views of one device tensor, shared by later captures of the
    same model and values (one copy to a GPU, not one per layer per run)."""
    first, second = capture(flux_pipe), capture(flux_pipe)
    layers = first.cross_layers
    w1 = [first.head_weights(l, torch.device("cpu")) for l in layers]
    w2 = [second.head_weights(l, torch.device("cpu")) for l in reversed(layers)][::-1]
    base = w1[0].untyped_storage().data_ptr()
    assert all(w.untyped_storage().data_ptr() == base for w in w1 + w2)
    assert all(torch.equal(a, b) and a.data_ptr() == b.data_ptr() for a, b in zip(w1, w2))
    other = capture(flux_pipe, head_weights={layers[0].name: [0.0, 1.0]})
    w3 = other.head_weights(layers[0], torch.device("cpu"))
    assert w3.tolist() == [0.0, 1.0] and w3.untyped_storage().data_ptr() != base


def test_registered():
    assert {"StableDiffusion3Pipeline", "FluxPipeline"} <= set(supported_pipelines())


def test_zz_report_errors():
    print("\nmeasured max relative errors vs float64:", {k: f"{v:.2e}" for k, v in ERRORS.items()})
