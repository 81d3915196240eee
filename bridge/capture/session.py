"""The capture session: scoped hooks, run and step bookkeeping, on-device aggregation.

Step rule (documented in docs/CAPTURE.md): a *step* ends when the scheduler completes one
denoising step, i.e. after ``scheduler.step`` returns with the scheduler back in its
first-order state (``state_in_first_order``, which Heun and DPM2 expose) or after the run's
last model evaluation. All model evaluations inside one step are averaged into its frame.
So 20 steps give 20 frames for Euler (20 evaluations) and Heun (39 evaluations) alike,
whatever the guidance or batch size.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Any, Callable, cast

import torch

from .adapters import Adapter, Layer, adapter_for
from .config import CaptureConfig, head_weight_vector, matches
from .frames import CaptureRun, StepFrame
from .evaluation import BatchedEvaluation, _canonical, _StepAccumulator
from .steps import estimate_x0, patch_method, step_outputs
from .errors import PromptTooLongError

log = logging.getLogger(__name__)

StepCallback = Callable[[StepFrame, CaptureRun], None]
RunCallback = Callable[[CaptureRun], None]


class Capture(BatchedEvaluation):
    """Scoped capture of per-step attention on a diffusers pipeline.

    Use as a context manager (``with capture(pipe) as cap: pipe(...)``) or with the
    ``apply()``/``remove()`` pair. Every pipeline call inside becomes a :class:`CaptureRun` in
    ``cap.runs``; ``on_step`` callbacks receive each :class:`StepFrame` as soon as its step ends,
    ``on_run`` callbacks each run as it starts (at its first model evaluation: its words, steps
    and grid are known, no step has run). On exit, also after an exception, every hook and patched method is removed exactly.
    """

    def __init__(self, pipe: Any, config: CaptureConfig | None = None, on_step: StepCallback | None = None,
                 on_run: RunCallback | None = None) -> None:
        self.pipe = pipe
        self.config = config or CaptureConfig()
        self.adapter: Adapter = adapter_for(pipe)
        self.runs: list[CaptureRun] = []
        self.callbacks: list[StepCallback] = [on_step] if on_step else []
        self.run_callbacks: list[RunCallback] = [on_run] if on_run else []
        self._removers: list[Callable[[], None]] = []
        self._run: CaptureRun | None = None
        self._acc = _StepAccumulator()
        self._pending_tokens: list | None = None
        self._new_run = True
        self._evals_total: int | None = None
        self._evals_seen = 0
        self._weights = {}
        self._row_weights = {}
        self._query_cells = {}
        self._warned: set[str] = set()
        self._encoded = False  # an encode_prompt call was recorded since the last set_timesteps
        self.adapter.configure(self.config)
        all_layers = self.adapter.layers()
        cfg = self.config
        self.cross_layers = [
            l for l in all_layers if l.cross and cfg.cross and matches(l.name, cfg.layers) and _total_weight(cfg, [l]) > 0
        ]
        self.self_layers = [l for l in all_layers if not l.cross and cfg.queries and matches(l.name, cfg.self_layers)]
        self.detail = {l.name for l in self.cross_layers if cfg.detail_layers and matches(l.name, cfg.detail_layers)}
        if cfg.cross and not self.cross_layers:
            names = ", ".join(l.name for l in all_layers if l.cross)
            raise ValueError(f"no cross-attention layer matches {cfg.layers!r} with non-zero head weights; layers: {names}")
        self.cross_weight = _total_weight(cfg, self.cross_layers)
        self.self_weight = _total_weight(cfg, self.self_layers)
        self._expected = frozenset(l.name for l in self.cross_layers + self.self_layers)
        self._routes = {}
        self._plans = {}

    # --- scope ---------------------------------------------------------------------------------
    def __enter__(self) -> "Capture":
        return self.apply()

    def __exit__(self, *exc: Any) -> None:
        self.remove(emit=exc[0] is None)  # unwinding from an error: no half-finished step to hide it

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def last_run(self) -> CaptureRun:
        if not self.runs:
            raise RuntimeError("no run has been captured yet: call the pipeline inside the capture")
        return self.runs[-1]

    def on_step(self, callback: StepCallback) -> StepCallback:
        """Register a callback for every finished step (usable as a decorator)."""
        self.callbacks.append(callback)
        return callback

    def on_run(self, callback: RunCallback) -> RunCallback:
        """Register a callback for every run as it starts, on the model's thread before its first
        evaluation (usable as a decorator)."""
        self.run_callbacks.append(callback)
        return callback

    def apply(self) -> "Capture":
        """Install the hooks. Raises (having installed nothing) if a layer cannot be observed."""
        if self._removers:
            raise RuntimeError("this capture is already applied")
        self.adapter.check(self.cross_layers + self.self_layers)
        try:
            pipe, sched = self.pipe, self.pipe.scheduler
            self._removers.append(patch_method(pipe, "encode_prompt", self._wrap_encode(pipe.encode_prompt)))
            self._removers.append(patch_method(sched, "set_timesteps", self._wrap_set_timesteps(sched.set_timesteps)))
            self._removers.append(patch_method(sched, "step", self._wrap_step(sched, sched.step)))
            handle = self.adapter.denoiser().register_forward_pre_hook(self._before_denoiser, with_kwargs=True)
            self._removers.append(handle.remove)
            self._removers.append(self.adapter.denoiser().register_forward_hook(self._after_denoiser).remove)
            self._removers += self.adapter.install_probes(self, self.cross_layers, self.self_layers)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self, emit: bool = True) -> None:
        """Remove every hook exactly; an unfinished run is kept, marked ``interrupted``.
        ``emit=False``: a step whose evaluations were not closed is dropped, not sent to the
        callbacks (the model raised mid-step; the callers must see that error, not one from a
        half-built frame)."""
        while self._removers:
            self._removers.pop()()
        self._finish("interrupted", emit)

    # --- hooks ---------------------------------------------------------------------------------
    def _wrap_encode(self, original: Callable) -> Callable:
        sig = inspect.signature(original)

        @functools.wraps(original)  # keep the signature: pipelines inspect it
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            # Adapters whose pipelines encode the negative prompt in a second call (FLUX true CFG)
            # set ``first_encode_per_run``: the first call before set_timesteps holds the prompt.
            if self.adapter.first_encode_per_run and self._encoded:
                return original(*args, **kwargs)
            try:
                bound = sig.bind_partial(*args, **kwargs)
                repeats = int(bound.arguments.get("num_images_per_prompt") or 1)
                bound.apply_defaults()
                self._pending_tokens = self.adapter.prompt_token_maps(bound.arguments, repeats)
            except PromptTooLongError:  # strict_prompt_length: the caller asked for this to stop the run
                raise
            except Exception as exc:  # never break generation for bookkeeping
                log.warning("could not map the prompt's words to tokens: %s", exc)
                self._pending_tokens = None
            self._encoded = True
            return original(*args, **kwargs)

        return encode_prompt

    def _wrap_set_timesteps(self, original: Callable) -> Callable:
        @functools.wraps(original)  # retrieve_timesteps inspects it for `sigmas`/`timesteps`
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self._finish("interrupted")
            self._new_run = True
            self._encoded = False
            return out

        return set_timesteps

    def _wrap_step(self, sched: Any, original: Callable) -> Callable:
        @functools.wraps(original)  # prepare_extra_step_kwargs inspects it for `eta`/`generator`
        def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            out = original(model_output, timestep, sample, *args, **kwargs)
            if self._run is not None and self._acc.evals:
                done = self._evals_total is not None and self._evals_seen >= self._evals_total
                if getattr(sched, "state_in_first_order", True) or done:
                    x0: torch.Tensor | Callable[[], torch.Tensor | None] | None  # StepFrame.x0_source
                    prev, x0 = step_outputs(out)
                    unpack = self.adapter.frame_latents  # e.g. FLUX's packed latents; the identity by default
                    if x0 is None:  # estimated when a consumer reads frame.x0, not on every step
                        x0 = functools.partial(_estimated_x0, sched, model_output, timestep, sample, unpack)
                    else:
                        x0 = unpack(x0)
                    self._emit(unpack(prev), x0)
            return out

        return step

    def _before_denoiser(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.adapter.skip_evaluation(args, kwargs):  # e.g. FLUX's separate uncond pass
            return
        latent_hw, batch_total = self.adapter.latent_hw(args, kwargs)
        if self._new_run or self._run is None:
            self._start_run(latent_hw, batch_total)
        self._acc.evals += 1
        self._evals_seen += 1
        if self._acc.evals == 1:  # kept as given (a device tensor): reading it here would sync the GPU
            t = args[1] if len(args) > 1 else kwargs.get("timestep", float("nan"))
            self._acc.timestep = t.flatten()[0] if torch.is_tensor(t) else float(t)

    def _start_run(self, latent_hw: tuple[int, int], batch_total: int) -> None:
        sched = self.pipe.scheduler
        guidance = self.adapter.guidance()
        batch = batch_total // 2 if guidance else batch_total
        begin = getattr(sched, "begin_index", None) or 0
        timesteps = getattr(sched, "timesteps", None)
        n = (len(timesteps) if timesteps is not None else 0) - begin
        self._evals_total = n if n > 0 else None
        order = int(getattr(sched, "order", 1) or 1)
        total = math.ceil(n / order) if n > 0 else int(getattr(sched, "num_inference_steps", 0) or 0)
        tokens = self._pending_tokens if self._pending_tokens and len(self._pending_tokens) == batch else [None] * batch
        self._run = CaptureRun(
            token_maps=list(tokens),
            total_steps=total,
            batch=batch,
            guidance=guidance,
            latent_hw=latent_hw,
            # a caller's [H, W] list too; by default the model's finest attention grid (SDXL: half its latent)
            resolution=cast("tuple[int, int]", tuple(self.config.resolution or self.adapter.map_grid(latent_hw))),
            layers=[l.name for l in self.cross_layers],
            info={"scheduler": type(sched).__name__, "family": self.adapter.family, "pipeline": type(self.pipe).__name__},
        )
        self.runs.append(self._run)
        self._routes.clear()
        self._plans.clear()
        self._acc = _StepAccumulator()
        self._new_run = False
        self._evals_seen = 0
        for callback in list(self.run_callbacks):
            callback(self._run)

    # --- per layer (hot path) ------------------------------------------------------------------
    # --- per step ------------------------------------------------------------------------------
    def _emit(self, latents: torch.Tensor | None, x0: torch.Tensor | Callable[[], torch.Tensor | None] | None) -> None:
        self._after_denoiser()  # anything still batched (an evaluation that raised half-way)
        run, acc = self._run, self._acc
        assert run is not None
        size = run.resolution
        cross = _canonical(acc.canonical, acc.cross, size, 1.0 / (self.cross_weight * acc.evals), upsample=self.config.upsample) if self.cross_layers else None
        names = list(acc.canonical_queries) + [n for n in acc.queries if n not in acc.canonical_queries]
        queries = {  # a distribution over the canonical grid: resized densities keep their mass
            name: _canonical(acc.canonical_queries.get(name), acc.queries.get(name, {}), size, 1.0 / (self.self_weight * acc.evals), True, self.config.upsample)
            for name in names
        }
        detail = {name: m / acc.evals for name, m in acc.detail.items()}
        missing = tuple(sorted(self._expected - acc.seen)) if len(acc.seen) != len(self._expected) else ()
        if missing and "missing" not in self._warned:
            self._warned.add("missing")
            log.warning("attention layers produced no queries/keys this step (maps exclude them): %s", ", ".join(missing))
        frame = StepFrame(
            run_id=run.run_id,
            step=run.steps_done,
            total_steps=max(run.total_steps, run.steps_done + 1),
            timestep=acc.timestep,
            evaluations=acc.evals,
            cross=cross,
            self_maps=cast("dict[str, torch.Tensor]", queries),  # never None: each name has a sum
            layers=detail,
            latents=latents,
            x0_source=x0,
            missing_layers=missing,
        )
        run.steps_done += 1
        self._acc = _StepAccumulator()
        if self.config.keep_frames:
            run.frames.append(frame)
        for callback in list(self.callbacks):
            callback(frame, run)
        if run.total_steps and run.steps_done >= run.total_steps:
            self._finish("done")

    def _finish(self, status: str, emit: bool = True) -> None:
        run = self._run
        if run is None:
            return
        if self._acc.evals and emit:  # evaluations not yet closed by a scheduler step
            self._emit(None, None)
            if self._run is None:
                return
        run.status = status if run.steps_done < run.total_steps else "done"
        self._run = None


_X0_COEFFICIENTS: dict = {}  # the scheduler's ᾱ-coefficients on the model's device (estimate_x0), across captures


def _estimated_x0(sched: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
                  unpack: Callable[[torch.Tensor | None], torch.Tensor | None]) -> torch.Tensor | None:
    return unpack(estimate_x0(sched, model_output, timestep, sample, _X0_COEFFICIENTS))


def capture(pipe: Any, config: CaptureConfig | None = None, on_step: StepCallback | None = None, **options: Any) -> Capture:
    """Capture per-step attention of ``pipe``: ``with capture(pipe) as cap: pipe(prompt)``.

    Keyword options are :class:`CaptureConfig` fields (``capture(pipe, layers="up_*")``).
    """
    if options:
        if config is not None:
            raise TypeError("pass either a CaptureConfig or keyword options, not both")
        config = CaptureConfig(**options)
    return Capture(pipe, config, on_step)


def _total_weight(cfg: CaptureConfig, layers: list[Layer]) -> float:
    """All heads' weights over ``layers`` (:func:`head_weight_vector`'s, added in float32) where
    head weights are given; the head count where none are: exact, and no tensor per layer at
    every run (a capture asks it of each layer, then of all)."""
    if not cfg.head_weights:
        return float(sum(l.heads for l in layers))
    return float(sum(head_weight_vector(cfg, l.name, l.heads).sum() for l in layers))
