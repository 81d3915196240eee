"""The fused step (bridge.phases.fused.phase_step): the engine's eager path equals composing
the pure functions (the maths docs/PHASES.md states), and the torch.compile path equals eager,
over multi-step runs in every normalisation mode, across the phase boundaries."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bridge.phases.measures import stabilisation_steps
from bridge.phases import (
    NORMALISATIONS,
    PhaseConfig,
    PhaseEngine,
    accumulate_phases,
    blend_phase_maps,
    distribution_change,
    global_view,
    normalise,
    phase_maps,
    phase_weights,
    run_progress,
    settledness,
    spatial_distribution,
    step_measures,
    update_change_ema,
    update_running_max,
)

finite = st.one_of(st.just(0.0), st.floats(min_value=2**-20, max_value=1.0, allow_nan=False, width=32))


class Reference:
    """The engine's step maths written with the pure functions, one branch per first-step case
    (what PhaseEngine.update did before the fused step)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.rm = self.prev = self.ema = self.prev_dist = self.acc = None
        self.sums = [0.0, 0.0, 0.0]
        self.changes, self.steps = [], []

    def step(self, maps, step, total):
        cfg = self.cfg
        maps = maps.float().clamp_min(0.0)
        if cfg.normalisation == "running_max":
            self.rm = update_running_max(self.rm, maps)
        tex = normalise(maps, cfg.normalisation, self.rm)
        tex = torch.cat([tex, global_view(tex, cfg.global_view)[None]])
        self.ema = update_change_ema(self.ema, tex, self.prev, cfg.settle_rate)
        settled = settledness(self.ema, cfg.settle_scale, tex)
        self.prev = tex
        weights = phase_weights(run_progress(step, total), cfg.boundaries, cfg.crossfade)
        if self.acc is None:
            self.acc = tex.new_zeros((3, *tex.shape))
        accumulate_phases(self.acc, self.sums, tex, weights)
        accumulated = blend_phase_maps(self.acc, self.sums, weights)
        dist = spatial_distribution(maps)
        change = distribution_change(dist, self.prev_dist)
        self.prev_dist = dist
        measures = step_measures(maps, dist, change)
        # stable_since: the offline stabilisation step of the run so far (the oracle of the live rule)
        self.changes.append(change.numpy().astype(np.float64))
        self.steps.append(step)
        since = stabilisation_steps(np.stack(self.changes), np.asarray(self.steps), cfg.stable_threshold)
        live = torch.cat([measures.reshape(-1), settled.flatten(1).mean(1), tex.flatten(1).mean(1),
                          torch.from_numpy(since).float()])
        return {"textures": tex, "settled": settled, "accumulated": accumulated,
                "phase_maps": phase_maps(self.acc[:, -1:], self.sums)[:, 0], "live": live, "all_phase_maps": phase_maps(self.acc, self.sums)}


def frame_values(frame, engine):
    return {"textures": frame.textures, "settled": frame.settled, "accumulated": frame.accumulated,
            "phase_maps": frame.phase_maps, "live": frame.live, "all_phase_maps": engine.phase_maps()}


def assert_close(got, want, rtol=1e-5, atol=1e-6):
    for k in want:
        np.testing.assert_allclose(got[k].cpu().numpy(), want[k].cpu().numpy(), rtol=rtol, atol=atol, equal_nan=True, err_msg=k)


def sample_run(t=10, n=5, h=8, w=6, seed=0):
    """Raw maps [T, N, H, W] with an all-zero map, a flat map and a negative value in them."""
    g = torch.Generator().manual_seed(seed)
    run = torch.rand(t, n, h, w, generator=g) * 0.02
    run[3, 1] = 0.0
    run[4, 2] = 0.01
    run[5, 0, 0, 0] = -0.5
    return run


@settings(max_examples=60, deadline=None)
@given(data=st.data(), mode=st.sampled_from(NORMALISATIONS), gv=st.sampled_from(("max", "mean")),
       crossfade=st.sampled_from((0.0, 0.1, 0.4)), rate=st.sampled_from((0.3, 0.7, 1.0)))
def test_eager_fused_step_equals_the_pure_functions(data, mode, gv, crossfade, rate):
    t = data.draw(st.integers(1, 8))
    n, h, w = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)))
    run = torch.from_numpy(data.draw(arrays(np.float32, (t, n, h, w), elements=finite)))
    # steps may skip (a run that only sees some of its steps), always increasing
    steps = sorted(data.draw(st.sets(st.integers(0, 2 * t - 1), min_size=t, max_size=t)))
    cfg = PhaseConfig(normalisation=mode, global_view=gv, crossfade=crossfade, settle_rate=rate)
    engine, ref = PhaseEngine([f"w{i}" for i in range(n)], cfg), Reference(cfg)
    for i, s in enumerate(steps):
        assert_close(frame_values(engine.update(run[i], s, 2 * t), engine), ref.step(run[i], s, 2 * t))


def decisive(summary, cfg, rel=1e-4) -> bool:
    """Whether a run's step summaries are far from their ties and thresholds: no word's two
    largest masses, no mass and its emergence level, no change and the stable threshold within
    ``rel`` of each other. Near one, a rounding difference between compiled and eager maths
    (float32, other summation orders) may rightly pick another step."""
    mass, change = summary.series["mass"].astype(np.float64), summary.series["change"].astype(np.float64)  # [T, N]
    scale = max(float(np.abs(mass).max(initial=0.0)), 1e-30)
    top = np.sort(mass, axis=0)
    if len(mass) > 1 and (top[-1] - top[-2] <= rel * scale).any():
        return False
    if (np.abs(mass - cfg.emergence_fraction * mass.max(axis=0)) <= rel * scale).any():
        return False
    return not (np.abs(np.nan_to_num(change, nan=np.inf) - cfg.stable_threshold) <= rel * cfg.stable_threshold).any()


def run_both(cfg, run, compile_mode=True, device="cpu", ties=True):
    """Compiled against eager over ``run``; ``ties=False``: the run must be decisive (its step
    summaries are compared, not skipped)."""
    t, n = run.shape[:2]
    words = [f"w{i}" for i in range(n)]
    eager, compiled = PhaseEngine(words, cfg, device=device), PhaseEngine(words, cfg, device=device, compile=compile_mode)
    frames = []
    # values in [0, 1] (textures, settled) carry float32 rounding of a few ulps per step
    for s in range(t):
        fe, fc = eager.update(run[s], s, t), compiled.update(run[s], s, t)
        assert_close(frame_values(fc, compiled), frame_values(fe, eager), rtol=1e-5, atol=1e-5)
        frames.append((fe, fc))
    assert compiled.compile_mode is not None  # it ran compiled throughout: no fall-back to eager
    for fe, fc in frames:  # earlier frames stay intact after later steps
        for k, v in fe.arrays().items():
            np.testing.assert_allclose(fc.arrays()[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
        sc, se = fc.scalars(), fe.scalars()
        for k in ("mass", "share", "entropy", "centroid_x", "centroid_y", "spread", "settled"):
            np.testing.assert_allclose(sc[k], se[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert (sc["change"][0] is None) == (se["change"][0] is None)
    summary = eager.summary()
    se, sc = summary.to_dict(), compiled.summary().to_dict()
    assert ties or decisive(summary, cfg)
    if decisive(summary, cfg):  # else a tie, which rounding may break either way
        for k in ("peak_step", "emergence_step", "stabilisation_step", "emergence_order"):
            assert sc[k] == se[k], k
    return eager, compiled


@pytest.mark.parametrize("mode", NORMALISATIONS)
def test_compiled_step_equals_eager_over_a_run(mode):
    """10 steps with boundaries (0.2, 0.6) and a cross-fade: steps 1-2 noise, the fades around
    progress 0.2 and 0.6, and the detail phase; the first step's zero state included."""
    cfg = PhaseConfig(normalisation=mode, crossfade=0.2)
    run = sample_run()
    run_both(cfg, run, ties=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really compiled
    # the compiled graph is reused: a new engine, and a new run after reset(), do not recompile
    with torch._dynamo.config.patch(error_on_recompile=True):
        _, compiled = run_both(cfg, run * 3.0, ties=False)
        compiled.reset()
        for s in range(4):
            compiled.update(run[s], s, 4)


def test_compiled_hard_cut_and_mean_view():
    run_both(PhaseConfig(crossfade=0.0, global_view="mean", boundaries=(0.3, 0.5)), sample_run(seed=1), ties=False)


@settings(max_examples=15, deadline=None)
@given(run=arrays(np.float32, (6, 5, 8, 6), elements=finite), mode=st.sampled_from(NORMALISATIONS))
@example(run=np.full((6, 5, 8, 6), 0.48324794, np.float32), mode="running_max")  # every step ties: found by CI
def test_compiled_step_equals_eager_on_any_maps(run, mode):
    """Same shapes as above, so the graphs compiled once serve every example. Step summaries are
    compared where the run decides them (:func:`decisive`)."""
    run_both(PhaseConfig(normalisation=mode, crossfade=0.2), torch.from_numpy(run))


def test_compile_argument():
    assert PhaseEngine(["a"]).compile_mode is None
    assert PhaseEngine(["a"], compile=True).compile_mode == "default"
    assert PhaseEngine(["a"], compile="reduce-overhead").compile_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="compile"):
        PhaseEngine(["a"], compile="fastest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_mode", ["default", "reduce-overhead"])
def test_cuda_compiled_equals_eager(compile_mode):
    """On CUDA, incl. CUDA graphs: frames of earlier steps must survive later replays."""
    for mode in NORMALISATIONS:
        run_both(PhaseConfig(normalisation=mode, crossfade=0.2), sample_run().cuda(), compile_mode, device="cuda", ties=False)


def test_a_compiled_step_that_fails_falls_back_to_the_eager_step(monkeypatch, caplog):
    """A missing compiler toolchain must not cost a run: the engine logs once and goes on eagerly."""
    from bridge.phases import engine as engine_module

    def broken(mode, device):
        if mode is None:
            return engine_module.phase_step, False

        def fail(*_a, **_k):
            raise RuntimeError("no C++ compiler found")

        return fail, False

    maps = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = PhaseEngine(list("abc"), PhaseConfig())
    expected = [reference.update(m, i, 5).textures for i, m in enumerate(maps)]
    monkeypatch.setattr(engine_module, "_step_function", broken)
    eng = PhaseEngine(list("abc"), PhaseConfig(), compile=True)
    with caplog.at_level("WARNING"):
        got = [eng.update(m, i, 5).textures for i, m in enumerate(maps)]
    assert eng.compile_mode is None
    assert sum("compiled phases step failed" in r.message for r in caplog.records) == 1
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_compiled_step_serves_new_prompt_lengths_without_recompiling():
    """A daemon sees prompts of many lengths: after a second word count the graph is dynamic in
    it, and a third length compiles nothing (torch's recompile limit would otherwise push a long
    session back to eager)."""
    cfg = PhaseConfig(normalisation="share", global_view="mean")
    for words in (3, 4):  # the first shape compiles static, the second makes the word count symbolic
        run_both(cfg, sample_run(n=words), ties=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        _, compiled = run_both(cfg, sample_run(n=7))  # two of its words near a tie: summaries not compared
        assert len(compiled.words) == 7
