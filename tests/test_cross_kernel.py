"""The fused UNet cross-attention map kernel (bridge/capture/cross_kernel.py), run by Triton's
interpreter on the CPU: against float64 maths, with the rows, strides and dtypes the capture gives
it, refused when it disagrees, compiled for Hopper, and inside a capture of the tiny SD pipeline."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

import triton_interpreter  # noqa: E402

from bridge.capture import cross_kernel  # noqa: E402
from bridge.capture.maps import batched_cross_attention_maps  # noqa: E402

from test_capture_unet import captured_with_reference, rel_err  # noqa: E402

KERNEL = cross_kernel.interpreted()


def inputs(b=2, n=100, t=77, heads=3, d=40, layers=2, dtype=torch.float32, seed=0):
    """Layers' projected queries ``[B_all, N, heads·d]`` and keys ``[B_all, T, heads·d]``, and
    ``[layers·heads]`` weights (one zero, as head relevance gives)."""
    g = torch.Generator().manual_seed(seed)
    q = [(torch.randn(b, n, heads * d, generator=g) * 2).to(dtype) for _ in range(layers)]
    k = [(torch.randn(b, t, heads * d, generator=g) * 2).to(dtype) for _ in range(layers)]
    w = torch.rand(layers * heads, generator=g)
    if w.numel() > 1:
        w[1] = 0.0
    return q, k, w


def float64_maps(q, k, w, heads, rows):
    """Σ_l Σ_h w_lh softmax_T(q kᵀ/√d) ``[B, T, N]`` in float64, head by head."""
    out = 0
    for i, (ql, kl) in enumerate(zip(q, k)):
        b, n, c = ql[rows].shape
        d = c // heads
        qh = ql[rows].double().view(b, n, heads, d).transpose(1, 2)
        kh = kl[rows].double().view(b, -1, heads, d).transpose(1, 2)
        p = (qh @ kh.transpose(-1, -2) / math.sqrt(d)).softmax(-1)  # [B, h, N, T]
        out = out + torch.einsum("bhnt,h->btn", p, w[i * heads : (i + 1) * heads].double())
    return out


@triton_interpreter.needed
@pytest.mark.parametrize("shape", [dict(), dict(n=64, heads=2, d=160, layers=1), dict(b=1, n=37, t=9, heads=4, d=8, layers=3)])
def test_kernel_is_the_head_weighted_softmax_over_the_text_keys(shape):
    q, k, w = inputs(**shape)
    heads = shape.get("heads", 3)
    rows = slice(q[0].shape[0] - 1, q[0].shape[0])  # the conditional rows: the last
    want = float64_maps(q, k, w, heads, rows)
    got = cross_kernel.fused_cross_attention_maps(KERNEL, q, k, w, heads, rows)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert rel_err(got, want) < 1e-5
    assert rel_err(got, batched_cross_attention_maps(q, k, w, heads, rows).double()) < 1e-5


@triton_interpreter.needed
def test_kernel_reads_half_precision_and_every_row():
    q, k, w = inputs(b=3, n=80, heads=2, d=16, dtype=torch.float16)
    got = cross_kernel.fused_cross_attention_maps(KERNEL, q, k, w, 2, slice(None))
    assert got.shape == (3, 77, 80)
    assert rel_err(got, float64_maps(q, k, w, 2, slice(None))) < 1e-5


@triton_interpreter.needed
def test_large_logits_do_not_overflow():
    """The softmax subtracts each row's maximum: logits of a few hundred stay finite."""
    q, k, w = inputs(b=1, n=20, t=5, heads=1, d=16, layers=1)
    q[0].mul_(40)
    got = cross_kernel.fused_cross_attention_maps(KERNEL, q, k, torch.ones(1), 1, slice(None))
    assert torch.isfinite(got).all() and rel_err(got, float64_maps(q, k, torch.ones(1), 1, slice(None))) < 1e-5


def test_too_many_text_keys_or_strided_channels_do_not_fit():
    q, k, _ = inputs(b=1, n=8, t=cross_kernel.MAX_T + 1, heads=1, d=16, layers=1)
    assert not cross_kernel.fits(q[0], k[0])
    q, k, _ = inputs(b=1, n=8, t=77, heads=1, d=16, layers=1)
    assert cross_kernel.fits(q[0], k[0])
    assert not cross_kernel.fits(q[0][..., ::2], k[0][..., ::2])


@triton_interpreter.needed
def test_check_refuses_a_kernel_that_disagrees(caplog, monkeypatch):
    monkeypatch.setattr(cross_kernel, "_checked", {})
    q, k, w = inputs(n=40, t=9, heads=2, d=12, layers=1, seed=1)

    rows = slice(1, 2)
    with caplog.at_level(logging.WARNING):
        off = triton_interpreter.OnePercentOff(KERNEL, out_arg=3)  # OUT is the kernel's argument 3
        assert not cross_kernel.usable(off, q[0], k[0], w, 2, rows)
        assert not cross_kernel.usable(off, q[0], k[0], w, 2, rows)  # remembered: one warning
    assert sum("disagrees" in r.getMessage() for r in caplog.records) == 1
    assert cross_kernel.usable(KERNEL, q[0], k[0], w, 2, rows)
    assert not cross_kernel.usable(None, q[0], k[0], w, 2, rows)


@pytest.mark.parametrize("dtype,d", [("fp16", 40), ("fp16", 80), ("fp16", 160), ("bf16", 64), ("fp32", 64)])
def test_kernel_compiles_for_hopper_within_its_shared_memory(dtype, d):
    """The kernel compiles to an sm_90 (H100/H200) binary with Triton's own compiler, which needs no
    GPU, for SD 1.5's head widths (40, 80, 160), SDXL's and SD 2's (64), with the launch's own tiles
    and pipelining depth and the runtime's specialisation (pointers and the strides and sizes
    that are multiples of 16 marked so, which lets Triton copy tiles asynchronously and pipeline
    them): its shared memory stays within the budget. Unmarked, Triton 3.6 did not pipeline and
    took 80 KiB at d = 160 here, while the runtime's compile on an H100 asked 240 KiB and failed."""
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(cross_kernel._cross_maps).parameters)
    pointers = {"Q": f"*{dtype}", "K": f"*{dtype}", "W": "*fp32", "OUT": "*fp32"}
    shape = cross_kernel.tiles(d, {"fp16": 2, "bf16": 2, "fp32": 4}[dtype])
    stages = shape.pop("num_stages")
    # SD 1.5 at 64², 8 heads: N = 4096, row strides 8·d, batch strides N·8·d and 77·8·d, out [B, 77, 4096]
    multiples_of_16 = ("Q", "K", "W", "OUT", "N", "sqb", "sqn", "skb", "skt", "sob", "sot") + (("D",) if d % 16 == 0 else ())
    for accumulate in (False, True):
        consts = {"ACCUMULATE": accumulate, "IEEE": dtype == "fp32", "BLOCK_T": cross_kernel.MAX_T, **shape}
        signature = {n: pointers.get(n, "fp32" if n == "scale" else "constexpr" if n in consts else "i32") for n in names}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in multiples_of_16}
        source = ASTSource(fn=cross_kernel._compiled, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
        binary = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": stages})
        assert binary.asm["cubin"] and ("wgmma" in binary.asm["ptx"] or dtype == "fp32")  # Hopper's tensor-core MMA
        assert binary.metadata.shared <= cross_kernel.SHARED_BUDGET + 1024, binary.metadata.shared


@triton_interpreter.needed
def test_capture_with_the_kernel_matches_the_reference_and_leaves_the_image(sd_pipe, monkeypatch):
    """A capture takes the (interpreted) kernel on the CPU as it takes the compiled one on CUDA, by
    default: one launch per cross layer and evaluation, maps equal to the float64 reference;
    ``fused_maps=False`` keeps the op-by-op maths (no launch), with the same maps."""
    launches = []
    real = cross_kernel.launch

    def launch(*args, **kwargs):
        launches.append(kwargs.get("accumulate"))
        real(*args, **kwargs)

    monkeypatch.setattr(cross_kernel, "_checked", {})
    monkeypatch.setattr(cross_kernel, "kernel_for", lambda device: KERNEL)
    monkeypatch.setattr(cross_kernel, "launch", launch)
    image, plain, got, ref = captured_with_reference(sd_pipe)
    assert rel_err(got, ref) < 1e-3
    assert np.array_equal(image, plain)
    layers = sum(1 for n, _ in sd_pipe.unet.named_modules() if n.endswith("attn2"))
    assert len(launches) >= 2 * layers  # 2 steps × one launch per cross layer (plus the check's two per shape)
    launches.clear()
    image, plain, got, ref = captured_with_reference(sd_pipe, extra={"fused_maps": False})
    assert launches == [] and rel_err(got, ref) < 1e-3 and np.array_equal(image, plain)


@triton_interpreter.needed
def test_what_a_graph_computes_is_part_of_its_key(sd_pipe, monkeypatch):
    """The evaluation's CUDA graphs outlive a capture (kept per denoiser), so the plan key under
    which a graph is kept must say whether it runs the kernel: else a capture with
    ``fused_maps=False`` after one with the kernel replays the kernel's graph (on the H100 the
    bench's ``capture_unfused`` did, and the CUDA test saw no launch)."""
    from bridge.capture import capture

    from test_capture_unet import generate

    monkeypatch.setattr(cross_kernel, "_checked", {})
    monkeypatch.setattr(cross_kernel, "kernel_for", lambda device: KERNEL)
    keys = {}
    for fused in (True, False, True):
        with capture(sd_pipe, extra={"fused_maps": fused}) as cap:
            generate(sd_pipe, steps=1)
        keys.setdefault(fused, set()).update(plan.key for plan in cap._plans.values())
    assert len(keys[True]) == 1 and keys[True].isdisjoint(keys[False])  # the same key again for the same maths
