"""The fused joint-attention map kernel (bridge/capture/joint_kernel.py), run by Triton's
interpreter on the CPU: against float64 maths, and inside a capture of the tiny SD3 and FLUX
pipelines against the op-by-op maps and the independent float64 reference of the joint softmax."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

import triton_interpreter  # noqa: E402

from bridge.capture import capture, joint_kernel  # noqa: E402
from bridge.capture.maps import joint_text_probabilities  # noqa: E402
from bridge.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline  # noqa: E402

from test_capture_mmdit import Recorder, generate, reference, rel_err  # noqa: E402

KERNEL = joint_kernel.interpreted()


def inputs(b=2, h=3, n=100, t=37, d=24, seed=0):
    """Image queries as a strided view of a ``[B, S, heads, d]`` projection (as FLUX's), keys, the
    float64 normaliser over all keys and head weights."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, n + t, h, d, generator=g) * 1.5).permute(0, 2, 1, 3)[:, :, :n]  # [B, h, N, d], strided
    k = torch.randn(b, h, n + t, d, generator=g) * 1.5
    lse = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), -1)  # [B, h, N]
    w = torch.tensor([1.0, 0.5, 0.0, 2.0][:h])
    return q, k, lse, w


def float64_maps(q, k, text, lse, w):
    p = torch.exp(q.double() @ k[:, :, text].double().transpose(-1, -2) / math.sqrt(q.shape[-1]) - lse[..., None])  # [B, h, N, T]
    return torch.einsum("bhnt,h->btn", p, w.double())


@triton_interpreter.needed
@pytest.mark.parametrize("shape", [dict(), dict(b=1, h=2, n=256, t=32, d=16), dict(b=1, h=4, n=64, t=130, d=8)])
def test_kernel_is_the_head_weighted_joint_softmax(shape):
    q, k, lse, w = inputs(**shape)
    n = q.shape[2]
    text = slice(n, None)
    want = float64_maps(q, k, text, lse, w)
    out = torch.full(want.shape, float("nan"))
    joint_kernel.launch(KERNEL, q, k[:, :, text], lse.float(), w, out, accumulate=False)  # overwrites: NaNs gone
    assert rel_err(out, want) < 1e-5  # float32 logits
    assert rel_err(out, joint_text_probabilities(q, k, text, w, lse=lse.float()).double()) < 1e-5
    joint_kernel.launch(KERNEL, q, k[:, :, text], lse.float(), w, out, accumulate=True)  # adds
    assert rel_err(out, 2 * want) < 1e-5


@triton_interpreter.needed
def test_kernel_reads_half_precision_inputs():
    q, k, lse, w = inputs(b=1, h=2, n=80, t=20, d=16)
    q, k = q.half(), k.half()
    lse = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) / 4.0, -1)
    out = torch.empty(1, 20, 80)
    joint_kernel.launch(KERNEL, q, k[:, :, 80:], lse.float(), w, out, accumulate=False)
    assert rel_err(out, float64_maps(q, k, slice(80, None), lse, w)) < 1e-5


@triton_interpreter.needed
def test_check_refuses_a_kernel_that_disagrees(caplog, monkeypatch):
    monkeypatch.setattr(joint_kernel, "_checked", {})
    q, k, lse, w = inputs(n=40, t=9, d=12, seed=1)

    text = slice(40, None)
    with caplog.at_level(logging.WARNING):
        off = triton_interpreter.OnePercentOff(KERNEL, out_arg=4)  # OUT is the kernel's argument 4
        assert not joint_kernel.usable(off, q, k[:, :, text], lse.float(), w)
        assert not joint_kernel.usable(off, q, k[:, :, text], lse.float(), w)  # remembered: one warning
    assert sum("disagrees" in r.getMessage() for r in caplog.records) == 1
    assert joint_kernel.usable(KERNEL, q, k[:, :, text], lse.float(), w)
    assert not joint_kernel.usable(None, q, k[:, :, text], lse.float(), w)


@pytest.mark.parametrize("dtype,d", [("bf16", 128), ("fp16", 64), ("fp32", 64)])
def test_kernel_compiles_for_hopper(dtype, d):
    """The kernel compiles to an sm_90 (H100/H200) binary with Triton's own compiler, which needs no
    GPU: the GPU bench will not be the first to find a compile error. FLUX (bf16, d 128), SD3.5 (fp16, d 64)."""
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(joint_kernel._joint_text_maps).parameters)
    pointers = {"Q": f"*{dtype}", "K": f"*{dtype}", "LSE": "*fp32", "W": "*fp32", "OUT": "*fp32"}
    for accumulate in (False, True):
        consts = {"ACCUMULATE": accumulate, "IEEE": dtype == "fp32", "BLOCK_T": joint_kernel.BLOCK_T,
                  "BLOCK_N": joint_kernel.BLOCK_N, "BLOCK_D": d}
        signature = {n: pointers.get(n, "fp32" if n == "scale" else "constexpr" if n in consts else "i32") for n in names}
        source = ASTSource(fn=joint_kernel._compiled, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()})
        binary = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert binary.asm["cubin"] and ("wgmma" in binary.asm["ptx"] or dtype == "fp32")  # Hopper's tensor-core MMA


@pytest.fixture
def fused(monkeypatch):
    """The capture takes the (interpreted) kernel on the CPU, as it takes the compiled one on CUDA;
    counts its launches."""
    launches: list[bool] = []
    real = joint_kernel.launch

    def launch(*args, **kwargs):
        if len(args) == 7:  # the capture's calls (accumulate positional), not the once-per-shape check's
            launches.append(args[6])
        real(*args, **kwargs)

    monkeypatch.setattr(joint_kernel, "_checked", {})
    monkeypatch.setattr(joint_kernel, "kernel_for", lambda device: KERNEL)
    monkeypatch.setattr(joint_kernel, "launch", launch)
    return launches


@triton_interpreter.needed
@pytest.mark.parametrize("which,guidance", [("sd3", 7.0), ("sd3", 1.0), ("flux", 3.5)])
def test_capture_with_the_kernel_gives_the_joint_softmax(which, guidance, fused):
    pipe = tiny_sd3_pipeline() if which == "sd3" else tiny_flux_pipeline()
    flux = which == "flux"
    with capture(pipe, extra={"fused_maps": False}) as plain_cap:  # op by op, for comparison
        image_eager = generate(pipe, steps=3, guidance=guidance)
    eager = torch.stack([f.cross for f in plain_cap.last_run.frames])
    assert not fused
    rec = Recorder(pipe, flux)
    try:
        with capture(pipe) as cap:
            image = generate(pipe, steps=3, guidance=guidance)
    finally:
        rec.remove()
    run = cap.last_run
    layers = len(run.layers)
    assert fused == [False, *[True] * (layers - 1)] * 3  # one launch per layer: the first of a step writes, the rest add
    got = torch.stack([f.cross for f in run.frames])
    assert rel_err(got, reference(rec, run.batch, run.latent_hw)) < 1e-3
    assert rel_err(got, eager.double()) < 1e-5
    assert np.array_equal(image, image_eager) and np.array_equal(image, generate(pipe, steps=3, guidance=guidance))


@triton_interpreter.needed
def test_detail_layers_and_head_weights_with_the_kernel(fused):
    pipe = tiny_flux_pipeline()
    weights = {"transformer_blocks.0.attn": [0.0, 2.0]}
    layer = "single_transformer_blocks.0.attn"
    rec = Recorder(pipe, True)
    try:
        with capture(pipe, head_weights=weights, detail_layers=[layer]) as cap:
            generate(pipe, steps=2, guidance=3.5)
    finally:
        rec.remove()
    run = cap.last_run
    assert fused == [False, True] * 2  # the detail layer goes op by op
    per_head: list = []
    ref = reference(rec, 1, run.latent_hw, weights, detail=(layer, per_head))
    assert rel_err(torch.stack([f.cross for f in run.frames]), ref) < 1e-3
    assert run.frames[0].layers[layer].shape == (1, 2, 32, 16, 16)


@triton_interpreter.needed
def test_a_launch_that_fails_after_its_check_falls_back_to_op_by_op(fused, monkeypatch, caplog):
    """A kernel that passed its check but fails in the model's step: that layer's maps are computed
    op by op into the step's sum (nothing half-written), later ones too, one warning, the run goes on."""
    pipe = tiny_flux_pipeline()
    with capture(pipe, extra={"fused_maps": False}) as eager:
        generate(pipe, steps=2, guidance=3.5)
    real = joint_kernel.launch
    calls = []

    def flaky(*args, **kwargs):
        if len(args) == 7:
            calls.append(args[6])
            if len(calls) >= 2:  # the second layer's launch, and any after
                raise RuntimeError("launch failed")
        real(*args, **kwargs)

    monkeypatch.setattr(joint_kernel, "launch", flaky)
    with caplog.at_level(logging.WARNING), capture(pipe) as cap:
        generate(pipe, steps=2, guidance=3.5)
    assert cap.last_run.status == "done"
    got, want = (torch.stack([f.cross for f in c.last_run.frames]).double() for c in (cap, eager))
    assert rel_err(got, want) < 1e-5
    assert calls == [False, True]  # refused after the failure: FLUX's double and single blocks share one shape here
    assert sum("failed" in r.getMessage() for r in caplog.records) == 1
