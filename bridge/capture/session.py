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
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .adapters import Adapter, Layer, adapter_for
from .config import CaptureConfig, head_weight_vector, matches
from .frames import CaptureRun, StepFrame
from .graphs import StaticGraphs
from .maps import batched_cross_attention_maps, batched_query_rows_map, cross_attention_maps, diffused_query_map, layer_grid, per_head_cross_maps, resize_maps, split_heads
from .steps import estimate_x0, patch_method, step_outputs
from .tokens import token_maps_for

log = logging.getLogger(__name__)

StepCallback = Callable[[StepFrame, CaptureRun], None]


@dataclass
class _StepAccumulator:
    """Sums of one step's maps, per layer resolution, until the step ends."""

    cross: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # grid -> [B, T, h, w]
    queries: dict[str, dict[tuple[int, int], torch.Tensor]] = field(default_factory=dict)  # name -> grid -> [B, h, w]
    detail: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [B, heads, T, h, w]
    seen: set[str] = field(default_factory=set)
    evals: int = 0
    timestep: float | torch.Tensor = float("nan")
    batched: dict[tuple, list] = field(default_factory=dict)  # (grid, heads, d, T | query name) -> [(layer, q, k)]
    canonical: torch.Tensor | None = None  # Σ over evaluations of the batched layers' cross maps [B, T, H, W]
    canonical_queries: dict[str, torch.Tensor] = field(default_factory=dict)  # query name -> [B, H, W]


def _add(store: dict, key: Any, value: torch.Tensor) -> None:
    if key in store:
        store[key].add_(value)
    else:
        store[key] = value


class Capture:
    """Scoped capture of per-step attention on a diffusers pipeline.

    Use as a context manager (``with capture(pipe) as cap: pipe(...)``) or with the
    ``apply()``/``remove()`` pair. Every pipeline call inside becomes a :class:`CaptureRun` in
    ``cap.runs``; ``on_step`` callbacks receive each :class:`StepFrame` as soon as its step ends.
    On exit, also after an exception, every hook and patched method is removed exactly.
    """

    def __init__(self, pipe: Any, config: CaptureConfig | None = None, on_step: StepCallback | None = None) -> None:
        self.pipe = pipe
        self.config = config or CaptureConfig()
        self.adapter: Adapter = adapter_for(pipe)
        self.runs: list[CaptureRun] = []
        self.callbacks: list[StepCallback] = [on_step] if on_step else []
        self._removers: list[Callable[[], None]] = []
        self._run: CaptureRun | None = None
        self._acc = _StepAccumulator()
        self._pending_tokens: list | None = None
        self._new_run = True
        self._evals_total: int | None = None
        self._evals_seen = 0
        self._weights: dict[tuple[str, str], torch.Tensor] = {}
        self._query_cells: dict[tuple[str, tuple[int, int], str], torch.Tensor] = {}
        self._warned: set[str] = set()
        self._encoded = False  # an encode_prompt call was recorded since the last set_timesteps
        configure = getattr(self.adapter, "configure", None)  # optional: adapter options from config.extra
        if configure is not None:
            configure(self.config)
        all_layers = self.adapter.layers()
        cfg = self.config
        self.cross_layers = [
            l for l in all_layers if l.cross and cfg.cross and matches(l.name, cfg.layers) and head_weight_vector(cfg, l.name, l.heads).sum() > 0
        ]
        self.self_layers = [l for l in all_layers if not l.cross and cfg.queries and matches(l.name, cfg.self_layers)]
        self.detail = {l.name for l in self.cross_layers if cfg.detail_layers and matches(l.name, cfg.detail_layers)}
        if cfg.cross and not self.cross_layers:
            names = ", ".join(l.name for l in all_layers if l.cross)
            raise ValueError(f"no cross-attention layer matches {cfg.layers!r} with non-zero head weights; layers: {names}")
        self.cross_weight = float(sum(head_weight_vector(cfg, l.name, l.heads).sum() for l in self.cross_layers))
        self.self_weight = float(sum(head_weight_vector(cfg, l.name, l.heads).sum() for l in self.self_layers))
        self._expected = frozenset(l.name for l in self.cross_layers + self.self_layers)
        self._routes: dict[str, tuple] = {}  # layer name -> how observe() files it in this run (see _route)
        self._plans: dict[tuple, _EvalPlan] = {}  # the evaluation's batched maths, per group layout, this run
        #: Called on the model's thread after each observed layer, for a consumer that polls between
        #: steps' ends (the runner handing over host copies as soon as they land); None: nothing.
        self.between_layers: Callable[[], None] | None = None

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
            if getattr(self.adapter, "first_encode_per_run", False) and self._encoded:
                return original(*args, **kwargs)
            try:
                bound = sig.bind_partial(*args, **kwargs)
                repeats = int(bound.arguments.get("num_images_per_prompt") or 1)
                maker = getattr(self.adapter, "prompt_token_maps", None)  # optional: adapter-built token maps
                if maker is not None:
                    bound.apply_defaults()
                    self._pending_tokens = maker(bound.arguments, repeats)
                else:
                    prompt = bound.arguments.get("prompt")
                    if isinstance(prompt, str):
                        prompt = [prompt]
                    self._pending_tokens = (
                        token_maps_for(self.adapter.tokenizer(), prompt, repeats, self.adapter.sequence_length()) if prompt else None
                    )
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
                    prev, x0 = step_outputs(out)
                    unpack = getattr(self.adapter, "frame_latents", None)  # optional: e.g. FLUX's packed latents
                    if x0 is None:  # estimated when a consumer reads frame.x0, not on every step
                        x0 = functools.partial(_estimated_x0, sched, model_output, timestep, sample, unpack)
                    elif unpack is not None:
                        x0 = unpack(x0)
                    self._emit(unpack(prev) if unpack is not None else prev, x0)
            return out

        return step

    def _before_denoiser(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        skip = getattr(self.adapter, "skip_evaluation", None)  # optional: e.g. FLUX's separate uncond pass
        if skip is not None and skip(args, kwargs):
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
            resolution=tuple(self.config.resolution or latent_hw),
            layers=[l.name for l in self.cross_layers],
            info={"scheduler": type(sched).__name__, "family": self.adapter.family, "pipeline": type(self.pipe).__name__},
        )
        self.runs.append(self._run)
        self._routes.clear()
        self._plans.clear()
        self._acc = _StepAccumulator()
        self._new_run = False
        self._evals_seen = 0

    # --- per layer (hot path) ------------------------------------------------------------------
    def _head_weights(self, layer: Layer, device: torch.device) -> torch.Tensor:
        key = (layer.name, str(device))
        w = self._weights.get(key)
        if w is None:
            w = self._weights[key] = head_weight_vector(self.config, layer.name, layer.heads).to(device)
        return w

    def observe(self, layer: Layer, q: torch.Tensor, k: torch.Tensor) -> None:
        """Called by the probes with a layer's projected queries ``[B_all, N, C]`` and keys ``[B_all, M, C]``.

        The hot path: a layer computed with its peers after the evaluation (all but detail layers
        and diffused queries) only files ``(q, k)`` under its group, found once per run.
        """
        run = self._run
        if run is None:
            return
        route = self._routes.get(layer.name)
        if route is None or route[0] != q.shape[1]:
            route = self._route(layer, q, k, run)
        acc = self._acc
        acc.seen.add(layer.name)
        _, grid, groups, slow, normed = route
        if normed:  # per-head q/k norms (over d): applied as the layer does, on the [.., heads, d] view
            q, k = _norm_heads(layer, q, k)
        for key in groups:
            items = acc.batched.get(key)
            if items is None:
                acc.batched[key] = [(layer, q, k)]
            else:
                items.append((layer, q, k))
        if slow:
            self._observe_one(layer, q, k, grid, run)
        if self.between_layers is not None:
            self.between_layers()

    def _route(self, layer: Layer, q: torch.Tensor, k: torch.Tensor, run: CaptureRun) -> tuple:
        """``(tokens, grid, group keys, per-layer work?, q/k norms?)`` of a layer, for this run."""
        grid = layer_grid(q.shape[1], run.latent_hw)
        attn = layer.module
        normed = getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None
        groups: list[tuple] = []
        slow = False
        if layer.cross:
            if layer.name in self.detail:
                slow = True
            else:  # computed with the layer's peers after the evaluation
                groups.append((grid, layer.heads, q.shape[2], k.shape[1]))
        else:
            for query in self.config.queries:
                if query.kind == "diffused":  # its rows depend on the previous pass: one layer at a time
                    slow = True
                else:
                    groups.append((grid, layer.heads, q.shape[2], query.name))
        route = self._routes[layer.name] = (q.shape[1], grid, tuple(groups), slow, normed)
        return route

    def _observe_one(self, layer: Layer, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int], run: CaptureRun) -> None:
        """Per-layer maps: detail layers (per head) and diffused queries."""
        rows = slice(q.shape[0] - run.batch, q.shape[0])  # the conditional branch: last B rows
        qh = split_heads(q[rows], layer.heads)  # [B, heads, N, d]
        kh = split_heads(k[rows], layer.heads)  # [B, heads, M, d]
        acc = self._acc
        if layer.cross:
            b, t = kh.shape[0], kh.shape[2]
            _add(acc.cross, grid, cross_attention_maps(qh, kh, self._head_weights(layer, q.device)).view(b, t, *grid))
            _add(acc.detail, layer.name, per_head_cross_maps(qh, kh).reshape(b, layer.heads, t, *grid))
            return
        for query in self.config.queries:
            if query.kind == "diffused":
                cells = self._cells(query, grid, q.device)
                m = diffused_query_map(qh, kh, cells[1], self._head_weights(layer, q.device), query.iterations, query.keep)
                _add(acc.queries.setdefault(query.name, {}), grid, m.view(-1, *grid))

    def add_cross(self, layer: Layer, maps: torch.Tensor, per_head: torch.Tensor | None = None) -> None:
        """For adapters that compute the probabilities themselves (MM-DiT joint attention).

        maps: ``[B, T, N]`` head-weighted (``Σ_h w_h P_h``) image→text probabilities of the
        conditional rows; per_head: ``[B, heads, T, N]`` for detail layers.
        """
        run = self._run
        if run is None:
            return
        b, t, n = maps.shape
        grid = layer_grid(n, run.latent_hw)
        acc = self._acc
        acc.seen.add(layer.name)
        _add(acc.cross, grid, maps.reshape(b, t, *grid))
        if per_head is not None and layer.name in self.detail:
            _add(acc.detail, layer.name, per_head.reshape(b, layer.heads, t, *grid))
        if self.between_layers is not None:
            self.between_layers()

    def cond_rows(self, total: int) -> slice | None:
        """The rows of a denoiser batch of ``total`` rows that feed the maps (None outside a run)."""
        run = self._run
        return None if run is None else slice(total - run.batch, total)

    def head_weights(self, layer: Layer, device: torch.device) -> torch.Tensor:
        return self._head_weights(layer, device)

    def _cells(self, query: Any, grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows [n], weights [N])`` of a query at a grid: the row indices are found once, on the
        CPU, so the hot path never waits for the GPU to list them."""
        key = (query.name, grid, str(device))
        if key not in self._query_cells:
            weights = query.cell_weights(*grid)
            self._query_cells[key] = (torch.nonzero(weights, as_tuple=True)[0].to(device), weights.to(device))
        return self._query_cells[key]

    def _after_denoiser(self, *_: Any) -> None:
        """End of one model evaluation: the batched layers' maps, all groups in one computation
        (on CUDA one input copy and one CUDA-graph replay), summed into the step's canonical-grid
        accumulators."""
        acc = self._acc
        if not acc.batched:
            return
        groups = list(acc.batched.items())
        acc.batched.clear()
        shape_key = tuple((key, len(items)) for key, items in groups)
        plan = self._plans.get(shape_key)
        if plan is None:
            plan = self._plans[shape_key] = self._plan(groups, shape_key)
        tensors = [t for _, items in groups for _, q, k in items for t in (q, k)]  # whole batches: the rows are taken inside
        outs = _graphs_for(self.adapter.denoiser())(plan.fn, tensors, plan.key) if self.config.cuda_graphs else plan.fn(*tensors)
        if plan.cross:
            acc.canonical = outs[0].clone() if acc.canonical is None else acc.canonical.add_(outs[0])
        for name, out in zip(plan.queries, outs[1 if plan.cross else 0 :]):
            got = acc.canonical_queries.get(name)
            acc.canonical_queries[name] = out.clone() if got is None else got.add_(out)

    def _plan(self, groups: list[tuple[tuple, list]], shape_key: tuple) -> "_EvalPlan":
        """The maths of one evaluation's batched groups, as a function of their layers' whole
        ``(q, k)`` batches in order (it takes the conditional rows): every constant (head weights,
        query cells, sizes) bound once per run."""
        run = self._run
        assert run is not None
        total = groups[0][1][0][1].shape[0]
        rows = slice(total - run.batch, total)  # the conditional rows, taken inside (views: free in a replayed graph)
        size = run.resolution
        area = size[0] * size[1]
        steps: list[Callable[[list], tuple[str | None, torch.Tensor]]] = []
        query_names: list[str] = []
        consts: list[torch.Tensor] = []  # read by a replayed graph where they are: part of its key
        for (grid, heads, _c, what), items in groups:
            layers = tuple(layer for layer, _, _ in items)
            device = items[0][1].device
            if isinstance(what, int):  # cross-attention over ``what`` text keys
                weights = self._stacked_weights(layers, device)
                consts.append(weights)

                def cross(qk: list, grid=grid, heads=heads, weights=weights) -> tuple[str | None, torch.Tensor]:
                    maps = batched_cross_attention_maps(qk[0::2], qk[1::2], weights, heads, rows)  # [B, T, N]
                    return None, resize_maps(maps.view(maps.shape[0], maps.shape[1], *grid), size)  # [B, T, H, W]

                steps.append(cross)
            else:  # the self-attention query named ``what``; densities keep their mass when resized
                query = next(qr for qr in self.config.queries if qr.name == what)
                cells, weights = self._query_weights(query, grid, layers, device)
                consts += [cells, weights]
                if what not in query_names:
                    query_names.append(what)

                def rows_map(qk: list, grid=grid, heads=heads, cells=cells, weights=weights, what=what) -> tuple[str | None, torch.Tensor]:
                    m = batched_query_rows_map(qk[0::2], qk[1::2], cells, weights, heads, rows)  # [B, N]
                    return what, resize_maps(m.view(-1, *grid), size).mul_(grid[0] * grid[1] / area)  # [B, H, W]

                steps.append(rows_map)
        counts = [2 * len(items) for _, items in groups]
        has_cross = any(isinstance(key[3], int) for key, _ in groups)

        def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            sums: dict[str | None, torch.Tensor] = {}
            start = 0
            for step, n in zip(steps, counts):
                name, m = step(list(tensors[start : start + n]))
                start += n
                sums[name] = m if name not in sums else sums[name].add_(m)
            return tuple(([sums[None]] if has_cross else []) + [sums[name] for name in query_names])

        key = (shape_key, total, run.batch, size, tuple(c.data_ptr() for c in consts))  # with the groups' keys: every input's shape
        return _EvalPlan(fn, key, has_cross, tuple(query_names))

    def _stacked_weights(self, layers: tuple[Layer, ...], device: torch.device) -> torch.Tensor:
        """``[L·heads]`` head weights of ``layers``, layer-major, on ``device`` (made once, and one
        tensor per set of values across captures: a replayed graph reads it where it was)."""
        key = (tuple(l.name for l in layers), str(device))
        w = self._weights.get(key)
        if w is None:
            values = torch.cat([head_weight_vector(self.config, l.name, l.heads) for l in layers])
            w = self._weights[key] = _shared_constant(self.adapter.denoiser(), ("heads", key, tuple(values.tolist())), values, device)
        return w

    def _query_weights(self, query: Any, grid: tuple[int, int], layers: tuple[Layer, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows [n], w_lh·ρ_r [L, heads, n])`` of a query over ``layers`` at a grid (made once, on the CPU)."""
        key = (query.name, grid, tuple(l.name for l in layers), str(device))
        got = self._weights.get(key)
        if got is None:
            row_weights = query.cell_weights(*grid).float()
            rows = torch.nonzero(row_weights, as_tuple=True)[0]
            heads = torch.stack([head_weight_vector(self.config, l.name, l.heads) for l in layers])  # [L, heads]
            weights = heads[:, :, None] * row_weights[rows][None, None]
            module = self.adapter.denoiser()
            got = self._weights[key] = (
                _shared_constant(module, ("rows", key, tuple(rows.tolist())), rows, device),
                _shared_constant(module, ("row weights", key, tuple(weights.flatten().tolist())), weights, device),
            )
        return got

    # --- per step ------------------------------------------------------------------------------
    def _emit(self, latents: torch.Tensor | None, x0: torch.Tensor | Callable[[], torch.Tensor | None] | None) -> None:
        self._after_denoiser()  # anything still batched (an evaluation that raised half-way)
        run, acc = self._run, self._acc
        assert run is not None
        size = run.resolution
        cross = _canonical(acc.canonical, acc.cross, size, 1.0 / (self.cross_weight * acc.evals)) if self.cross_layers else None
        names = list(acc.canonical_queries) + [n for n in acc.queries if n not in acc.canonical_queries]
        queries = {  # a distribution over the canonical grid: resized densities keep their mass
            name: _canonical(acc.canonical_queries.get(name), acc.queries.get(name, {}), size, 1.0 / (self.self_weight * acc.evals), True)
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
            self_maps=queries,
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


def _estimated_x0(sched: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, unpack: Callable | None) -> torch.Tensor | None:
    x0 = estimate_x0(sched, model_output, timestep, sample, _X0_COEFFICIENTS)
    return unpack(x0) if unpack is not None and x0 is not None else x0


def _canonical(summed: torch.Tensor | None, grids: dict, size: tuple[int, int], scale: float, density: bool = False) -> torch.Tensor | None:
    """``scale``·(the batched layers' canonical-grid sum + Σ_g resize(m_g) of the per-layer sums
    at their own grids, each × its cell count / the canonical area for a ``density``, so resized
    densities keep their mass). The sums are the step's own, updated in place."""
    out = summed.mul_(scale) if summed is not None else None
    area = size[0] * size[1]
    for g, m in grids.items():
        a = scale * (g[0] * g[1] / area) if density else scale
        r = resize_maps(m, size)
        out = r.mul_(a) if out is None else out.add_(r, alpha=a)
    return out


@dataclass
class _EvalPlan:
    """The batched maps of one evaluation: ``fn(q_0, k_0, …)`` (the layers' whole batches; it
    takes the conditional rows itself) → (the cross-attention canonical sum, if any, then one
    canonical map per query named in ``queries``); ``key`` names every input's shape and every
    constant it bakes in (for a replayed graph)."""

    fn: Callable[..., tuple[torch.Tensor, ...]]
    key: tuple
    cross: bool
    queries: tuple[str, ...]


_PER_MODEL: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _graphs_for(module: torch.nn.Module) -> StaticGraphs:
    """The denoiser's graphs, kept across captures (a new capture per run reuses them)."""
    store = _PER_MODEL.setdefault(module, {})
    graphs = store.get("graphs")
    if graphs is None:
        graphs = store["graphs"] = StaticGraphs()
    return graphs


def graph_stats(pipe_or_module: Any) -> dict[str, int]:
    """How a denoiser's evaluations were computed so far: ``replayed`` as a CUDA graph, ``eager``,
    graphs ``captured``, captures ``failed`` (zeros where none ran, e.g. on the CPU)."""
    module = pipe_or_module if isinstance(pipe_or_module, torch.nn.Module) else adapter_for(pipe_or_module).denoiser()
    return dict(_graphs_for(module).stats)


def _shared_constant(module: torch.nn.Module, key: tuple, value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One device tensor per ``key`` (which includes its values) for the denoiser, across captures,
    so a graph captured in one run reads the same constants in the next."""
    store = _PER_MODEL.setdefault(module, {}).setdefault("constants", {})
    key = (*key, str(device), value.dtype, tuple(value.shape))
    got = store.get(key)
    if got is None:
        if len(store) >= 256:  # concepts come and go: bounded (a dropped tensor's graph key no longer matches)
            store.pop(next(iter(store)))
        got = store[key] = value.to(device)
    return got


def _norm_heads(layer: Layer, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a layer's per-head q/k norms (they act on the last, head-dim axis) to ``[B, N, heads·d]``."""
    attn, h = layer.module, layer.heads
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q.unflatten(-1, (h, -1))).flatten(-2)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k.unflatten(-1, (h, -1))).flatten(-2)
    return q, k


def capture(pipe: Any, config: CaptureConfig | None = None, on_step: StepCallback | None = None, **options: Any) -> Capture:
    """Capture per-step attention of ``pipe``: ``with capture(pipe) as cap: pipe(prompt)``.

    Keyword options are :class:`CaptureConfig` fields (``capture(pipe, layers="up_*")``).
    """
    if options:
        if config is not None:
            raise TypeError("pass either a CaptureConfig or keyword options, not both")
        config = CaptureConfig(**options)
    return Capture(pipe, config, on_step)
