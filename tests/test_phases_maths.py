"""Hand-computed small cases for the pure functions of bridge.phases."""

import math

import numpy as np
import pytest
import torch

from bridge.phases import (
    PhaseConfig,
    accumulate_phases,
    area_under_curve,
    blend_phase_maps,
    chaos_mask,
    convert,
    distribution_change,
    emergence_steps,
    force_gains,
    global_view,
    minmax_normalise,
    pack_rgba,
    peak_steps,
    phase_index,
    phase_maps,
    phase_progress,
    phase_weights,
    run_progress,
    running_max_normalise,
    settledness,
    share_normalise,
    smoothstep,
    spatial_distribution,
    stabilisation_steps,
    stability_mask,
    step_measures,
    update_change_ema,
    update_running_max,
)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_minmax_hand_case_and_flat_map():
    maps = t([[[0.0, 1.0], [2.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])  # [2, 2, 2]
    out = minmax_normalise(maps)
    assert out[0].tolist() == [[0.0, 0.25], [0.5, 1.0]]
    assert out[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # flat map -> 0, not NaN


def test_running_max_over_two_steps():
    a = t([[[1.0, 2.0]], [[0.0, 0.0]]])  # [2, 1, 2]
    b = t([[[4.0, 1.0]], [[0.0, 5.0]]])
    rm = update_running_max(None, a)
    assert rm.tolist() == [2.0, 0.0]
    assert running_max_normalise(a, rm).tolist() == [[[0.5, 1.0]], [[0.0, 0.0]]]
    rm = update_running_max(rm, b)
    assert rm.tolist() == [4.0, 5.0]
    assert running_max_normalise(b, rm).tolist() == [[[1.0, 0.25]], [[0.0, 1.0]]]
    # an earlier peak keeps later, weaker maps dim
    rm = update_running_max(rm, a)
    assert running_max_normalise(a, rm).tolist() == [[[0.25, 0.5]], [[0.0, 0.0]]]


def test_share_hand_case():
    maps = t([[[1.0, 0.0]], [[3.0, 0.0]]])  # [2, 1, 2]
    assert share_normalise(maps).tolist() == [[[0.25, 0.0]], [[0.75, 0.0]]]


def test_global_view_max_and_mean():
    tex = t([[[0.2, 1.0]], [[0.6, 0.0]]])
    assert global_view(tex, "max").tolist() == [[pytest.approx(0.6), 1.0]]
    assert global_view(tex, "mean").tolist() == [[pytest.approx(0.4), pytest.approx(0.5)]]


def test_masks():
    tex = t([0.0, 0.25, 1.0])
    assert stability_mask(tex).tolist() == [0.0, 0.25, 1.0]
    assert chaos_mask(tex).tolist() == [1.0, 0.75, 0.0]


def test_change_ema_and_settledness_hand_case():
    t0, t1, t2 = t([0.0]), t([0.5]), t([0.5])
    ema = update_change_ema(None, t0, None, 0.5)
    assert ema is None
    assert settledness(ema, 0.1, t0).tolist() == [0.0]  # nothing settled at the first step
    ema = update_change_ema(ema, t1, t0, 0.5)
    assert ema.tolist() == [0.5]  # first change seeds the average
    ema = update_change_ema(ema, t2, t1, 0.25)
    assert ema.tolist() == [0.375]  # 0.5 + 0.25 * (0 - 0.5)
    ema = update_change_ema(ema, t([0.75]), t2, 0.25)
    assert ema.tolist() == [0.34375]  # 0.375 + 0.25 * (0.25 - 0.375)
    ema = t([0.25])
    assert settledness(ema, 0.25, t0).tolist() == [pytest.approx(math.exp(-1.0))]
    assert settledness(torch.zeros(1), 0.25, t0).tolist() == [1.0]


def test_smoothstep_values():
    assert smoothstep(-1.0) == 0.0 and smoothstep(0.0) == 0.0
    assert smoothstep(0.5) == 0.5 and smoothstep(1.0) == 1.0 and smoothstep(2.0) == 1.0
    assert smoothstep(0.25) == pytest.approx(0.15625)


def test_phase_ids_match_the_visual_design_for_50_steps():
    b = (0.2, 0.6)
    ids = [phase_index(run_progress(s, 50), b) for s in range(50)]
    assert ids == [0] * 10 + [1] * 20 + [2] * 20  # steps 1-10, 11-30, 31-50 (1-based)
    assert phase_progress(run_progress(9, 50), b) == pytest.approx(1.0)
    assert phase_progress(run_progress(10, 50), b) == pytest.approx(0.05)
    assert phase_progress(run_progress(19, 50), b) == pytest.approx(0.5)
    assert phase_progress(run_progress(49, 50), b) == pytest.approx(1.0)


def test_run_progress_rejects_bad_steps():
    assert run_progress(0, 4) == 0.25
    with pytest.raises(ValueError, match="step must be in"):
        run_progress(4, 4)
    with pytest.raises(ValueError, match="total_steps"):
        run_progress(0, 0)


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.1, (1.0, 0.0, 0.0)),
        (0.15, (1.0, 0.0, 0.0)),
        (0.175, (1 - 0.15625, 0.15625, 0.0)),
        (0.2, (0.5, 0.5, 0.0)),
        (0.4, (0.0, 1.0, 0.0)),
        (0.6, (0.0, 0.5, 0.5)),
        (0.65, (0.0, 0.0, 1.0)),
        (1.0, (0.0, 0.0, 1.0)),
    ],
)
def test_phase_weights_hand_cases(p, expected):
    assert phase_weights(p, (0.2, 0.6), 0.1) == pytest.approx(expected)


def test_phase_weights_hard_cut_when_width_zero():
    assert phase_weights(0.2, (0.2, 0.6), 0.0) == (1.0, 0.0, 0.0)
    assert phase_weights(0.21, (0.2, 0.6), 0.0) == (0.0, 1.0, 0.0)
    assert phase_weights(0.61, (0.2, 0.6), 0.0) == (0.0, 0.0, 1.0)


def test_phase_accumulation_hand_case():
    acc = torch.zeros(3, 1, 1, 1)
    sums = [0.0, 0.0, 0.0]
    accumulate_phases(acc, sums, t([[[1.0]]]), (1.0, 0.0, 0.0))
    accumulate_phases(acc, sums, t([[[0.0]]]), (0.5, 0.5, 0.0))
    accumulate_phases(acc, sums, t([[[0.6]]]), (0.0, 1.0, 0.0))
    assert sums == [1.5, 1.5, 0.0]
    means = phase_maps(acc, sums)[:, 0, 0, 0].tolist()
    assert means == pytest.approx([1.0 / 1.5, 0.6 / 1.5, 0.0])  # weighted means; unreached phase = 0
    blended = blend_phase_maps(acc, sums, (0.0, 1.0, 0.0))
    assert blended.item() == pytest.approx(0.4)
    blended = blend_phase_maps(acc, sums, (0.5, 0.5, 0.0))
    assert blended.item() == pytest.approx(0.5 * (1 / 1.5) + 0.5 * 0.4)


def test_force_gains_blend():
    cfg = PhaseConfig()
    assert force_gains((1.0, 0.0, 0.0), cfg.wind, cfg.attraction) == (1.0, 0.1)
    assert force_gains((0.0, 0.5, 0.5), cfg.wind, cfg.attraction) == pytest.approx((0.3, 0.8))


def test_spatial_measures_single_pixel_and_two_pixels():
    maps = t([[[0.0, 2.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # [3, 2, 2]
    dist = spatial_distribution(maps)
    assert dist[2].tolist() == [0.25] * 4  # all-zero map -> uniform
    m = step_measures(maps, dist, torch.zeros(3))
    mass, share, entropy, cx, cy, spread, change = m.tolist()
    assert mass == pytest.approx([0.5, 0.5, 0.0])
    assert share == pytest.approx([0.5, 0.5, 0.0])
    assert entropy == pytest.approx([0.0, 0.5, 1.0])  # log2 / log4 = 0.5
    assert cx == pytest.approx([0.75, 0.5, 0.5])  # column 1 centre = 0.75
    assert cy == pytest.approx([0.25, 0.25, 0.5])  # row 0 = top
    assert spread == pytest.approx([0.0, 0.25, math.sqrt(0.0625 + 0.0625)])


def test_distribution_change_total_variation():
    p = t([[1.0, 0.0], [0.5, 0.5]])
    q = t([[0.0, 1.0], [0.5, 0.5]])
    assert distribution_change(p, q).tolist() == [1.0, 0.0]
    assert torch.isnan(distribution_change(p, None)).all()


def test_summary_measures_hand_cases():
    steps = np.array([0, 1, 2, 3, 4, 5])
    mass = np.array([[1.0, 0.0], [2.0, 0.0], [6.0, 0.0], [3.0, 0.0], [3.0, 0.0], [3.0, 0.0]])
    assert peak_steps(mass, steps).tolist() == [2, 0]
    assert emergence_steps(mass, steps, 0.5).tolist() == [2, -1]  # 6 * 0.5 = 3 first reached at step 2
    assert emergence_steps(mass, steps, 0.3).tolist() == [1, -1]
    assert area_under_curve(mass).tolist() == pytest.approx([18.0 / 6, 0.0])
    change = np.array(
        [[np.nan, np.nan], [0.5, 0.01], [0.01, 0.01], [0.3, 0.01], [0.01, 0.01], [0.01, 0.5]]
    )
    assert stabilisation_steps(change, steps, 0.02).tolist() == [4, -1]
    assert stabilisation_steps(change[:1], steps[:1], 0.02).tolist() == [-1, -1]


def test_pack_rgba_and_uint8_rounding():
    tex = t([[[0.0, 0.5]]])
    rgba = pack_rgba(tex, t([[[0.25, 1.0]]]), t([[[0.1, 0.2]]]))
    assert rgba.shape == (1, 1, 2, 4)
    assert rgba[0, 0, 1].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.2])
    assert rgba[0, 0, 0].tolist() == pytest.approx([0.0, 1.0, 0.25, 0.1])
    u = convert(t([0.0, 0.5, 1.0, 0.002, 0.998]), "uint8")
    assert u.dtype == torch.uint8 and u.tolist() == [0, 128, 255, 1, 254]
    with pytest.raises(ValueError, match="float32, float16, uint8"):
        convert(tex, "int16")


def test_pack_rgba_is_the_channel_stack():
    g = torch.Generator().manual_seed(0)
    tex, settled, acc = (torch.rand(5, 7, 9, generator=g) * 1.4 - 0.2 for _ in range(3))
    rgba = pack_rgba(tex, settled, acc)
    stability = tex.clamp(0.0, 1.0)
    assert rgba.is_contiguous() and rgba.shape == (5, 7, 9, 4)
    assert torch.equal(rgba, torch.stack([stability, 1.0 - stability, settled, acc], dim=-1))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="running_max, minmax, share"):
        PhaseConfig(normalisation="softmax")
    with pytest.raises(ValueError, match="0 < b1 < b2 < 1"):
        PhaseConfig(boundaries=(0.6, 0.2))
    with pytest.raises(ValueError, match="crossfade"):
        PhaseConfig(crossfade=-0.1)
    with pytest.raises(ValueError, match="wind"):
        PhaseConfig(wind=(1.0, 2.0))
    assert PhaseConfig(boundaries=[0.3, 0.7]).boundaries == (0.3, 0.7)


def test_one_table_of_formulas_names_every_mode():
    """Each normalisation / global view is one function in normalise.py's tables, keyed exactly
    by the config's Literals; the fused step and the reference both dispatch through them."""
    import inspect

    from bridge.phases import fused
    from bridge.phases.config import GLOBAL_VIEWS as VIEW_NAMES
    from bridge.phases.config import NORMALISATIONS as MODE_NAMES
    from bridge.phases.normalise import GLOBAL_VIEWS, NORMALISERS

    assert tuple(NORMALISERS) == MODE_NAMES and tuple(GLOBAL_VIEWS) == VIEW_NAMES
    src = inspect.getsource(fused.phase_step)
    assert "NORMALISERS[normalisation]" in src and "GLOBAL_VIEWS[global_view]" in src
    assert '== "minmax"' not in src and "amax(dim=0)" not in src  # no second copy of a formula
