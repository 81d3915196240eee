"""PhaseEngine / PhaseFrame / TimelineSummary behaviour and the contract others build on."""

import json
import math

import numpy as np
import pytest
import torch

from bridge.phases import PhaseConfig, PhaseEngine, PhaseFrame, TimelineSummary
from bridge.phases.packing import pack_rgba

WORDS = ["a", "red", "car"]


def blob(h, w, cy, cx, sigma, amp):
    """A Gaussian blob of raw attention, [h, w]."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    return amp * torch.exp(-((ys[:, None] - cy) ** 2 + (xs[None] - cx) ** 2) / (2 * sigma**2))


def run(engine, maps_per_step):
    total = len(maps_per_step)
    return [engine.update(m, s, total) for s, m in enumerate(maps_per_step)]


def test_contract_scalars_and_arrays_shapes():
    engine = PhaseEngine(WORDS)
    frames = run(engine, [torch.rand(3, 8, 6) * 0.01 for _ in range(5)])
    frame = frames[2]
    assert isinstance(frame, PhaseFrame)
    sc = frame.scalars()
    json.dumps(sc)  # JSON-able
    for key in ("step", "total_steps", "progress", "phase", "phase_progress", "phase_weights", "words",
                "mass", "entropy", "centroid_x", "centroid_y", "spread", "forces"):
        assert key in sc, key
    assert sc["step"] == 2 and sc["total_steps"] == 5 and sc["words"] == WORDS
    assert sc["progress"] == pytest.approx(0.6)
    assert sum(sc["phase_weights"]) == pytest.approx(1.0) and len(sc["phase_weights"]) == 3
    assert all(len(sc[k]) == 3 for k in ("mass", "entropy", "centroid_x", "centroid_y", "spread"))
    assert set(sc["forces"]) >= {"wind", "attraction", "chaos", "stability"}
    for dtype, np_dtype in (("float32", np.float32), ("float16", np.float16), ("uint8", np.uint8)):
        arrs = frame.arrays(dtype)
        assert arrs["textures"].shape == (4, 8, 6) and arrs["textures"].dtype == np_dtype
        assert arrs["settled"].shape == (4, 8, 6)
        assert arrs["accumulated"].shape == (4, 8, 6)
        assert arrs["rgba"].shape == (4, 8, 6, 4) and arrs["rgba"].dtype == np_dtype
        assert arrs["phase_maps"].shape == (3, 8, 6)
        assert all(a.flags.c_contiguous for a in arrs.values())


def test_arrays_channels_agree_and_uint8_is_rounded():
    engine = PhaseEngine(WORDS)
    frame = run(engine, [torch.rand(3, 4, 4) for _ in range(4)])[-1]
    f = frame.arrays("float32")
    np.testing.assert_array_equal(f["rgba"][..., 0], f["textures"])
    np.testing.assert_allclose(f["rgba"][..., 1], 1.0 - f["textures"], atol=1e-7)
    np.testing.assert_array_equal(f["rgba"][..., 2], f["settled"])
    np.testing.assert_array_equal(f["rgba"][..., 3], f["accumulated"])
    np.testing.assert_array_equal(f["textures"][-1], f["textures"][:-1].max(axis=0))  # global = max
    u = frame.arrays("uint8")
    np.testing.assert_array_equal(u["textures"], np.round(f["textures"].astype(np.float64) * 255).astype(np.uint8))
    h = frame.arrays("float16")
    np.testing.assert_allclose(h["textures"].astype(np.float32), f["textures"], atol=1e-3)


def test_arrays_does_one_device_to_host_copy(monkeypatch):
    engine = PhaseEngine(WORDS)
    frame = engine.update(torch.rand(3, 4, 4), 0, 2)
    calls = []
    original = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    arrays = frame.arrays("uint8")
    assert calls == []  # on the CPU the converted tensors' memory is shared: nothing to copy (a device makes one copy)
    assert arrays["textures"].dtype == np.uint8 and arrays["rgba"].shape == (4, 4, 4, 4)
    calls.clear()
    frame.scalars()
    assert len(calls) == 1


def test_scalars_values_first_step_and_forces():
    cfg = PhaseConfig()
    engine = PhaseEngine(["x"], cfg)
    m = torch.zeros(1, 2, 2)
    m[0, 0, 1] = 0.4
    sc = engine.update(m, 0, 10).scalars()
    assert sc["phase"] == 0 and sc["phase_weights"] == [1.0, 0.0, 0.0]
    assert sc["mass"] == [pytest.approx(0.1)] and sc["entropy"] == [0.0]
    assert sc["centroid_x"] == [0.75] and sc["centroid_y"] == [0.25] and sc["spread"] == [0.0]
    assert sc["change"] == [None]  # no previous step
    assert sc["settled"] == [0.0]
    # texture = [0, 1, 0, 0] -> mean stability 0.25; global (max of one word) is the same
    f = sc["forces"]
    assert f["wind"] == 1.0 and f["attraction"] == pytest.approx(0.1)
    assert f["chaos"] == pytest.approx(1.0 * 0.75) and f["stability"] == pytest.approx(0.1 * 0.25)
    assert f["chaos_words"] == [pytest.approx(0.75)]


def test_settled_rises_when_maps_stop_changing():
    engine = PhaseEngine(["x"], PhaseConfig(settle_rate=0.25, settle_scale=0.1))
    a, b = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])
    frames = run(engine, [a, b, b, b, b])
    means = [fr.arrays()["settled"][0].mean() for fr in frames]
    assert means[0] == 0.0
    # change 1 at step 1 -> ema 1, then 0.75, 0.5625, 0.421875 (decays by 1 - rate)
    emas = [1.0, 0.75, 0.5625, 0.421875]
    assert means[1:] == pytest.approx([math.exp(-e / 0.1) for e in emas], rel=1e-5)


def test_running_max_default_shows_emergence_minmax_does_not():
    """Diffuse noise at step 0, a sharp blob later: running max keeps step 0 low-contrast."""
    h = w = 16
    diffuse = (0.010 + 0.001 * torch.rand(1, h, w, generator=torch.Generator().manual_seed(0)))
    sharp = blob(h, w, 0.5, 0.5, 0.1, 0.2)[None] + 0.01
    steps = [diffuse, sharp]
    rm = run(PhaseEngine(["cat"]), steps)
    mm = run(PhaseEngine(["cat"], PhaseConfig(normalisation="minmax")), steps)
    rm0 = rm[0].arrays()["textures"][0]
    mm0 = mm[0].arrays()["textures"][0]
    assert mm0.max() - mm0.min() == pytest.approx(1.0)  # noise stretched to full contrast
    assert rm0.max() - rm0.min() < 0.15  # noise reads as a flat, undecided plate
    # after the blob arrives, the earlier step would be dim on the same scale
    assert rm[1].arrays()["textures"][0].max() == pytest.approx(1.0)


def test_phase_accumulated_maps_follow_the_phases():
    cfg = PhaseConfig(boundaries=(0.25, 0.5), crossfade=0.0)
    engine = PhaseEngine(["x"], cfg)
    left = torch.tensor([[[1.0, 0.0]]])
    right = torch.tensor([[[0.0, 1.0]]])
    # 4 steps: progress .25 (noise), .5 (structure), .75, 1.0 (detail)
    frames = run(engine, [left, right, left, right])
    assert [fr.phase for fr in frames] == [0, 1, 2, 2]
    pm = frames[-1].arrays()["phase_maps"]  # global view per phase
    np.testing.assert_allclose(pm[:, 0], [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(frames[1].arrays()["accumulated"][0, 0], [0.0, 1.0])
    # the detail phase remembers both of its steps, unlike the live texture
    np.testing.assert_allclose(frames[-1].arrays()["accumulated"][:, 0], [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(frames[-1].arrays()["textures"][0, 0], [0.0, 1.0])
    full = engine.phase_maps()
    assert tuple(full.shape) == (3, 2, 1, 2)


def test_summary_emergence_order_background_before_detail():
    """Synthetic run: 'sky' grows early and broad, 'eye' late and small; the summary says so."""
    h = w = 16
    total = 20
    maps = []
    for s in range(total):
        p = (s + 1) / total
        sky = blob(h, w, 0.2, 0.5, 0.4, 0.05 * min(1.0, p / 0.3))
        eye = blob(h, w, 0.6, 0.6, 0.05, 0.002 + 0.1 * max(0.0, p - 0.6))
        maps.append(torch.stack([sky, eye]))
    engine = PhaseEngine(["sky", "eye"])
    run(engine, maps)
    summ = engine.summary()
    assert isinstance(summ, TimelineSummary)
    d = summ.to_dict()
    json.dumps(d)
    assert d["emergence_order"] == ["sky", "eye"]
    assert d["emergence_step"][0] < d["emergence_step"][1]
    assert d["peak_step"][1] == total - 1
    assert len(d["mass"]) == total and len(d["mass"][0]) == 2 and d["change"][0] == [None, None]
    assert d["auc"][0] == pytest.approx(float(summ.series["mass"][:, 0].astype(np.float64).mean()), rel=1e-6)
    assert summ.series["entropy"][-1, 0] > summ.series["entropy"][-1, 1]  # broad vs focused
    assert summ.stabilisation_step[0] >= 1  # sky settles once its growth ends
    assert set(summ.arrays()) == {"steps", "mass", "share", "entropy", "centroid_x", "centroid_y", "spread", "change"}
    assert summ.arrays()["mass"].shape == (total, 2)


def test_reset_and_empty_summary():
    engine = PhaseEngine(WORDS)
    run(engine, [torch.rand(3, 4, 4) for _ in range(3)])
    engine.reset()
    s = engine.summary()
    assert s.steps.tolist() == [] and s.peak_step.tolist() == [-1, -1, -1]
    json.dumps(s.to_dict())
    engine.update(torch.rand(3, 4, 4), 0, 3)  # a fresh run may start at step 0 again
    assert engine.summary().steps.tolist() == [0]


def test_bad_input_errors_name_what_is_wrong():
    engine = PhaseEngine(WORDS)
    with pytest.raises(ValueError, match=r"\[words=3, H, W\].*'red'"):
        engine.update(torch.rand(2, 4, 4), 0, 5)
    with pytest.raises(TypeError, match="float"):
        engine.update(torch.ones(3, 4, 4, dtype=torch.int64), 0, 5)
    with pytest.raises(ValueError, match="step must be in"):
        engine.update(torch.rand(3, 4, 4), 5, 5)
    engine.update(torch.rand(3, 4, 4), 2, 5)
    with pytest.raises(ValueError, match="reset"):
        engine.update(torch.rand(3, 4, 4), 1, 5)
    with pytest.raises(ValueError, match="total_steps changed"):
        engine.update(torch.rand(3, 4, 4), 3, 6)
    with pytest.raises(ValueError, match="map size changed"):
        engine.update(torch.rand(3, 8, 8), 3, 5)
    with pytest.raises(ValueError, match="at least one word"):
        PhaseEngine([])


def test_half_precision_and_negative_input_are_handled():
    engine = PhaseEngine(["x"])
    m = torch.tensor([[[-1.0, 0.5]]], dtype=torch.float16)
    tex = engine.update(m, 0, 1).arrays()["textures"]
    np.testing.assert_allclose(tex[0, 0], [0.0, 1.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    maps = [torch.rand(3, 8, 8) for _ in range(6)]
    cpu = run(PhaseEngine(WORDS), maps)[-1]
    gpu = run(PhaseEngine(WORDS, device="cuda"), [m.cuda() for m in maps])[-1]
    assert gpu.textures.is_cuda
    for k, v in cpu.arrays().items():
        np.testing.assert_allclose(gpu.arrays()[k], v, atol=1e-5)
    for k in ("mass", "entropy", "centroid_x", "spread"):
        np.testing.assert_allclose(gpu.scalars()[k], cpu.scalars()[k], rtol=1e-4, atol=1e-6)


def test_scalars_are_a_fresh_copy_each_call():
    """A sink may edit the header it gets; the frame's cached scalars must not change."""
    engine = PhaseEngine(["a", "b"], PhaseConfig())
    frame = engine.update(torch.rand(2, 4, 4), 0, 5)
    first = frame.scalars()
    first["mass"][0] = -1.0
    first["forces"]["chaos_words"].append(9.0)
    first["phase_weights"][0] = 7.0
    again = frame.scalars()
    assert again["mass"][0] != -1.0 and len(again["forces"]["chaos_words"]) == 2 and again["phase_weights"][0] != 7.0
    assert again == frame.scalars()


def test_pack_rgba_on_the_cpu_is_the_clamp_then_one_minus_bit_for_bit():
    """The CPU path writes each channel straight into the interleaved output: the same values as
    stacking torch's clamp, 1 - clamp, settled and accumulated (NaN and out-of-range included)."""
    g = torch.Generator().manual_seed(0)
    tex, settled, acc = (torch.rand(3, 5, 4, generator=g) * 1.2 - 0.1 for _ in range(3))
    tex[0, 0, 0] = float("nan")
    got = pack_rgba(tex, settled, acc)
    st = tex.clamp(0.0, 1.0)
    torch.testing.assert_close(got, torch.stack([st, 1.0 - st, settled, acc], dim=-1), equal_nan=True, rtol=0, atol=0)
    assert got.is_contiguous() and got.dtype == torch.float32 and got.shape == (3, 5, 4, 4)
    half = pack_rgba(tex.half(), settled.half(), acc.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, torch.stack([tex.half().clamp(0, 1), 1 - tex.half().clamp(0, 1), settled.half(), acc.half()], -1),
                               equal_nan=True, rtol=0, atol=0)


def test_a_prepared_state_gives_the_same_steps_and_one_of_another_size_is_replaced():
    """prepare() makes the zero state before the first step: the frames are bit for bit those of
    an engine that made it at the first step; a state prepared for other maps is not used."""
    words = ["a", "cat", "on", "a", "mat"]
    g = torch.Generator().manual_seed(3)
    steps = [torch.rand(5, 8, 6, generator=g) for _ in range(4)]
    plain, prepared, wrong = (PhaseEngine(words, device="cpu") for _ in range(3))
    prepared.prepare(8, 6)
    wrong.prepare(6, 8)
    for i, m in enumerate(steps):
        a, b, c = (e.update(m, i, 4) for e in (plain, prepared, wrong))
        for k in ("textures", "settled", "accumulated", "phase_maps", "live"):  # live: step 0's change is NaN
            torch.testing.assert_close(getattr(b, k), getattr(a, k), rtol=0, atol=0, equal_nan=True, msg=k)
            torch.testing.assert_close(getattr(c, k), getattr(a, k), rtol=0, atol=0, equal_nan=True, msg=k)
    before = prepared._state
    prepared.prepare(8, 6)  # after a step: nothing happens
    assert prepared._state is before

