"""The denoising thread's hot path: batched maps against per-layer maths, no host syncs, pooled
host buffers, the full decode's upcast rule, and the dispatch-bound proxy model."""

from __future__ import annotations

import math

import pytest
import torch

from bridge.capture.maps import batched_cross_attention_maps, batched_query_rows_map, split_heads
from bridge.capture.steps import estimate_x0
from bridge.models.tiny import make_scheduler


def _reference_cross(q, k, weights, heads, rows):
    """float64 Σ_l Σ_h w_lh softmax(q_lh k_lhᵀ/√d) → [B, T, N], one layer at a time."""
    out = 0
    for i, (ql, kl) in enumerate(zip(q, k)):
        qh, kh = split_heads(ql[rows].double(), heads), split_heads(kl[rows].double(), heads)
        p = (qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])).softmax(-1)  # [B, h, N, T]
        out = out + torch.einsum("bhnt,h->btn", p, weights[i * heads : (i + 1) * heads].double())
    return out


@pytest.mark.parametrize("budget", [1 << 26, 1])  # all layers at once, and one layer at a time
def test_batched_cross_maps_match_float64_per_layer(budget):
    g = torch.Generator().manual_seed(0)
    heads, layers = 4, 3
    q = [torch.randn(4, 36, 32, generator=g) for _ in range(layers)]  # [B_all, N, C]
    k = [torch.randn(4, 7, 32, generator=g) for _ in range(layers)]  # [B_all, T, C]
    w = torch.rand(layers * heads, generator=g)
    rows = slice(2, 4)
    got = batched_cross_attention_maps(q, k, w, heads, rows, budget=budget)
    assert got.dtype == torch.float32 and got.shape == (2, 7, 36)
    ref = _reference_cross(q, k, w, heads, rows)
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("budget", [1 << 26, 100])  # all rows at once, and in chunks
def test_batched_query_rows_match_float64_per_layer(budget):
    g = torch.Generator().manual_seed(1)
    heads, layers, n = 2, 3, 25
    q = [torch.randn(2, n, 16, generator=g) for _ in range(layers)]
    k = [torch.randn(2, n, 16, generator=g) for _ in range(layers)]
    hw = torch.rand(layers, heads, generator=g)
    rw = torch.zeros(n)
    rw[[3, 4, 8, 9, 20]] = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15])
    rows = torch.nonzero(rw, as_tuple=True)[0]
    got = batched_query_rows_map(q, k, rows, hw[:, :, None] * rw[rows], heads, slice(1, 2), budget=budget)
    ref = 0
    for i in range(layers):
        qh, kh = split_heads(q[i][1:].double(), heads), split_heads(k[i][1:].double(), heads)
        p = (qh @ kh.transpose(-1, -2) / math.sqrt(8)).softmax(-1)  # [1, h, N, N]
        ref = ref + torch.einsum("bhrn,h,r->bn", p, hw[i].double(), rw.double())
    assert got.shape == (1, n)
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def _ops(fn):
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_estimate_x0_device_path_never_reads_the_timestep_on_the_host(kind):
    sched = make_scheduler("ddim")
    sched = type(sched).from_config(sched.config, clip_sample=False, prediction_type=kind)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    sample, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    cache: dict = {}
    t = sched.timesteps[2]
    expected = sched.step(out, t, sample).pred_original_sample
    estimate_x0(sched, out, t, sample, cache)  # fills the cache
    ops = _ops(lambda: estimate_x0(sched, out, t, sample, cache))
    assert "aten::item" not in ops and "aten::_local_scalar_dense" not in ops  # a host sync on a GPU
    torch.testing.assert_close(estimate_x0(sched, out, t, sample, cache), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(estimate_x0(sched, out, int(t), sample), expected, rtol=1e-5, atol=1e-5)  # host path


def test_runner_packets_are_each_steps_own():
    """Step packets do not share memory with a buffer reused later: each step's arrays stay its own."""
    import numpy as np

    from bridge.models.tiny import tiny_sd_pipeline
    from bridge.runner import Request, collect

    pipe = tiny_sd_pipeline()
    req = Request("a red circle above a blue square", seed=3, steps=4, guidance=5.0)
    _, first = collect(pipe, req)
    _, second = collect(pipe, req)
    steps1 = [p for p in first if p.kind == "step"]
    steps2 = [p for p in second if p.kind == "step"]
    assert len(steps1) == 4 and [p.header["step"] for p in steps1] == [0, 1, 2, 3]
    for a, b in zip(steps1, steps2):
        for key in a.arrays:
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
    assert not all(np.array_equal(steps1[0].arrays[k], steps1[-1].arrays[k]) for k in steps1[0].arrays)


class _SpyVAE(torch.nn.Module):
    def __init__(self, dtype: torch.dtype, force_upcast: bool) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.w = torch.nn.Parameter(torch.ones(1, dtype=dtype))
        self.config = SimpleNamespace(scaling_factor=0.5, shift_factor=None, force_upcast=force_upcast)
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.w.dtype

    def decode(self, z, return_dict=False):
        self.seen.append((z.dtype, self.w.dtype))
        return (torch.zeros(z.shape[0], 3, 4, 4, dtype=z.dtype),)


@pytest.mark.parametrize("force_upcast, upcasting_pipeline, decoded_in", [
    (True, True, torch.float32),  # SDXL: its pipeline upcasts a force_upcast VAE
    (False, True, torch.float16),
    (True, False, torch.float16),  # SD 1.x/2.x, SD3: their pipelines decode in float16 regardless
])
def test_decode_full_follows_the_pipelines_upcast_rule(force_upcast, upcasting_pipeline, decoded_in):
    from types import SimpleNamespace

    from bridge.latent_preview import decode_full

    vae = _SpyVAE(torch.float16, force_upcast)
    pipe = SimpleNamespace(vae=vae, **({"upcast_vae": lambda: None} if upcasting_pipeline else {}))
    image = decode_full(pipe, torch.zeros(1, 4, 2, 2, dtype=torch.float16))
    assert vae.seen == [(decoded_in, decoded_in)]
    assert vae.dtype == torch.float16  # back as it was
    assert image.shape == (4, 4, 3) and image.dtype.name == "uint8"


def test_dispatch_proxy_has_sd15s_attention_topology():
    from bridge.capture import capture
    from bridge.models.tiny import dispatch_sd_pipeline

    pipe = dispatch_sd_pipeline()
    cap = capture(pipe)
    assert len(cap.cross_layers) == 16 and {l.heads for l in cap.cross_layers} == {8}
    with torch.inference_mode(), cap:
        pipe("a cat", num_inference_steps=2, guidance_scale=7.5, output_type="latent", generator=torch.Generator().manual_seed(0))
    frame = cap.last_run.frames[-1]
    assert frame.cross.shape == (1, 77, 16, 16) and frame.x0 is not None and not frame.missing_layers


def test_packet_worker_uses_one_torch_thread_and_leaves_the_rest_of_the_process_alone():
    """The runner's worker must not wake the OpenMP pool (it would take the model thread's cores);
    the constructing thread and threads started later keep the process default."""
    import threading

    import torch

    from bridge.stream.host import OrderedWorker

    default = torch.get_num_threads()
    worker = OrderedWorker(torch_threads=1)
    seen: list[int] = []
    worker.put(lambda: seen.append(torch.get_num_threads()))
    worker.flush()
    later: list[int] = []
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    worker.close()
    assert torch.get_num_threads() == default and later == [default]
    if "OpenMP" in torch.__config__.parallel_info():  # per-thread counts; other backends share one
        assert seen == [1]


def test_host_blocks_hand_back_what_was_given_back_up_to_keep():
    """The runner's pool of pinned blocks and events: a block of the asked shape and dtype that was
    given back is handed out again (no new pinned allocation, no new event); at most ``keep`` idle
    ones of a kind are kept."""
    from bridge.stream.host import HostBlocks

    blocks = HostBlocks(keep=2)
    a, b, c, other = torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float16)
    event = object()  # opaque to the pool
    blocks.give_back([a, b, c, other], event)  # type: ignore[arg-type]
    assert blocks.idle() == 3  # two float32 [3, 4] kept, c dropped; the float16 one kept apart
    assert blocks.block(torch.Size([3, 4]), torch.float16) is other
    assert {id(blocks.block(torch.Size([3, 4]), torch.float32)) for _ in range(2)} == {id(a), id(b)}
    assert blocks.event() is event and blocks.idle() == 0
    given = {n: [torch.zeros(n, 2), torch.zeros(n, 2)] for n in range(1, 5)}  # four more kinds (a night of prompt lengths)
    for pair in given.values():
        blocks.give_back(pair, event)  # type: ignore[arg-type]
    assert blocks.idle() == 4  # twice keep in all: the two kinds given back last
    kept = {id(blocks.block(torch.Size([n, 2]), torch.float32)) for n in (3, 4) for _ in range(2)}
    assert kept == {id(t) for n in (3, 4) for t in given[n]} and blocks.idle() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pooled_snapshots_reuse_their_blocks_and_hand_over_independent_arrays():
    from bridge.stream.host import HostBlocks, HostSnapshot

    blocks = HostBlocks()
    src = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    first = HostSnapshot({"maps": src, "t": src[0, 1]}, blocks)
    block = first.get()["maps"]
    got = first.take()
    assert got["maps"].flags.writeable and float(got["t"]) == 1.0
    assert blocks.idle() == 2  # both blocks back for the next step
    second = HostSnapshot({"maps": src * 2, "t": src[0, 1]}, blocks)
    assert second.get()["maps"].data_ptr() == block.data_ptr()  # the same pinned block, no new allocation
    again = second.take()
    assert (got["maps"] == src.cpu().numpy()).all() and (again["maps"] == 2 * src.cpu().numpy()).all()
