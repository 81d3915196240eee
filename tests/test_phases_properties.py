"""Hypothesis property tests: ranges, weight sums and continuity, scale invariance."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bridge.phases import (
    NORMALISATIONS,
    PhaseConfig,
    PhaseEngine,
    normalise,
    phase_weights,
    share_normalise,
    update_running_max,
)

# zeros or normal floats: a scale of 0.01 must not push values into float32 subnormals
finite = st.one_of(st.just(0.0), st.floats(min_value=2**-20, max_value=1.0, allow_nan=False, width=32))
shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))


@st.composite
def runs(draw):
    """A short run of raw maps: [T, N, H, W] non-negative, with some all-zero maps allowed."""
    t = draw(st.integers(1, 5))
    n, h, w = draw(shapes)
    data = draw(arrays(np.float32, (t, n, h, w), elements=finite))
    return torch.from_numpy(data)


@st.composite
def boundaries(draw):
    b1 = draw(st.floats(0.01, 0.9))
    b2 = draw(st.floats(b1 + 0.01, 0.99))
    return (b1, b2)


@settings(max_examples=60, deadline=None)
@given(run=runs(), mode=st.sampled_from(NORMALISATIONS), gv=st.sampled_from(("max", "mean")),
       dtype=st.sampled_from(("float32", "float16", "uint8")))
def test_every_output_map_is_in_unit_range(run, mode, gv, dtype):
    t, n = run.shape[:2]
    engine = PhaseEngine([f"w{i}" for i in range(n)], PhaseConfig(normalisation=mode, global_view=gv))
    for s in range(t):
        frame = engine.update(run[s], s, t)
        for name, arr in frame.arrays(dtype).items():
            a = arr.astype(np.float64)
            if dtype == "uint8":
                a = a / 255.0
            assert np.isfinite(a).all(), name
            assert a.min() >= 0.0 and a.max() <= 1.0, name
        sc = frame.scalars()
        assert all(0.0 <= v <= 1.0 + 1e-6 for v in sc["entropy"])
        assert all(0.0 <= v <= 1.0 for v in sc["centroid_x"] + sc["centroid_y"])


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0.0, 1.0), b=boundaries(), width=st.floats(0.0, 0.5))
def test_phase_weights_are_a_partition_of_one(p, b, width):
    w = phase_weights(p, b, width)
    assert len(w) == 3
    assert all(x >= 0.0 for x in w)
    assert abs(sum(w) - 1.0) < 1e-12


@settings(max_examples=200, deadline=None)
@given(b=boundaries(), width=st.floats(0.01, 0.5), which=st.integers(0, 1),
       offset=st.floats(-1.0, 1.0), delta=st.floats(1e-6, 1e-3))
def test_phase_weights_are_continuous_across_boundaries(b, width, which, offset, delta):
    """Around either boundary the weights move by at most (1.5 / width) * delta (smoothstep slope)."""
    p = min(1.0, max(0.0, b[which] + offset * width))
    q = min(1.0, p + delta)
    wp, wq = phase_weights(p, b, width), phase_weights(q, b, width)
    bound = 1.5 / width * (q - p) * 2 + 1e-12  # middle weight is a difference of two ramps
    assert max(abs(x - y) for x, y in zip(wp, wq)) <= bound


@settings(max_examples=100, deadline=None)
@given(p=st.floats(0.0, 1.0), b=boundaries(), width=st.floats(0.0, 0.5))
def test_phase_weight_flow_is_monotone(p, b, width):
    """Noise weight never grows and detail weight never shrinks as the run advances."""
    q = min(1.0, p + 0.01)
    wp, wq = phase_weights(p, b, width), phase_weights(q, b, width)
    assert wq[0] <= wp[0] + 1e-12 and wq[2] >= wp[2] - 1e-12


@settings(max_examples=60, deadline=None)
@given(run=runs(), scale=st.floats(0.01, 100.0), mode=st.sampled_from(NORMALISATIONS))
def test_textures_and_timelines_are_invariant_to_a_constant_scale(run, scale, mode):
    """Scaling every raw map by c > 0 leaves textures and the shape measures unchanged;
    mass, AUC and peak mass scale by c."""
    t, n = run.shape[:2]
    words = [f"w{i}" for i in range(n)]
    cfg = PhaseConfig(normalisation=mode)
    a, b = PhaseEngine(words, cfg), PhaseEngine(words, cfg)
    for s in range(t):
        fa, fb = a.update(run[s], s, t), b.update(run[s] * scale, s, t)
        np.testing.assert_allclose(fa.arrays()["textures"], fb.arrays()["textures"], atol=2e-5)
    sa, sb = a.summary(), b.summary()
    for name in ("share", "entropy", "centroid_x", "centroid_y", "spread", "change"):
        np.testing.assert_allclose(sa.series[name], sb.series[name], atol=2e-5, equal_nan=True)
    np.testing.assert_allclose(sb.series["mass"], sa.series["mass"] * scale, rtol=1e-4, atol=1e-30)
    np.testing.assert_allclose(sb.auc, sa.auc * scale, rtol=1e-4, atol=1e-30)
    # words with no attention at all stay so (integer step measures: see the power-of-two test)
    np.testing.assert_array_equal(sa.emergence_step >= 0, sb.emergence_step >= 0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.5, 2.0, 4.0, 0.25]))
def test_summary_steps_invariant_to_power_of_two_scale(seed, scale):
    """With an exact (power-of-two) scale, peak, emergence and stabilisation steps are identical."""
    g = torch.Generator().manual_seed(seed)
    run = torch.rand(8, 3, 6, 6, generator=g) * torch.linspace(0.1, 1.0, 8)[:, None, None, None]
    words = ["a", "b", "c"]
    a, b = PhaseEngine(words), PhaseEngine(words)
    for s in range(8):
        a.update(run[s], s, 8)
        b.update(run[s] * scale, s, 8)
    sa, sb = a.summary(), b.summary()
    np.testing.assert_array_equal(sa.peak_step, sb.peak_step)
    np.testing.assert_array_equal(sa.emergence_step, sb.emergence_step)
    np.testing.assert_array_equal(sa.stabilisation_step, sb.stabilisation_step)


@settings(max_examples=60, deadline=None)
@given(data=arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4)), elements=finite))
def test_share_sums_to_one_where_any_word_attends(data):
    maps = torch.from_numpy(data)
    sh = share_normalise(maps)
    total = sh.sum(dim=0)
    attended = maps.sum(dim=0) > 0
    assert torch.allclose(total[attended], torch.ones_like(total[attended]), atol=1e-5)
    assert (total[~attended] == 0).all()


@settings(max_examples=60, deadline=None)
@given(run=runs())
def test_running_max_texture_peaks_at_one_on_the_peak_step(run):
    """Under running max, the map holding a word's run maximum reaches exactly 1 there."""
    rm = None
    best = torch.zeros(run.shape[1])
    for s in range(run.shape[0]):
        rm = update_running_max(rm, run[s])
        tex = normalise(run[s], "running_max", rm)
        step_max = run[s].flatten(1).amax(1)
        new_peak = (step_max >= best) & (step_max > 0)
        assert torch.allclose(tex.flatten(1).amax(1)[new_peak], torch.ones(int(new_peak.sum())))
        best = torch.maximum(best, step_max)
