"""Phases: per-step textures, stability/chaos masks, three-phase morph and token timelines.

Pure tensor functions that run on the device where the maps live, plus one stateful
:class:`PhaseEngine` per run. See docs/PHASES.md for what each output means.
"""

from .config import GLOBAL_VIEWS, NORMALISATIONS, PhaseConfig
from .engine import COMPILE_MODES, PhaseEngine
from .forces import blend, chaos_force, force_gains, stability_force
from .frame import PhaseFrame
from .fused import StepOut, StepState, initial_state, phase_step, step_scalars
from .masks import chaos_mask, settledness, stability_mask, update_change_ema
from .morph import (
    PHASE_NAMES,
    accumulate_phases,
    blend_phase_maps,
    phase_index,
    phase_maps,
    phase_progress,
    phase_weights,
    run_progress,
    smoothstep,
)
from .normalise import (
    global_view,
    minmax_normalise,
    normalise,
    running_max_normalise,
    share_normalise,
    update_running_max,
)
from .packing import DTYPES, RGBA_CHANNELS, convert, pack_rgba, to_host
from .timeline import (
    SERIES,
    TimelineSummary,
    area_under_curve,
    distribution_change,
    emergence_steps,
    peak_steps,
    spatial_distribution,
    stabilisation_steps,
    step_measures,
)

#: What users import: the engine, its config and outputs, and the named choices. The building
#: blocks stay importable from their modules (bridge.phases.normalise, .masks, .morph, ...).
__all__ = [
    "COMPILE_MODES", "DTYPES", "GLOBAL_VIEWS", "NORMALISATIONS", "PHASE_NAMES", "RGBA_CHANNELS", "SERIES",
    "PhaseConfig", "PhaseEngine", "PhaseFrame", "TimelineSummary", "area_under_curve",
]
