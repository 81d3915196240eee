"""Packet recipes: module-level functions that build a run's Packets from host arrays.

The runner makes a ``functools.partial`` of one of these per step; it runs on the packet worker
or, pickled, in the sink process (:mod:`bridge.stream.process`), which is why they live in the
delivery room and take only picklable arguments.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import fields as dataclass_fields
from functools import partial
from typing import Any

import numpy as np
import torch

from bridge.phases import PhaseConfig, PhaseEngine, PhaseFrame
from bridge.protocol import Packet

log = logging.getLogger(__name__)


#: PhaseFrame's tensors (copied to the host per step) and its other fields (plain values).
FRAME_TENSORS = ("textures", "settled", "accumulated", "phase_maps", "live")
FRAME_FIELDS = tuple(f.name for f in dataclass_fields(PhaseFrame) if f.name not in FRAME_TENSORS and not f.name.startswith("_"))


def step_packet(run_id: str, fields: dict[str, Any], flat: np.ndarray, layout: list[tuple[str, tuple[int, ...]]],
                focus: list[int], timestep: float, ended: float | None = None) -> Packet:
    """The step Packet of one PhaseFrame from its tensors' host values, concatenated in ``layout``
    order (anything after them is ignored): a recipe, so it may run in the sink process
    (bridge.stream.process) as well as on the packet worker."""
    values = torch.from_numpy(np.require(flat, np.float32, requirements="W"))  # from a socket it is read-only
    tensors: dict[str, Any] = {}  # PhaseFrame's tensor fields by name, as ``layout`` lists them
    offset = 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        tensors[name] = values[offset : offset + size].view(shape)
        offset += size
    return _step(run_id, PhaseFrame(**fields, **tensors), focus, timestep, ended)


def _step(run_id: str, pf: PhaseFrame, focus: list[int], timestep: float, ended: float | None) -> Packet:
    """``step_end``: when the step ended on the model's thread (Unix seconds; the FanOut adds ``sent``)."""
    return Packet("step", {"run_id": run_id, **pf.scalars(), "focus": focus, "timestep": timestep, "step_end": ended},
                  pf.arrays("float32"))


#: Phase engines of the runs whose phases run where packets are built (``phases_on="host"``): the
#: packet workers, or a PacketProcess's child. A run's engine goes with its
#: timeline packet; a run that never ends (an error) is dropped after KEEP_ENGINES newer ones. The
#: daemon's idle replay sends a run's recipes again: its step 0 starts the run's phases afresh.
_ENGINES: "OrderedDict[str, PhaseEngine]" = OrderedDict()
KEEP_ENGINES = 4
_ENGINES_LOCK = threading.Lock()
#: Staged items' recipes by run, kind and step, for the idle replay: the latest KEEP_RUNS runs.
_KEPT: "OrderedDict[str, dict[tuple[str, int], partial[Packet]]]" = OrderedDict()
KEEP_RUNS = 2


def host_step_packet(run_id: str, words: list[str], cfg: PhaseConfig, maps: np.ndarray, step: int, total: int,
                     focus: list[int], timestep: float, ended: float | None = None) -> Packet:
    """Run one step of the run's phases on the CPU (``maps`` ``[W, H, W]``) and build its Packet:
    a recipe, for the sink process or the packet worker."""
    engine = _engine(run_id, words, cfg, step)
    with torch.inference_mode():  # one mode for the engine's state, whichever thread or process runs this step
        pf = engine.update(torch.from_numpy(np.require(maps, np.float32, requirements="W")), step, total)
    return _step(run_id, pf, focus, timestep, ended)


def prepare_run(run_id: str, words: list[str], cfg: PhaseConfig, height: int, width: int) -> None:
    """A recipe with nothing to send: the run's phase engine and its zero state for ``[W, height,
    width]`` maps, made where the steps will be built while the model computes step 0 (the
    runner sends it with the run packet), so the first step's packet comes as fast as the others."""
    engine = _engine(run_id, words, cfg, 0)
    with torch.inference_mode():
        engine.prepare(height, width)


def _engine(run_id: str, words: list[str], cfg: PhaseConfig, step: int) -> PhaseEngine:
    """The run's phase engine in this process: a new one for a new run or a replay (a step not
    after the engine's last)."""
    with _ENGINES_LOCK:  # several runners' workers may share this process
        engine = _ENGINES.get(run_id)
        if engine is None or engine.last_step is not None and step <= engine.last_step:  # a new run, or a replay of one
            engine = _ENGINES[run_id] = PhaseEngine(words, cfg, device="cpu")
            while len(_ENGINES) > KEEP_ENGINES:
                _ENGINES.popitem(last=False)
        return engine


def image_packet(run_id: str, step: int, image: np.ndarray) -> Packet:
    """A step's quick preview (``uint8 [H, W, 3]``, the linear latent→RGB map) as its ``image`` packet."""
    return Packet("image", {"run_id": run_id, "step": step, "final": False, "preview": "linear"}, {"image": image})


def staged_recipe(staged: Any, payload: np.ndarray) -> "partial[Packet]":
    """The recipe of a :class:`~bridge.stream.ring.StagedStep` or ``StagedImage`` whose payload
    (its slot's bytes, copied out) has landed: a step's float32 maps, then the timestep where the
    notice has none; an image's uint8 pixels. Built in the sink process and kept there for the
    daemon's idle replay (:func:`kept_item`)."""
    from bridge.stream.ring import StagedStep  # noqa: PLC0415 (the ring imports nothing of this module, but keep it light)

    if isinstance(staged, StagedStep):
        flat = payload.view(np.float32)
        shape = staged.shape
        size = shape[0] * shape[1] * shape[2]
        timestep = float(flat[size]) if staged.timestep is None else staged.timestep
        recipe = partial(host_step_packet, staged.run_id, staged.words, staged.cfg, flat[:size].reshape(shape), staged.step,
                         staged.total, staged.focus, timestep, staged.ended)
        key = ("step", staged.step)
    else:
        recipe = partial(image_packet, staged.run_id, staged.step, payload.reshape(staged.shape))
        key = ("image", staged.step)
    with _ENGINES_LOCK:
        kept = _KEPT.setdefault(staged.run_id, {})
        _KEPT.move_to_end(staged.run_id)
        kept[key] = recipe
        while len(_KEPT) > KEEP_RUNS:
            _KEPT.popitem(last=False)
    return recipe


def kept_item(run_id: str, kind: str, step: int) -> Packet | None:
    """A staged step's (``kind`` "step") or preview's ("image") packet built again from what the
    sink process kept: the daemon's idle replay of a run whose maps and previews never passed
    through the model's process as arrays. None if this process has not kept it (a new sink
    process: the replay goes on without it)."""
    with _ENGINES_LOCK:
        recipe = _KEPT.get(run_id, {}).get((kind, step))
    if recipe is None:
        log.warning("nothing kept of run %s's %s %d to replay (the sink process was restarted?)", run_id, kind, step)
        return None
    return recipe()


def timeline_packet(run_id: str) -> Packet | None:
    """The run's timeline from the engine that :func:`host_step_packet` kept (None if it saw no step)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(run_id, None)
    return None if engine is None else timeline_of(run_id, engine)


def timeline_of(run_id: str, engine: PhaseEngine) -> Packet:
    summary = engine.summary()
    arrays = summary.arrays()  # per-step series [T, W] and steps [T]
    header = {k: v for k, v in summary.to_dict().items() if k not in arrays and k != "series"}
    return Packet("timeline", {"run_id": run_id, **header, "words": engine.words}, arrays)




def objects_packet(run_id: str, prompt: str, evidence: Any) -> Packet:
    """The run's objects (``bridge.analysis.objects.annotate`` on its Evidence) as an ``objects``
    packet: each instance's category, mentions, score, bbox, area and RLE mask, JSON only. A prompt
    whose objects cannot be found says why in ``error`` instead of failing the run."""
    from bridge.analysis.objects import annotate, parse_prompt  # noqa: PLC0415 (the ``objects`` extra)

    header: dict[str, Any] = {"run_id": run_id, "prompt": prompt, "size": list(evidence.size), "instances": [],
                              "unclassified_words": []}
    try:
        header["unclassified_words"] = parse_prompt(prompt).unknown
        header["instances"] = [i.to_json() for i in annotate(evidence, prompt)]
    except ValueError as exc:
        log.warning("objects of run %s: %s", run_id, exc)
        header["error"] = str(exc)
    return Packet("objects", header)
