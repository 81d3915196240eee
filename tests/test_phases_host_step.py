"""The CPU phases step (bridge.phases.host_step.host_phase_step, the CPU engine's path) equals the
torch step it stands in for (bridge.phases.fused.phase_step, the reference) bit for bit, step by
step: every normalisation and global view, the first step's zero state, cross-fades and hard
cuts, skipped steps, and maps with NaN, all-zero, flat and negative values (NaN must spread
exactly as in the reference, into the accumulators of phases whose weight is 0 too)."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bridge.phases import NORMALISATIONS, PhaseConfig, PhaseEngine
from bridge.phases.fused import initial_state, phase_step, step_scalars
from bridge.phases.host_step import HostHints, blend_is_multiply_add, host_phase_step
from bridge.phases.morph import phase_weights, run_progress
from bridge.phases.timeline import pixel_centres

OUTS = ("textures", "settled", "accumulated", "phase_maps", "measures", "live")


def both(run: np.ndarray, cfg: PhaseConfig, steps: list[int], total: int):
    """(host outputs, reference outputs) of each step, each path on its own state, as the engine calls them."""
    n, h, w = run.shape[1:]
    cpu = torch.device("cpu")
    ref_state, host_state = initial_state(n, h, w, cpu), initial_state(n, h, w, cpu)
    xs, ys = pixel_centres(h, w, cpu)
    sums, pairs, nan_seen = [0.0, 0.0, 0.0], [], False
    for seen, step in enumerate(steps):
        weights = phase_weights(run_progress(step, total), cfg.boundaries, cfg.crossfade)
        sums = [s + wp if wp > 0 else s for s, wp in zip(sums, weights)]
        scalars = step_scalars(weights, sums, seen, cfg.settle_rate, cfg.settle_scale, step, cfg.stable_threshold)
        scal = torch.tensor(scalars, dtype=torch.float32)
        maps = torch.from_numpy(run[seen].copy())
        hints = HostHints(weights, tuple(scalars[3:6]), seen > 0, nan_seen)
        got = host_phase_step(maps, host_state, scal, xs, ys, cfg.normalisation, cfg.global_view, hints)
        assert torch.equal(maps, torch.from_numpy(run[seen])) or bool(maps.isnan().any())  # the input is not written
        ref = phase_step(torch.from_numpy(run[seen].copy()), ref_state, scal, xs, ys, cfg.normalisation, cfg.global_view)
        host_state, ref_state = got.state, ref.state
        nan_seen = nan_seen or bool(got.textures.isnan().any())
        pairs.append(({k: getattr(got, k).numpy().copy() for k in OUTS}, {k: getattr(ref, k).numpy().copy() for k in OUTS}))
    return pairs


def assert_same(got: dict, want: dict, step: int) -> None:
    for k in OUTS:
        assert got[k].dtype == np.float32 and got[k].shape == want[k].shape, k
        # bit for bit: every value a receiver gets stays what the torch step made (tests/test_sink_bytes.py)
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{k} at step {step}")


def sample(t: int, n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((t, n, h, w), dtype=np.float32) * 0.02) ** 2  # attention-like: small, skewed


@pytest.mark.parametrize("mode", NORMALISATIONS)
@pytest.mark.parametrize("view", ["max", "mean"])
@pytest.mark.parametrize("crossfade", [0.0, 0.2])
def test_host_step_equals_the_torch_step_over_a_run(mode, view, crossfade):
    """20 steps of SD-like maps across both boundaries, with an all-zero map, a flat map and
    a negative value; every output of every step, the first included."""
    run = sample(20, 5, 8, 6, seed=1)
    run[3, 1] = 0.0
    run[4, 2] = 0.01
    run[5, 0, 0, 0] = -0.5
    cfg = PhaseConfig(normalisation=mode, global_view=view, crossfade=crossfade)
    for i, (got, want) in enumerate(both(run, cfg, list(range(20)), 20)):
        assert_same(got, want, i)


@pytest.mark.parametrize("mode", NORMALISATIONS)
def test_a_nan_map_spreads_as_in_torch(mode):
    """A NaN from step 3 on poisons what it poisons in torch: the word's texture, the global
    view, and every phase accumulator (0 * NaN is NaN), also in phases not reached yet."""
    run = sample(10, 3, 4, 5, seed=2)
    run[3, 1, 2, 2] = np.nan
    run[6, 0] = np.nan  # a whole map
    pairs = both(run, PhaseConfig(normalisation=mode, crossfade=0.3), list(range(10)), 10)
    for i, (got, want) in enumerate(pairs):
        assert_same(got, want, i)
    assert np.isnan(pairs[-1][0]["accumulated"]).any()


def test_all_zero_and_first_step_only():
    """A run of zeros (no attention at all) and a one-step run: uniform distributions, no change."""
    zeros = np.zeros((3, 2, 4, 4), dtype=np.float32)
    for i, (got, want) in enumerate(both(zeros, PhaseConfig(), [0, 1, 2], 3)):
        assert_same(got, want, i)
    (got, want), = both(sample(1, 4, 3, 3, seed=3), PhaseConfig(), [0], 1)
    assert_same(got, want, 0)
    assert np.isnan(got["measures"][6]).all()  # no change at the first step


finite = st.one_of(st.just(0.0), st.floats(min_value=2**-20, max_value=1.0, allow_nan=False, width=32))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), mode=st.sampled_from(NORMALISATIONS), view=st.sampled_from(("max", "mean")),
       rate=st.sampled_from((0.3, 0.5, 1.0)))
def test_host_step_equals_the_torch_step_on_any_maps(data, mode, view, rate):
    t = data.draw(st.integers(1, 6))
    n, h, w = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)))
    run = data.draw(arrays(np.float32, (t, n, h, w), elements=finite))
    steps = sorted(data.draw(st.sets(st.integers(0, 2 * t - 1), min_size=t, max_size=t)))  # may skip steps
    cfg = PhaseConfig(normalisation=mode, global_view=view, settle_rate=rate, crossfade=0.2)
    for i, (got, want) in enumerate(both(run, cfg, steps, 2 * t)):
        assert_same(got, want, i)


def test_the_engine_on_the_cpu_gives_the_reference_values():
    """PhaseEngine on the CPU (host_phase_step, with the hints it keeps) against an engine whose
    step is the reference, over a run with a NaN: frames, phase maps and the summary."""
    run = sample(12, 4, 6, 6, seed=5)
    run[4, 2, 1, 1] = np.nan
    words = ["a", "b", "c", "d"]
    cfg = PhaseConfig(crossfade=0.2)
    host, ref = PhaseEngine(words, cfg, device="cpu"), PhaseEngine(words, cfg, device="cpu", compile=True)
    from bridge.phases import engine as engine_module

    eager = engine_module._step_function  # noqa: SLF001 — the reference's eager step for the "compiled" one
    try:
        engine_module._step_function = lambda mode, device: (phase_step, False)
        for s in range(12):
            a, b = host.update(torch.from_numpy(run[s]), s, 12), ref.update(torch.from_numpy(run[s]), s, 12)
            for k in ("textures", "settled", "accumulated", "phase_maps", "live"):
                np.testing.assert_array_equal(getattr(a, k).numpy(), getattr(b, k).numpy(), err_msg=f"{k} at {s}")
            assert json.dumps(a.scalars()) == json.dumps(b.scalars())  # the header, NaN included
            np.testing.assert_array_equal(host.phase_maps().numpy(), ref.phase_maps().numpy())
    finally:
        engine_module._step_function = eager
    assert host.summary().to_dict().keys() == ref.summary().to_dict().keys()
    np.testing.assert_array_equal(host.summary().series["mass"], ref.summary().series["mass"])


def test_the_blend_probe_matches_torch_here():
    """On this machine torch's blend of the three phases rounds as multiply-then-add (if this ever
    fails, the step still equals the reference: it keeps the product where the probe says no)."""
    assert isinstance(blend_is_multiply_add(), bool)


@pytest.mark.parametrize("shape", [(13, 64, 64), (3, 1, 1), (2, 5, 7)])
def test_host_measures_equal_measures_of_bit_for_bit(shape):
    """Including a NaN map, an all-zero word (zero total: share's guard) and a single pixel (entropy 0)."""
    from bridge.phases.host_step import host_measures
    from bridge.phases.timeline import measures_of

    n, h, w = shape
    g = torch.Generator().manual_seed(n)
    maps = torch.rand(n, h * w, generator=g) ** 3
    maps[0] = 0.0
    if n > 2:
        maps[2, 0] = float("nan")
    total = maps.sum(dim=1, keepdim=True)
    dist = torch.where(total > 0, maps / torch.where(total > 0, total, 1.0), 1.0 / (h * w))
    change = torch.rand(n, generator=g)
    change[-1] = float("nan")
    xs, ys = pixel_centres(h, w, torch.device("cpu"))
    for mass in (total[:, 0] / (h * w), torch.zeros(n)):
        want = measures_of(mass, dist, change, xs, ys)
        got = host_measures(mass, dist.clone(), change, xs, ys)
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_stable_since_on_the_host_equals_the_tensor_rule():
    from bridge.phases.host_step import _stable_since
    from bridge.phases.measures import update_stable_since

    previous = torch.tensor([-1.0, 3.0, -1.0, 5.0, 2.0])
    change = torch.tensor([0.01, 0.01, 0.5, float("nan"), 0.02])  # below, below (kept), above, NaN, at the threshold
    scal = torch.zeros(14)
    scal[12], scal[13] = 7.0, 0.02
    want = update_stable_since(previous, change, scal[12], scal[13])
    got = _stable_since(previous, change, scal)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert got.tolist() == [7.0, 3.0, -1.0, -1.0, -1.0]
