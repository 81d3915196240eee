"""One generation with capture → phases → Packets: the loop every job (record, serve) shares.

The runner owns no sockets: it hands each Packet to ``publish`` (a FanOut, a list's append, …),
so the same code feeds live sinks, a trace, or a test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, fields as dataclass_fields
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from bridge.capture import Capture, CaptureConfig, CaptureRun, StepFrame, adapter_for
from bridge.host import HostSnapshot, OrderedWorker
from bridge.latent_preview import LinearPreview, decode_full
from bridge.packet import Packet
from bridge.phases import PhaseConfig, PhaseEngine, PhaseFrame
from bridge.transport.control import GenerateParams

log = logging.getLogger(__name__)

Publish = Callable[[Packet], None]


#: What to generate: the same validated object the control channel produces (one definition).
Request = GenerateParams


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
        publish: Publish,
        model_name: str = "",
        image_every: int = 1,
        phase_config: PhaseConfig | None = None,
        capture_config: CaptureConfig | None = None,
        concepts: dict[str, dict[str, list[float]]] | None = None,
        phases_on: str = "auto",
        step_clock: Callable[[str, int], None] | None = None,
        deliver: str = "worker",
    ) -> None:
        """``phases_on``: ``device`` runs the phases where the maps are, on the model's thread
        (compiled on CUDA: a few kernels per step), and packets are built from their results;
        ``host`` runs them on the CPU where packets are built, from a non-blocking host copy of each
        step's word maps: in the sink process when ``publish`` is a
        :class:`~bridge.packet_process.PacketProcess` (then the model's process does no phase work
        at all), else on the packet worker (whose Python then competes with the model's thread for
        the GIL); ``auto`` (the default) is ``host`` with a PacketProcess or without CUDA, and
        ``device`` for an in-process publisher on CUDA.

        ``deliver``: who hands each step's recipe to a publisher that takes recipes (a
        PacketProcess). ``worker`` (the default): the packet thread, woken per step, which waits
        for the step's host copy. ``inline``: the model's thread itself, as soon as the copy has
        landed, checked between the next step's layers (a push is a pickle of a few hundred bytes
        and a socket send); a copy that has still not landed at the next step's end (the GPU is
        more than a step behind) goes to the packet thread. The two measured the same over 443
        paired SD 1.5 rounds on an H200 (docs/BENCHMARKS.md, "Delivery"), so the default is the
        one that leaves the model's thread alone. Other publishers always get built packets from
        the packet thread."""
        # ``step_clock(run_id, step)`` is called on the model's thread as each step ends (before
        # its packet is built): benchmarks time step → subscriber latency from there.
        if phases_on not in ("auto", "host", "device"):
            raise ValueError(f"phases_on must be 'auto', 'host' or 'device', got {phases_on!r}")
        if deliver not in ("worker", "inline"):
            raise ValueError(f"deliver must be 'worker' or 'inline', got {deliver!r}")
        self.deliver = deliver
        self.device = next(denoiser(pipe).parameters()).device
        self.phases_on = phases_on
        self.step_clock = step_clock
        self.pipe = pipe
        self.publish = publish
        self.model_name = model_name
        self.image_every = image_every
        self.phase_config = phase_config or PhaseConfig()
        self.capture_config = capture_config or CaptureConfig()
        self.concepts = concepts or {}
        self._preview: LinearPreview | None = None
        self._out = OrderedWorker(torch_threads=1)  # its CPU ops must not take the model thread's cores
        self._inline = False  # this run hands recipes over on the model's thread (``deliver``)
        self._pending: deque[tuple[HostSnapshot | None, Callable[[], None]]] = deque()  # inline, in run order
        self._alive: Callable[[], bool] | None = None

    def phases_where(self) -> str:
        """Where this run's phases go (``host`` or ``device``), ``auto`` resolved against the
        current ``publish`` (the daemon replaces it with a wrapper per run)."""
        if self.phases_on != "auto":
            return self.phases_on
        if getattr(self.publish, "deferred", None) is not None or self.device.type != "cuda":
            return "host"
        return "device"

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

    # --- the run ---------------------------------------------------------------------------
    def run(self, req: Request, cancel: threading.Event | None = None) -> RunResult:
        """Generate ``req``; never raises for a bad request or a failed run: the result says."""
        cancel = cancel or threading.Event()
        t0 = time.perf_counter()
        state: dict[str, Any] = {"run_id": "", "engine": None, "focus": [], "words": None, "phases": self.phases_where()}
        self._inline = self.deliver == "inline" and getattr(self.publish, "deferred", None) is not None
        self._alive = getattr(self.publish, "alive", None)  # a PacketProcess: is its child up (no restart inline)?
        try:
            tokens = adapter_for(self.pipe).token_map(req.prompt)  # the run's own word map (FLUX: T5 tokens)
            for word in req.focus:
                tokens.index(word)  # a bad focus word fails before any compute, listing the words
            cap_cfg = self._capture_config(req)
            phase_cfg = self._phase_config(req)
            seed = req.seed if req.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            gen = torch.Generator(device="cpu").manual_seed(seed)

            def on_step(frame: StepFrame, run: CaptureRun) -> None:
                if cancel.is_set():  # the pipeline skips its remaining steps (diffusers' `interrupt`)
                    self.pipe._interrupt = True
                if self.step_clock is not None:
                    self.step_clock(run.run_id, frame.step)
                self._pump(stale=True)  # earlier steps' recipes: landed ones now, the rest to the packet thread
                if state["words"] is None:
                    self._begin(req, run, seed, phase_cfg, state)
                tm = run.tokens(0)
                word_maps = tm.word_maps(frame.cross[0])  # [W, H, W]
                if state["phases"] == "host":
                    self._later(*self._host_step_packet(run.run_id, state, phase_cfg, word_maps, frame))
                else:
                    pf = state["engine"].update(word_maps, frame.step, frame.total_steps)
                    self._later(*self._step_packet(run.run_id, pf, frame, state["focus"]))
                if self.image_every and frame.step % self.image_every == 0 and frame.x0 is not None:
                    self._later(*self._image_packet(run.run_id, frame))
                self._pump()  # what needs no copy (on the CPU: all of it) goes at once

            kwargs: dict[str, Any] = dict(
                prompt=req.prompt, num_inference_steps=req.steps, guidance_scale=req.guidance, generator=gen,
                output_type="latent",  # no callback_on_step_end: diffusers builds it a dict from locals() every step
            )
            if req.negative_prompt:
                kwargs["negative_prompt"] = req.negative_prompt
            if req.width:
                kwargs["width"] = req.width
            if req.height:
                kwargs["height"] = req.height
            with torch.inference_mode(), Capture(self.pipe, CaptureConfig(**{**cap_cfg.__dict__, "keep_frames": False}), on_step) as cap:
                if self._inline:  # a copy goes out as soon as it has landed, not only at the next step's end
                    cap.between_layers = self._poll
                t1 = time.perf_counter()
                latents = self.pipe(**kwargs).images
            t2 = time.perf_counter()
            run = cap.last_run
            status = "cancelled" if cancel.is_set() else "done"
            image = None
            if status == "done":
                with torch.inference_mode():
                    image = decode_full(self.pipe, cap.adapter.frame_latents(latents)[:1])  # FLUX: unpacked
                self._send(Packet("image", {"run_id": run.run_id, "step": run.steps_done - 1, "final": True, "preview": "vae"}, {"image": image}))
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
            if state["run_id"]:
                self._send(Packet("end", {"run_id": state["run_id"], "status": "error", "error": str(exc)}))
            self._drain()
            return RunResult(state["run_id"], "error", 0, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.pipe._interrupt = False

    def _begin(self, req: Request, run: CaptureRun, seed: int, phase_cfg: PhaseConfig, state: dict) -> None:
        tm = run.tokens(0)
        state["focus"] = [tm.index(w) for w in req.focus]  # raises WordNotFoundError listing the words
        state["run_id"] = run.run_id
        state["words"] = list(tm.words)
        if state["phases"] == "device":  # compiled on CUDA: a few kernels, not ~99 launches
            state["engine"] = PhaseEngine(state["words"], phase_cfg, device=self.device, compile=self.device.type == "cuda")
        h, w = run.resolution
        self._send(Packet("run", {
            "run_id": run.run_id, "prompt": req.prompt, "negative_prompt": req.negative_prompt, "words": list(tm.words),
            "tokens": tm.to_dict(), "truncated_words": list(tm.truncated_words), "focus": state["focus"],
            "total_steps": run.total_steps, "seed": seed, "guidance": req.guidance, "model": self.model_name,
            "scheduler": run.info.get("scheduler"), "pipeline": run.info.get("pipeline"), "map_size": [h, w],
            "width": req.width or run.latent_hw[1] * self._vae_scale(), "height": req.height or run.latent_hw[0] * self._vae_scale(),
            "layers": run.layers, "phase_boundaries": list(phase_cfg.boundaries), "started": time.time(),
        }))

    def _finish(self, run: CaptureRun, state: dict, status: str, t0: float) -> None:
        if state["words"] is None:  # no step ran: no run packet went out either
            return
        engine = state["engine"]
        if engine is None:  # the phases ran where packets are built: so does the timeline
            self._later(lambda: partial(timeline_packet, run.run_id))
        else:
            self._later(lambda: _timeline(run.run_id, engine))  # on the worker, after every step's update
        self._send(Packet("end", {"run_id": run.run_id, "status": status, "steps": run.steps_done, "seconds": round(time.perf_counter() - t0, 3)}))

    # --- publishing without making the denoising loop wait ----------------------------------------
    def _send(self, packet: Packet) -> None:
        """Publish ``packet`` after everything queued before it (in run order either way)."""
        self._later(lambda: packet)

    def _later(self, fetch: Callable[[], Packet | Callable[[], Packet]], after: HostSnapshot | None = None) -> None:
        """Publish what ``fetch`` returns once ``after`` (its host copy) has landed, in run order.

        ``fetch`` returns a Packet or a recipe (a picklable callable that builds one from host
        arrays). A publisher with a ``deferred`` method (a
        :class:`~bridge.packet_process.PacketProcess`) takes the recipe and builds the packet in
        its own process; any other one gets the built packet. Inline (``deliver``), the item
        waits in ``_pending`` for a later ``_pump``; else the packet thread runs it (waiting for
        the copy there is harmless)."""

        def job() -> None:
            item = fetch()
            if isinstance(item, Packet):
                self.publish(item)
            elif (deferred := getattr(self.publish, "deferred", None)) is not None:
                deferred(item)
            elif (packet := item()) is not None:
                self.publish(packet)

        if self._inline:
            self._pending.append((after, job))
        else:
            self._out.put(job)

    def _pump(self, stale: bool = False) -> None:
        """Inline delivery, on the model's thread: run the pending jobs whose copies have landed,
        in order, never waiting; with ``stale`` the rest (made at an earlier step) go to the packet
        thread, which waits for them. While it has work, everything goes there (run order); so
        does everything while the sink process is down (starting a new one takes seconds)."""
        pending = self._pending
        while pending:
            after, job = pending[0]
            if self._out.busy or not (after is None or after.ready()) or (self._alive is not None and not self._alive()):
                if not stale:
                    return
                self._out.put(job)
            else:
                try:
                    job()
                except Exception as exc:  # as on the packet thread: a failed packet must not stop the run
                    log.error("publishing a packet failed: %r", exc)
            pending.popleft()

    def _poll(self) -> None:
        """Between layers: hand over what has landed (nothing to do, the usual case, costs a test)."""
        if self._pending:
            self._pump()

    def _drain(self) -> None:
        """Hand everything still pending to the packet thread and wait until it has all gone."""
        self._pump(stale=True)
        self._out.flush()

    def _step_packet(self, run_id: str, pf: PhaseFrame, frame: StepFrame, focus: list[int]) -> tuple[Callable[[], Callable[[], Packet]], HostSnapshot]:
        """On the model's thread: one concatenation of the frame's tensors (and a float32 timestep)
        on the device, so one copy to the host (one launch, one pinned block); ``fetch`` waits
        for it and returns the recipe."""
        ts = frame.timestep
        fold = torch.is_tensor(ts) and ts.dtype == torch.float32 and ts.numel() == 1
        parts = [getattr(pf, k) for k in _FRAME_TENSORS] + ([ts.reshape(1)] if fold else [])
        flat = torch.cat([t.reshape(-1).float() for t in parts])  # [sum of sizes (+ 1)]
        snap = HostSnapshot({"flat": flat, **({"timestep": ts} if torch.is_tensor(ts) and not fold else {})})
        layout = [(k, tuple(getattr(pf, k).shape)) for k in _FRAME_TENSORS]
        fields = {k: getattr(pf, k) for k in _FRAME_FIELDS}

        def fetch() -> Callable[[], Packet]:
            host = snap.get()
            values = host["flat"].numpy()  # the pinned copy
            timestep = float(values[-1]) if fold else float(host["timestep"]) if "timestep" in host else float(ts)
            return partial(step_packet, run_id, fields, values, layout, focus, timestep)

        return fetch, snap

    def _host_step_packet(self, run_id: str, state: dict, cfg: PhaseConfig, word_maps: torch.Tensor,
                          frame: StepFrame) -> tuple[Callable[[], Callable[[], Packet | None]], HostSnapshot]:
        """On the model's thread: one non-blocking copy of the word maps; ``fetch`` waits for it
        and returns the recipe that runs the phases and builds the packet."""
        ts = frame.timestep
        snap = HostSnapshot({"maps": word_maps, **({"timestep": ts} if torch.is_tensor(ts) else {})})
        words, focus, step, total = state["words"], state["focus"], frame.step, frame.total_steps

        def fetch() -> Callable[[], Packet | None]:
            host = snap.get()
            timestep = float(host["timestep"]) if "timestep" in host else float(ts)
            return partial(host_step_packet, run_id, words, cfg, host["maps"].numpy(), step, total, focus, timestep)

        return fetch, snap

    def _image_packet(self, run_id: str, frame: StepFrame) -> tuple[Callable[[], Packet], HostSnapshot]:
        if self._preview is None:
            with torch.inference_mode(False), torch.no_grad():
                self._preview = LinearPreview(self.pipe)
        snap = HostSnapshot({"image": self._preview.device_image(frame.x0[:1], upscale=self._vae_scale())})
        step = frame.step
        return (lambda: Packet("image", {"run_id": run_id, "step": step, "final": False, "preview": "linear"},
                               {"image": snap.get()["image"].numpy()})), snap

    def _vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))



#: PhaseFrame's tensors (copied to the host per step) and its other fields (plain values).
_FRAME_TENSORS = ("textures", "settled", "accumulated", "phase_maps", "live")
_FRAME_FIELDS = tuple(f.name for f in dataclass_fields(PhaseFrame) if f.name not in _FRAME_TENSORS and not f.name.startswith("_"))


def step_packet(run_id: str, fields: dict[str, Any], flat: np.ndarray, layout: list[tuple[str, tuple[int, ...]]],
                focus: list[int], timestep: float) -> Packet:
    """The step Packet of one PhaseFrame from its tensors' host values, concatenated in ``layout``
    order (anything after them is ignored): a recipe, so it may run in the sink process
    (bridge.packet_process) as well as on the packet worker."""
    values = torch.from_numpy(np.require(flat, np.float32, requirements="W"))  # from a socket it is read-only
    tensors, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        tensors[name] = values[offset : offset + size].view(shape)
        offset += size
    return _step(run_id, PhaseFrame(**fields, **tensors), focus, timestep)


def _step(run_id: str, pf: PhaseFrame, focus: list[int], timestep: float) -> Packet:
    return Packet("step", {"run_id": run_id, **pf.scalars(), "focus": focus, "timestep": timestep}, pf.arrays("float32"))


#: Phase engines of the runs whose phases run where packets are built (``phases_on="host"``): the
#: packet workers, or a PacketProcess's child. A run's engine goes with its
#: timeline packet; a run that never ends (an error) is dropped after KEEP_ENGINES newer ones. The
#: daemon's idle replay sends a run's recipes again: its step 0 starts the run's phases afresh.
_ENGINES: "OrderedDict[str, PhaseEngine]" = OrderedDict()
KEEP_ENGINES = 4
_ENGINES_LOCK = threading.Lock()


def host_step_packet(run_id: str, words: list[str], cfg: PhaseConfig, maps: np.ndarray, step: int, total: int,
                     focus: list[int], timestep: float) -> Packet:
    """Run one step of the run's phases on the CPU (``maps`` ``[W, H, W]``) and build its Packet:
    a recipe, for the sink process or the packet worker."""
    with _ENGINES_LOCK:  # several runners' workers may share this process
        engine = _ENGINES.get(run_id)
        if engine is None or engine.last_step is not None and step <= engine.last_step:  # a new run, or a replay of one
            engine = _ENGINES[run_id] = PhaseEngine(words, cfg, device="cpu")
            while len(_ENGINES) > KEEP_ENGINES:
                _ENGINES.popitem(last=False)
    with torch.inference_mode():  # one mode for the engine's state, whichever thread or process runs this step
        pf = engine.update(torch.from_numpy(np.require(maps, np.float32, requirements="W")), step, total)
    return _step(run_id, pf, focus, timestep)


def timeline_packet(run_id: str) -> Packet | None:
    """The run's timeline from the engine that :func:`host_step_packet` kept (None if it saw no step)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(run_id, None)
    return None if engine is None else _timeline(run_id, engine)


def _timeline(run_id: str, engine: PhaseEngine) -> Packet:
    summary = engine.summary()
    arrays = summary.arrays()  # per-step series [T, W] and steps [T]
    header = {k: v for k, v in summary.to_dict().items() if k not in arrays and k != "series"}
    return Packet("timeline", {"run_id": run_id, **header, "words": engine.words}, arrays)


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
