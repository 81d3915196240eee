"""The CUDA-only parts of the capture: the evaluation's map maths replayed as a CUDA graph
(bridge/capture/graphs.py) must give the eager maps, follow its inputs, and leave the image
exactly as plain diffusers makes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_static_graphs_capture_after_warmup_and_follow_their_inputs():
    from bridge.capture.graphs import StaticGraphs

    graphs = StaticGraphs(warmup=1)
    a, b = torch.randn(64, 32, device="cuda"), torch.randn(32, 16, device="cuda")

    def fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ((x @ y).softmax(-1) * 2,)

    outs = [graphs(fn, [a, b], ("k",))[0].clone() for _ in range(3)]
    assert graphs.stats == {"replayed": 1, "eager": 1, "captured": 1, "failed": 0}
    for out in outs:
        torch.testing.assert_close(out, fn(a, b)[0])
    a.mul_(-3)  # new values in place, and new tensors elsewhere: the replay reads both
    torch.testing.assert_close(graphs(fn, [a, b], ("k",))[0], fn(a, b)[0])
    c, d = torch.randn_like(a), torch.randn_like(b)
    torch.testing.assert_close(graphs(fn, [c, d], ("k",))[0], fn(c, d)[0])
    assert graphs.stats["replayed"] == 3
    graphs(fn, [a, b], ("other constants",))  # another key: eager first
    assert graphs.stats["eager"] == 2


@pytest.fixture(scope="module")
def cuda_pipe():
    from bridge.models.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline().to("cuda")


def _generate(pipe, **capture_options):
    from bridge.capture import capture

    def call():
        g = torch.Generator(device="cpu").manual_seed(0)
        return pipe("a red circle above a blue square", num_inference_steps=8, guidance_scale=7.5, generator=g, output_type="np").images

    if not capture_options:
        return call(), None
    with capture(pipe, **capture_options) as cap:
        image = call()
    return image, cap.last_run


def test_graphed_maps_equal_eager_maps_and_the_image_is_plain_diffusers(cuda_pipe):
    from bridge.capture import Query, graph_stats

    plain, _ = _generate(cuda_pipe)
    assert np.array_equal(plain, _generate(cuda_pipe)[0])  # the control: plain is deterministic here
    queries = [Query.box("box", 0.25, 0.25, 0.5, 0.5)]
    before = graph_stats(cuda_pipe)
    eager_image, eager = _generate(cuda_pipe, queries=queries, cuda_graphs=False)
    assert graph_stats(cuda_pipe) == before  # nothing graphed when off
    for _ in range(2):  # the second run replays the first run's graph from its first step
        image, graphed = _generate(cuda_pipe, queries=queries)
        assert np.array_equal(image, plain) and np.array_equal(eager_image, plain)
        for fe, fg in zip(eager.frames, graphed.frames, strict=True):
            torch.testing.assert_close(fg.cross, fe.cross, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fg.self_maps["box"], fe.self_maps["box"], rtol=1e-5, atol=1e-6)
    stats = graph_stats(cuda_pipe)
    # 16 evaluations (8 steps x 2 runs): the first eager, the second captured, the rest replayed
    assert {k: stats[k] - before[k] for k in stats} == {"eager": 1, "captured": 1, "replayed": 14, "failed": 0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_cross_maps_equal_op_by_op_inside_the_graph_and_leave_the_image_exact(dtype):
    """The UNet's default cross maps come from the Triton kernel (bridge/capture/cross_kernel.py),
    launched inside the evaluation's CUDA graph: the same maps as op by op, the image untouched."""
    pytest.importorskip("triton")
    from bridge.capture import cross_kernel, graph_stats
    from bridge.models.tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline().to("cuda", dtype)
    launches = []
    real = cross_kernel.launch

    def launch(*args, **kwargs):
        launches.append(kwargs.get("accumulate"))
        real(*args, **kwargs)

    plain, _ = _generate(pipe)
    before = graph_stats(pipe)
    _, op_by_op = _generate(pipe, extra={"fused_maps": False})
    cross_kernel.launch = launch
    try:
        image, fused = _generate(pipe, extra={"fused_maps": True})  # the default, named: no options means no capture
    finally:
        cross_kernel.launch = real
    assert np.array_equal(image, plain)
    assert launches and any(good for good in cross_kernel._checked.values())  # it ran, not the fallback
    for ff, fo in zip(fused.frames, op_by_op.frames, strict=True):
        torch.testing.assert_close(ff.cross, fo.cross, rtol=1e-4, atol=1e-5)
    assert graph_stats(pipe)["failed"] == before["failed"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sd3_tap_takes_the_lse_from_the_models_kernel_and_leaves_the_image_exact(dtype):
    """On CUDA the SD3 capture takes each joint layer's normaliser from the processor's own fused
    attention call; the image stays bit-identical and the maps equal the recomputed ones."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bridge.capture import capture, sdpa_tap
    from bridge.models.tiny import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline().to("cuda", dtype)

    def call():
        g = torch.Generator(device="cpu").manual_seed(0)
        return pipe("a red circle above a blue square", height=64, width=64, num_inference_steps=3, guidance_scale=7.0,
                    generator=g, max_sequence_length=32, output_type="np").images

    plain = call()
    sdpa_tap._checked.clear()
    with capture(pipe) as cap:
        image = call()
    np.testing.assert_array_equal(image, plain)
    cuda_keys = {k: ok for k, ok in sdpa_tap._checked.items() if k[0] == "cuda"}
    assert cuda_keys and all(cuda_keys.values()), cuda_keys
    with sdpa_kernel(SDPBackend.MATH), capture(pipe) as untapped:  # no lse from the kernel: computed here
        call()
    # the first step's (later ones drift apart with the math kernel's own rounding of the image)
    torch.testing.assert_close(cap.last_run.frames[0].cross.float(), untapped.last_run.frames[0].cross.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("which,dtype", [("sd3", torch.float16), ("flux", torch.bfloat16)])
def test_fused_joint_maps_equal_op_by_op_and_leave_the_image_exact(which, dtype):
    """On CUDA each joint layer's maps come from the fused kernel (bridge/capture/joint_kernel.py),
    checked and launched once per layer and step; they equal the op-by-op maps to float32 rounding
    and the image stays plain diffusers'."""
    pytest.importorskip("triton")
    from bridge.capture import capture, joint_kernel
    from bridge.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline

    pipe = (tiny_sd3_pipeline() if which == "sd3" else tiny_flux_pipeline()).to("cuda", dtype)

    def call():
        g = torch.Generator(device="cpu").manual_seed(0)
        return pipe("a red circle above a blue square", height=64, width=64, num_inference_steps=3,
                    guidance_scale=7.0 if which == "sd3" else 3.5, generator=g, max_sequence_length=32, output_type="np").images

    plain = call()
    with capture(pipe, extra={"fused_maps": False}) as eager:
        call()
    joint_kernel._checked.clear()
    with capture(pipe) as fused:
        image = call()
    np.testing.assert_array_equal(image, plain)
    assert joint_kernel._checked and all(joint_kernel._checked.values()), joint_kernel._checked
    a, b = (torch.stack([f.cross for f in c.last_run.frames]).double() for c in (fused, eager))
    assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_runner_recipes_wait_for_real_copies_on_the_packet_thread(cuda_pipe):
    """On CUDA a remote publisher's recipes wait for real events on the packet thread: every step
    goes out once, in order, with the same maps whether the phases ran on the host or the device."""
    import threading

    from bridge.runner import Request, Runner

    class Recipes:
        remote = True

        def __init__(self):
            self.got = []

        def publish(self, packet):
            self.got.append((packet, threading.current_thread().name))

        def publish_recipe(self, recipe):  # as every Publisher: a recipe that builds nothing sends nothing
            packet = recipe()
            if packet is not None:
                self.publish(packet)

        def alive(self):
            return True

    pub = Recipes()
    req = Request("a red circle above a blue square", seed=3, steps=6)
    assert Runner(cuda_pipe, pub, image_every=0).run(req).status == "done"
    local: list = []
    assert Runner(cuda_pipe, local.append, image_every=0, phases_on="host").run(req).status == "done"
    steps = [(p, name) for p, name in pub.got if p.kind == "step"]
    assert [p.header["step"] for p, _ in steps] == list(range(6))
    assert {name for _, name in steps} == {"stepx-packets"}
    for (a, _), b in zip(steps, [p for p in local if p.kind == "step"], strict=True):
        np.testing.assert_array_equal(a.arrays["rgba"], b.arrays["rgba"])


def test_runner_lands_step_maps_in_the_ring_on_cuda(cuda_pipe, tmp_path):
    """On CUDA the runner copies each step's maps and preview into the page-locked ring and stamps
    each slot behind them; the sink process waits for the stamp. Its packets equal the packet
    thread's, bit for bit up to the recorder's float16, and every step went through the ring."""
    import argparse
    from functools import partial

    from bridge.runner import Request, Runner
    from bridge.stream.process import PacketProcess
    from bridge.stream.ring import SLOTS
    from bridge.stream.sinks import build_sinks
    from bridge.trace import TraceReader

    req = Request("a red circle above a blue square", seed=3, steps=6)
    local: list = []
    assert Runner(cuda_pipe, local.append, image_every=1, phases_on="host").run(req).status == "done"
    trace = tmp_path / "ring.stepx"
    with PacketProcess(partial(build_sinks, argparse.Namespace(record=str(trace))), ring_slots=SLOTS) as pp:
        assert pp.ring is not None and pp.ring.pinned
        assert Runner(cuda_pipe, pp, image_every=1).run(req).status == "done"
        assert pp.flush(30) and pp.staged == 12 and pp.dropped == 0  # each step's maps and preview
    with TraceReader(trace) as tr:
        everything = list(tr.packets())
    got = [p for p in everything if p.kind == "step"]
    expected = [p for p in local if p.kind == "step"]
    previews = [p for p in everything if p.kind == "image" and not p.header["final"]]
    for g, e in zip(previews, [p for p in local if p.kind == "image" and not p.header["final"]], strict=True):
        np.testing.assert_array_equal(g.arrays["image"], e.arrays["image"])
    assert [p.header["step"] for p in got] == list(range(6))
    for g, e in zip(got, expected, strict=True):
        assert g.header["timestep"] == e.header["timestep"]
        for name in e.arrays:
            np.testing.assert_array_equal(g.arrays[name], e.arrays[name].astype(g.arrays[name].dtype), err_msg=name)
