"""The batched evaluation engine: what the session does with each layer's q and k.

Per denoiser evaluation, layers of one shape are grouped and their maps computed in one batched
call (replayed as a CUDA graph where allowed), summed per resolution and brought to the
canonical grid; per-layer work (detail maps, odd shapes) goes one layer at a time. The session
(bridge.capture.session) owns the scope, the runs and the step rule, and mixes this in.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import cross_kernel, kernel_check
from .adapters import Adapter, Layer, adapter_for
from .config import CaptureConfig, head_weight_vector
from .frames import CaptureRun
from .graphs import StaticGraphs
from .maps import batched_cross_attention_maps, batched_query_rows_map, cross_attention_maps, diffused_query_map, layer_grid, per_head_cross_maps, resize_maps, split_heads

log = logging.getLogger(__name__)


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


class BatchedEvaluation:
    """The evaluation half of :class:`~bridge.capture.session.Capture` (a mixin over its state:
    ``config``, ``adapter``, ``_run``, ``_acc``, the caches below and the chosen layers)."""

    config: CaptureConfig
    adapter: Adapter
    _run: CaptureRun | None
    _acc: _StepAccumulator
    cross_layers: list[Layer]
    self_layers: list[Layer]
    detail: set[str]  # names of the cross layers also kept per head
    # (layer name, device) -> its [heads] weights; (layer names, device) -> their [L·heads] weights
    _weights: dict[tuple[str | tuple[str, ...], str], torch.Tensor]
    # (query, grid, layer names, device) -> (rows [n], w_lh·ρ_r [L, heads, n]), see _query_weights
    _row_weights: dict[tuple[str, tuple[int, int], tuple[str, ...], str], tuple[torch.Tensor, torch.Tensor]]
    # (query, grid, device) -> (rows [n], weights [N]), see _cells
    _query_cells: dict[tuple[str, tuple[int, int], str], tuple[torch.Tensor, torch.Tensor]]
    _routes: dict[str, tuple]  # layer name -> how observe() files it in this run (see _route)
    _plans: dict[tuple, _EvalPlan]  # the evaluation's batched maths, per group layout, this run

    def _head_weights(self, layer: Layer, device: torch.device) -> torch.Tensor:
        """``[heads]`` float32 weights of ``layer`` on ``device``: views of one tensor holding every
        captured layer's weights, copied to the device once per model and set of values (a copy
        per layer from pageable memory would make the host wait for the GPU, layer by layer, in
        the first step of every run)."""
        key = (layer.name, str(device))
        w = self._weights.get(key)
        if w is None:
            layers = [*self.cross_layers, *self.self_layers]
            if all(l.name != layer.name for l in layers):
                layers.append(layer)
            values = torch.cat([head_weight_vector(self.config, l.name, l.heads) for l in layers])
            names = tuple(l.name for l in layers)
            stacked = _shared_constant(self.adapter.denoiser(), ("layer heads", names, tuple(values.tolist())), values, device)
            for l, part in zip(layers, stacked.split([l.heads for l in layers])):
                self._weights[(l.name, str(device))] = part
            w = self._weights[key]
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

    def cross_sum(self, layer: Layer, b: int, t: int, n: int, device: torch.device) -> tuple[torch.Tensor, bool] | None:
        """``(sum [B, T, N], accumulate)``: the step's running sum of cross maps at ``layer``'s grid,
        for an adapter that adds a layer's head-weighted maps into it in place (a fused kernel);
        ``accumulate=False``: first use this step, uninitialised, to be written, not added to.
        The caller must write it. None outside a run."""
        run = self._run
        if run is None:
            return None
        grid = layer_grid(n, run.latent_hw)
        acc = self._acc
        acc.seen.add(layer.name)
        got = acc.cross.get(grid)
        if got is None:
            acc.cross[grid] = got = torch.empty((b, t, *grid), dtype=torch.float32, device=device)  # [B, T, h, w]
            return got.view(b, t, n), False
        return got.view(b, t, n), True

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
        maths: list[bool] = []  # per cross group, whether the fused kernel computes it: part of the key too
        for (grid, heads, _c, what), items in groups:
            layers = tuple(layer for layer, _, _ in items)
            device = items[0][1].device
            if isinstance(what, int):  # cross-attention over ``what`` text keys
                weights = self._stacked_weights(layers, device)
                consts.append(weights)
                batched = self._cross_maths(items, weights, heads, rows)
                maths.append(batched is not batched_cross_attention_maps)

                def cross(qk: list, grid=grid, heads=heads, weights=weights, batched=batched) -> tuple[str | None, torch.Tensor]:
                    maps = batched(qk[0::2], qk[1::2], weights, heads, rows)  # [B, T, N]
                    return None, resize_maps(maps.reshape(maps.shape[0], maps.shape[1], *grid), size, self.config.upsample)  # [B, T, H, W]

                steps.append(cross)
            else:  # the self-attention query named ``what``; densities keep their mass when resized
                query = next(qr for qr in self.config.queries if qr.name == what)
                cells, weights = self._query_weights(query, grid, layers, device)
                consts += [cells, weights]
                if what not in query_names:
                    query_names.append(what)

                def rows_map(qk: list, grid=grid, heads=heads, cells=cells, weights=weights, what=what) -> tuple[str | None, torch.Tensor]:
                    m = batched_query_rows_map(qk[0::2], qk[1::2], cells, weights, heads, rows)  # [B, N]
                    return what, resize_maps(m.view(-1, *grid), size, self.config.upsample).mul_(grid[0] * grid[1] / area)  # [B, H, W]

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

        # with the groups' keys, every input's shape; the graphs outlive the capture, so what a
        # graph computes is in its key (a capture with fused_maps=False must not replay the kernel)
        key = (shape_key, total, run.batch, size, tuple(c.data_ptr() for c in consts), tuple(maths))
        return _EvalPlan(fn, key, has_cross, tuple(query_names))

    def _cross_maths(self, items: list, weights: torch.Tensor, heads: int, rows: slice) -> Callable[..., torch.Tensor]:
        """``batched(q, k, weights, heads, rows)`` for one group of cross layers: the fused kernel
        (:mod:`cross_kernel`) where it is wanted and checked against the op-by-op maths on these
        inputs (the check is made now, while the run's plan is made, outside any CUDA graph
        capture), else the op-by-op maths."""
        _, q, k = items[0]
        kernel = cross_kernel.kernel_for(q.device) if kernel_check.wanted(self.config) else None
        if kernel is not None and all(cross_kernel.fits(ql, kl) for _, ql, kl in items) \
                and cross_kernel.usable(kernel, q, k, weights[:heads], heads, rows):
            return functools.partial(cross_kernel.fused_cross_attention_maps, kernel)
        return batched_cross_attention_maps

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
        got = self._row_weights.get(key)
        if got is None:
            row_weights = query.cell_weights(*grid).float()
            rows = torch.nonzero(row_weights, as_tuple=True)[0]
            heads = torch.stack([head_weight_vector(self.config, l.name, l.heads) for l in layers])  # [L, heads]
            weights = heads[:, :, None] * row_weights[rows][None, None]
            module = self.adapter.denoiser()
            got = self._row_weights[key] = (
                _shared_constant(module, ("rows", key, tuple(rows.tolist())), rows, device),
                _shared_constant(module, ("row weights", key, tuple(weights.flatten().tolist())), weights, device),
            )
        return got


def _canonical(summed: torch.Tensor | None, grids: dict, size: tuple[int, int], scale: float, density: bool = False,
               upsample: str = "bilinear") -> torch.Tensor | None:
    """``scale``·(the batched layers' canonical-grid sum + Σ_g resize(m_g) of the per-layer sums
    at their own grids, each × its cell count / the canonical area for a ``density``, so resized
    densities keep their mass). The sums are the step's own, updated in place."""
    out = summed.mul_(scale) if summed is not None else None
    area = size[0] * size[1]
    for g, m in grids.items():
        a = scale * (g[0] * g[1] / area) if density else scale
        r = resize_maps(m, size, upsample)
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
    h = layer.heads
    norm_q: Callable[[torch.Tensor], torch.Tensor] | None = getattr(layer.module, "norm_q", None)  # [.., d] -> [.., d]
    norm_k: Callable[[torch.Tensor], torch.Tensor] | None = getattr(layer.module, "norm_k", None)
    if norm_q is not None:
        q = norm_q(q.unflatten(-1, (h, -1))).flatten(-2)
    if norm_k is not None:
        k = norm_k(k.unflatten(-1, (h, -1))).flatten(-2)
    return q, k
