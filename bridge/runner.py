"""One generation with capture → phases → Packets: the loop every job (record, serve) shares.

The runner owns no sockets and builds no packets itself: it hands each step's host copy and a
recipe (bridge.stream.recipes) to a :class:`~bridge.stream.publisher.Publisher` (a FanOut, a
PacketProcess, a list's append, …), so the same code feeds live sinks, a trace, or a test.
Orchestration only: delivery lives in bridge/stream/.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Literal, cast

import numpy as np
import torch

from bridge.capture import Capture, CaptureConfig, CaptureRun, StepFrame, adapter_for
from bridge.latent_preview import LinearPreview, decode_full
from bridge.capture.errors import WordNotFoundError
from bridge.capture.tokens import TokenMap, build_token_map, unseen_words
from bridge.phases import PhaseConfig, PhaseEngine, PhaseFrame
from bridge.protocol import Packet
from bridge.request import GenerateParams, pipeline_kwargs
from bridge.stream.host import HostBlocks, HostSnapshot, OrderedWorker
from bridge.stream.publisher import Publisher, Recipe, StagingPublisher, as_publisher
from bridge.stream.recipes import (FRAME_FIELDS, FRAME_TENSORS, host_step_packet, image_packet, objects_packet, prepare_run, step_packet, timeline_of,
                                   timeline_packet)
from bridge.stream.ring import Slot, StagedImage, StagedStep

log = logging.getLogger(__name__)

Publish = Callable[[Packet], None]
PhasesOn = Literal["auto", "host", "device"]

#: What to generate: the same validated object the control channel produces (one definition).
Request = GenerateParams


@dataclass
class RunState:
    """What one run has learnt by its first step (the run packet's facts) and where its phases run."""

    phases: Literal["host", "device"]
    run_id: str = ""
    words: list[str] | None = None  # None until the run starts (its first evaluation): no run packet has gone out
    focus: list[int] = field(default_factory=list)
    engine: PhaseEngine | None = None  # phases on the device only
    unseen: list[str] = field(default_factory=list)  # words the model never saw (reported, not hidden)
    staging: torch.Tensor | None = None  # the step's word maps (+ timestep) on the device, host phases only
    publisher: StagingPublisher | None = None  # the run's publisher where it takes staged steps (a ring)


@dataclass
class RunResult:
    run_id: str
    status: str  # done | cancelled | error
    steps: int
    seconds: float
    image: np.ndarray | None = None
    error: str | None = None
    run: CaptureRun | None = None
    timings: dict[str, float] | None = None  # seconds: setup, denoise, decode, drain (the packet worker catching up)


class Runner:
    """Generates with capture and phases, publishing run/step/image/timeline/end Packets.

    image_every: publish a cheap step image (x0 through a fitted linear latent→RGB map)
    every N steps (0 = only the final image). The final image is always fully decoded.
    """

    def __init__(
        self,
        pipe: Any,
        publish: Publisher | Publish,
        model_name: str = "",
        image_every: int = 1,
        phase_config: PhaseConfig | None = None,
        capture_config: CaptureConfig | None = None,
        concepts: dict[str, dict[str, list[float]]] | None = None,
        phases_on: PhasesOn = "auto",
        step_clock: Callable[[str, int], None] | None = None,
        observer: Callable[[StepFrame, CaptureRun], None] | None = None,
        objects: bool = False,
    ) -> None:
        """``publish``: a :class:`~bridge.stream.publisher.Publisher`, or a plain callable taking
        Packets (wrapped in a LocalPublisher).

        ``phases_on``: ``device`` runs the phases where the maps are, on the model's thread
        (compiled on CUDA: a few kernels per step), and packets are built from their results;
        ``host`` runs them on the CPU where packets are built, from a non-blocking host copy of each
        step's word maps: in the sink process when the publisher is remote (a
        :class:`~bridge.stream.process.PacketProcess`; then the model's process does no phase work
        at all), else on the packet worker (whose Python then competes with the model's thread for
        the GIL); ``auto`` (the default) is ``host`` with a remote publisher or without CUDA, and
        ``device`` for an in-process publisher on CUDA.

        Every recipe is handed over by the packet thread, which waits for the step's host copy: the
        model's thread only launches the copy (handing over on the model's thread measured the
        same, 1.001× over 443 paired rounds, docs/BENCHMARKS.md "Delivery", and was removed).
        A publisher with a ring (a StagingPublisher: ``stepx serve``'s default sink process) takes each
        step's maps and preview through it instead: the model's thread copies them into a slot
        and sends the notice itself, unless the packet thread still has items to send first."""
        # ``step_clock(run_id, step)`` is called on the model's thread as each step ends (before
        # its packet is built): benchmarks time step → subscriber latency from there.
        # ``observer(frame, run)`` sees every step's frame on the model's thread (the objects
        # analysis keeps word maps and self-attention from it); it must be quick.
        # ``objects``: find the prompt's objects (text-guided detection, docs/OBJECTS.md) and
        # publish them as an ``objects`` packet after the final image, before ``end``.
        if phases_on not in ("auto", "host", "device"):
            raise ValueError(f"phases_on must be 'auto', 'host' or 'device', got {phases_on!r}")
        self.device = next(denoiser(pipe).parameters()).device
        self.phases_on = phases_on
        self.step_clock = step_clock
        self.observer = observer
        self.objects = objects
        self.pipe = pipe
        self.publisher = as_publisher(publish)
        self.model_name = model_name
        self.image_every = image_every
        self.phase_config = phase_config or PhaseConfig()
        self.capture_config = capture_config or CaptureConfig()
        self.concepts = concepts or {}
        self._preview: LinearPreview | None = None
        self._check_lock = threading.Lock()
        self._door_tokenizer: Any = None  # check()'s own tokenizer copy
        self._out = OrderedWorker(torch_threads=1)  # its CPU ops must not take the model thread's cores
        self._blocks = HostBlocks()  # pinned blocks and events reused by every step's host copy

    def phases_where(self) -> Literal["host", "device"]:
        """Where this run's phases go, ``auto`` resolved against the current publisher (the daemon
        replaces it with a recording wrapper per run)."""
        if self.phases_on != "auto":
            return self.phases_on
        return "host" if self.publisher.remote or self.device.type != "cuda" else "device"

    # --- configuration per request ---------------------------------------------------------
    def _capture_config(self, req: Request) -> CaptureConfig:
        base = self.capture_config
        weights = req.head_weights
        if req.concept:
            if req.concept not in self.concepts:
                known = ", ".join(sorted(self.concepts)) or "(none loaded; start the daemon with --concepts DIR)"
                raise ValueError(f"unknown concept {req.concept!r}; known concepts: {known}")
            weights = self.concepts[req.concept]
        if isinstance(weights, (list, tuple)):
            weights = self._split_flat_weights(list(weights))
        if not weights:
            return base
        cfg = CaptureConfig(**{**base.__dict__, "head_weights": weights})
        return cfg

    def _split_flat_weights(self, flat: list[float]) -> dict[str, list[float]]:
        layers = Capture(self.pipe, self.capture_config).cross_layers
        need = sum(l.heads for l in layers)
        if len(flat) != need:
            raise ValueError(f"head_weights has {len(flat)} values; this model's captured cross-attention has {need} heads "
                             f"({len(layers)} layers × heads, in layer order)")
        out, i = {}, 0
        for l in layers:
            out[l.name] = flat[i : i + l.heads]
            i += l.heads
        return out

    def _phase_config(self, req: Request) -> PhaseConfig:
        if req.phase_boundaries is None:
            return self.phase_config
        return PhaseConfig(**{**self.phase_config.__dict__, "boundaries": tuple(req.phase_boundaries)})

    # --- checks at the door ----------------------------------------------------------------
    def check(self, req: Request) -> list[str]:
        """:func:`check_request` with this runner's model and concepts, on the caller's thread (a
        control server's): with its own copy of the tokenizer, as a fast (Rust) tokenizer must not
        be used by two threads at once and the model's thread may be tokenizing."""
        with self._check_lock:
            if self._door_tokenizer is None:
                import copy

                self._door_tokenizer = copy.deepcopy(adapter_for(self.pipe).tokenizer())
            return check_request(self.pipe, req, self.concepts, self._door_tokenizer)

    # --- the run ---------------------------------------------------------------------------
    def run(self, req: Request, cancel: threading.Event | None = None) -> RunResult:
        """Generate ``req``; never raises for a bad request or a failed run: the result says."""
        cancel = cancel or threading.Event()
        t0 = time.perf_counter()
        state = RunState(phases=self.phases_where())
        if isinstance(self.publisher, StagingPublisher) and self.publisher.ring is not None:  # asked once a run: no ring, no per-step asking
            state.publisher = self.publisher
        try:
            adapter = adapter_for(self.pipe)
            tokens = adapter.token_map(req.prompt)  # the run's own word map (FLUX: its T5 tokens)
            tokenizer = adapter.tokenizer()
            for word in req.focus:
                tokens.index(word)  # a bad focus word fails before any compute, listing the words
            state.unseen = unseen_words(tokenizer, tokens.words)
            for line in unseen_warning(state.unseen):
                log.warning(line)
            cap_cfg = self._capture_config(req)
            recorder = None
            if self.objects:
                from bridge.analysis.objects import EvidenceRecorder  # noqa: PLC0415 (the ``objects`` extra)
                from bridge.analysis.objects.evidence import detection_config  # noqa: PLC0415

                cap_cfg, recorder = detection_config(self.pipe, base=cap_cfg), EvidenceRecorder()
            phase_cfg = self._phase_config(req)
            seed = req.seed if req.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            gen = torch.Generator(device="cpu").manual_seed(seed)

            def on_step(frame: StepFrame, run: CaptureRun) -> None:
                ended = time.time()  # the step's end on the wire ("step_end", Unix seconds)
                if cancel.is_set():  # the pipeline skips its remaining steps (diffusers' `interrupt`)
                    self.pipe._interrupt = True
                if self.step_clock is not None:
                    self.step_clock(run.run_id, frame.step)
                if self.observer is not None:
                    self.observer(frame, run)
                if recorder is not None:
                    recorder(frame, run)
                tm = run.tokens(0)
                cross = cast(torch.Tensor, frame.cross)[0]  # [T, H, W]; the runner captures cross-attention
                if state.engine is None:  # phases where packets are built
                    staged = _stage_step(state, tm, cross, frame.timestep)  # [W·H·W (+ 1)]
                    shape = (len(tm.words), cross.shape[1], cross.shape[2])
                    if not self._land(run.run_id, state, phase_cfg, staged, shape, frame, ended):
                        self._later(self._host_step_packet(run.run_id, state, phase_cfg, staged, shape, frame, ended))
                else:
                    pf = state.engine.update(tm.word_maps(cross), frame.step, frame.total_steps)
                    self._later(self._step_packet(run.run_id, pf, frame, state.focus, ended))
                if self.image_every and frame.step % self.image_every == 0 and frame.x0 is not None:
                    image = self._preview_image(frame)  # uint8 [H, W, 3] on the device
                    if not self._land_image(run.run_id, state, image, frame.step):
                        self._later(self._image_packet(run.run_id, image, frame.step))

            kwargs = pipeline_kwargs(req.prompt, req.steps, req.guidance, req.width, req.height, req.negative_prompt)
            # no callback_on_step_end: diffusers builds it a dict from locals() every step
            kwargs.update(generator=gen, output_type="latent")
            def on_run(run: CaptureRun) -> None:  # the run packet goes out before step 0 is computed, not with it
                self._begin(req, run, seed, phase_cfg, state)

            with torch.inference_mode(), Capture(self.pipe, CaptureConfig(**{**cap_cfg.__dict__, "keep_frames": False}), on_step, on_run) as cap:
                t1 = time.perf_counter()
                latents = self.pipe(**kwargs).images
            t2 = time.perf_counter()
            run = cap.last_run
            status = "cancelled" if cancel.is_set() else "done"
            image = None
            if status == "done":
                # the last step's packet goes out before the decode is launched: on a GPU-bound
                # model the host is a step ahead here, and handing it over while the decode ran
                # took SD3.5-medium's last step 128 ms against 37 in the middle (H100, h100_run8)
                self._drain()
                with torch.inference_mode():
                    image = decode_full(self.pipe, cast(torch.Tensor, cap.adapter.frame_latents(latents))[:1])  # FLUX: unpacked; latents in, latents out
                self._send(Packet("image", {"run_id": run.run_id, "step": run.steps_done - 1, "final": True, "preview": "vae"}, {"image": image}))
                if recorder is not None:
                    self._send(objects_packet(run.run_id, req.prompt, recorder.evidence(image)))
            self._finish(run, state, status, t0)
            t3 = time.perf_counter()
            self._drain()
            t4 = time.perf_counter()
            timings = {"setup": t1 - t0, "denoise": t2 - t1, "decode": t3 - t2, "drain": t4 - t3}
            return RunResult(run.run_id, status, run.steps_done, t4 - t0, image, run=run, timings=timings)
        except Exception as exc:  # a bad request or an OOM must not take the daemon down
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            log.error("run failed: %s", exc)
            if state.run_id:
                self._send(Packet("end", {"run_id": state.run_id, "status": "error", "error": str(exc)}))
            self._drain()
            return RunResult(state.run_id, "error", 0, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.pipe._interrupt = False

    def _begin(self, req: Request, run: CaptureRun, seed: int, phase_cfg: PhaseConfig, state: RunState) -> None:
        tm = run.tokens(0)
        state.focus = [tm.index(w) for w in req.focus]  # raises WordNotFoundError listing the words
        state.run_id = run.run_id
        words = state.words = list(tm.words)
        if state.phases == "device":  # compiled on CUDA: a few kernels, not ~99 launches
            state.engine = PhaseEngine(words, phase_cfg, device=self.device, compile=self.device.type == "cuda")
        h, w = run.resolution
        self._send(Packet("run", {
            "run_id": run.run_id, "prompt": req.prompt, "negative_prompt": req.negative_prompt, "words": list(tm.words),
            "tokens": tm.to_dict(), "truncated_words": list(tm.truncated_words), "unseen_words": list(state.unseen), "focus": state.focus,
            "total_steps": run.total_steps, "seed": seed, "guidance": req.guidance, "model": self.model_name,
            "scheduler": run.info.get("scheduler"), "pipeline": run.info.get("pipeline"), "map_size": [h, w],
            "width": req.width or run.latent_hw[1] * self._vae_scale(), "height": req.height or run.latent_hw[0] * self._vae_scale(),
            "layers": run.layers, "phase_boundaries": list(phase_cfg.boundaries), "started": time.time(),
        }))
        if state.engine is None:  # the phases run where packets are built: their state is made there now, during step 0
            self._later(lambda: partial(prepare_run, run.run_id, words, phase_cfg, h, w))

    def _finish(self, run: CaptureRun, state: RunState, status: str, t0: float) -> None:
        if state.words is None:  # the run never started: no run packet went out either
            return
        engine = state.engine
        if engine is None:  # the phases ran where packets are built: so does the timeline
            self._later(lambda: partial(timeline_packet, run.run_id))
        else:
            self._later(lambda: timeline_of(run.run_id, engine))  # on the worker, after every step's update
        self._send(Packet("end", {"run_id": run.run_id, "status": status, "steps": run.steps_done, "seconds": round(time.perf_counter() - t0, 3)}))

    # --- publishing without making the denoising loop wait ----------------------------------------
    def _send(self, packet: Packet) -> None:
        """Publish ``packet`` after everything queued before it (in run order either way)."""
        self._later(lambda: packet)

    def _later(self, fetch: Callable[[], Packet | Recipe]) -> None:
        """Publish what ``fetch`` returns, in run order, from the packet thread (``fetch`` may wait
        for a host copy there). A Packet goes to ``publish``; a recipe to ``publish_recipe``,
        which a remote publisher runs in its own process."""

        def job() -> None:
            item = fetch()
            if isinstance(item, Packet):
                self.publisher.publish(item)
            else:
                self.publisher.publish_recipe(item)

        self._out.put(job)

    def _drain(self) -> None:
        """Wait until everything handed to the packet thread has gone."""
        self._out.flush()

    def _step_packet(self, run_id: str, pf: PhaseFrame, frame: StepFrame, focus: list[int], ended: float) -> Callable[[], Recipe]:
        """On the model's thread: one concatenation of the frame's tensors (and a float32 timestep)
        on the device, so one copy to the host (one launch, one pinned block); ``fetch`` waits
        for it and returns the recipe."""
        ts = frame.timestep
        fold = torch.is_tensor(ts) and ts.dtype == torch.float32 and ts.numel() == 1
        parts = [getattr(pf, k) for k in FRAME_TENSORS] + ([cast(torch.Tensor, ts).reshape(1)] if fold else [])
        flat = torch.cat([t.reshape(-1).float() for t in parts])  # [sum of sizes (+ 1)]
        snap = HostSnapshot({"flat": flat, **({"timestep": ts} if torch.is_tensor(ts) and not fold else {})}, self._blocks)
        layout = [(k, tuple(getattr(pf, k).shape)) for k in FRAME_TENSORS]
        fields = {k: getattr(pf, k) for k in FRAME_FIELDS}

        def fetch() -> Recipe:
            host = snap.take()
            values = host["flat"]
            timestep = _timestep(host, values, fold, ts)
            return partial(step_packet, run_id, fields, values, layout, focus, timestep, ended)

        return fetch

    def _land(self, run_id: str, state: RunState, cfg: PhaseConfig, staged: torch.Tensor, shape: tuple[int, int, int],
              frame: StepFrame, ended: float) -> bool:
        """On the model's thread: copy the staged step into a slot of the publisher's ring and hand
        over its notice (bridge.stream.ring), so no thread of this process wakes for it; False
        where that cannot be done (no ring, no free slot, too big, a timestep that would need its
        own copy): then the caller takes the packet thread's path. The notice goes from here
        unless the packet thread still has items (they go first) or the channel has no room."""
        ts = frame.timestep
        folded = staged.numel() > shape[0] * shape[1] * shape[2]
        if staged.dtype != torch.float32 or not folded and torch.is_tensor(ts) and ts.is_cuda:
            return False
        return self._staged(state, staged, lambda slot, nbytes: StagedStep(
            slot, nbytes, run_id, cast("list[str]", state.words), cfg, shape, frame.step, frame.total_steps, state.focus,
            None if folded else float(ts), ended))

    def _land_image(self, run_id: str, state: RunState, image: torch.Tensor, step: int) -> bool:
        """As :meth:`_land`, for a step's preview image (``uint8 [H, W, 3]``)."""
        if image.dtype != torch.uint8 or image.dim() != 3:
            return False
        h, w, c = image.shape
        return self._staged(state, image.contiguous(), lambda slot, nbytes: StagedImage(slot, nbytes, run_id, step, (h, w, c)))

    def _staged(self, state: RunState, values: torch.Tensor, notice: Callable[[Slot, int], StagedStep | StagedImage]) -> bool:
        """Copy ``values`` into a free slot of the run's ring and send ``notice(slot, nbytes)`` from
        the model's thread, unless the packet thread still has items (they go first) or the channel
        has no room: then the packet thread sends it, in order. False (nothing done) where the run
        has no ring or no slot is free."""
        pub = state.publisher
        ring = pub.ring if pub is not None else None  # a replaced sink process maps a new ring
        slot = ring.claim(values.numel() * values.element_size()) if ring is not None else None
        if pub is None or ring is None or slot is None:
            return False
        item = notice(slot, ring.land(slot, values))
        if self._out.busy or not pub.publish_staged(item, wait=False):
            self._out.put(partial(pub.publish_staged, item))
        return True

    def _host_step_packet(self, run_id: str, state: RunState, cfg: PhaseConfig, staged: torch.Tensor,
                          shape: tuple[int, int, int], frame: StepFrame, ended: float) -> Callable[[], Recipe]:
        """On the model's thread: one non-blocking copy of the step's staged word maps (``[W·H·W
        (+ 1)]``, :func:`_stage_step`: one pinned block, one copy launch a step); ``fetch`` waits
        for it and returns the recipe that runs the phases and builds the packet."""
        ts = frame.timestep
        size = shape[0] * shape[1] * shape[2]
        folded = staged.numel() > size
        snap = HostSnapshot({"flat": staged, **({"timestep": ts} if torch.is_tensor(ts) and not folded else {})}, self._blocks)
        words, focus, step, total = cast("list[str]", state.words), state.focus, frame.step, frame.total_steps  # set by _begin

        def fetch() -> Recipe:
            host = snap.take()
            values = host["flat"]
            timestep = _timestep(host, values, folded, ts)
            return partial(host_step_packet, run_id, words, cfg, values[:size].reshape(shape), step, total, focus, timestep, ended)

        return fetch

    def _preview_image(self, frame: StepFrame) -> torch.Tensor:
        """The step's quick preview, ``uint8 [H, W, 3]`` on the device (x0 through the linear map)."""
        if self._preview is None:
            with torch.inference_mode(False), torch.no_grad():
                self._preview = LinearPreview(self.pipe)
        x0 = cast(torch.Tensor, frame.x0)  # on_step asks for an image only where there is an x0
        return self._preview.device_image(x0[:1], upscale=self._vae_scale())

    def _image_packet(self, run_id: str, image: torch.Tensor, step: int) -> Callable[[], Packet]:
        snap = HostSnapshot({"image": image}, self._blocks)
        return lambda: image_packet(run_id, step, snap.take()["image"])

    def _vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))


def _timestep(host: dict[str, np.ndarray], flat: np.ndarray, folded: bool, ts: float | torch.Tensor) -> float:
    """A step's timestep on the host: the last value of a copy it was folded into, its own copy
    (a device tensor that was not folded), or the number the pipeline passed."""
    return float(flat[-1]) if folded else float(host["timestep"]) if "timestep" in host else float(ts)


def _stage_step(state: RunState, tm: TokenMap, cross: torch.Tensor, ts: float | torch.Tensor) -> torch.Tensor:
    """``[W·H·W]`` word maps of ``cross`` ``[T, H, W]`` (``TokenMap.word_maps``), then,
    where the timestep is a device tensor, it as one float32 more: written into the run's staging
    buffer (reused every step: the copy that reads it is queued before the next step's product),
    so one host copy carries both. Integer timesteps are exact in float32 below 2²⁴."""
    _, h, w = cross.shape
    n = len(tm.words) * h * w
    fold = torch.is_tensor(ts) and ts.device == cross.device and cross.dtype == torch.float32
    size = n + 1 if fold else n
    if state.staging is None or state.staging.shape != (size,) or state.staging.device != cross.device or state.staging.dtype != cross.dtype:
        state.staging = torch.empty(size, device=cross.device, dtype=cross.dtype)
    tm.word_maps(cross, out=state.staging[:n])
    if fold:
        state.staging[n:].copy_(cast(torch.Tensor, ts).reshape(1))
    return state.staging


def check_request(pipe: Any, req: Request, concepts: dict[str, Any] | None = None, tokenizer: Any = None) -> list[str]:
    """Refuse ``req`` at the door (ValueError naming the fix: a focus word that is not a word of the
    prompt, an unknown concept); return warnings (words the model never saw)."""
    tokenizer = tokenizer if tokenizer is not None else adapter_for(pipe).tokenizer()
    tokens = build_token_map(tokenizer, req.prompt)
    for word in req.focus:
        try:
            tokens.index(word)
        except WordNotFoundError as exc:
            raise ValueError(f"focus: {exc}") from None
    if req.concept and req.concept not in (concepts or {}):
        known = ", ".join(sorted(concepts or {})) or "(none loaded; start the daemon with --concepts DIR)"
        raise ValueError(f"unknown concept {req.concept!r}; known concepts: {known}")
    return unseen_warning(unseen_words(tokenizer, tokens.words))


def unseen_warning(words: list[str]) -> list[str]:
    """The warning for words the model never saw (empty when there are none)."""
    if not words:
        return []
    return [f"the model never saw {', '.join(repr(w) for w in words)}: their maps exist but mean nothing "
            "(the run packet lists them in 'unseen_words')"]


def denoiser(pipe: Any) -> torch.nn.Module:
    """The pipeline's UNet or transformer."""
    module = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if module is None:
        raise TypeError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return module


def collect(pipe: Any, req: Request, **runner_options: Any) -> tuple[RunResult, list[Packet]]:
    """Run once and return the result with every Packet published (for tests and scripts)."""
    packets: list[Packet] = []
    result = Runner(pipe, packets.append, **runner_options).run(req)
    return result, packets
