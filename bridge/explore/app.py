"""The explorer's HTTP and WebSocket app (Starlette, served by uvicorn).

Why Starlette + uvicorn: a small, well-kept ASGI toolkit with WebSockets built in (no framework
layers we would not use), and the reference ASGI server; the page is static files served by the
same app, so nothing is fetched from a CDN and there is no front-end build step.

Every endpoint answers bad input with HTTP 4xx and ``{"error": "one line"}`` that the page shows;
the server keeps serving. Blocking work (generation, decoding, rendering) runs in the thread
pool so a generation never stalls the Live tab's WebSocket.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from bridge.capture import CaptureError, load_head_weights
from bridge.export import heat_rgb
from bridge.protocol import PHASE_NAMES

from . import analysis
from .engine import Engine, GenerateRequest
from .live import LiveHub
from .regions import query_from_request
from .runs import GLOBAL, InspectRun, png, runs_from_trace

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_TRACE_BYTES = 2 * 1024**3
KEEP_RUNS = 24


class Explorer:
    """The app's state: the engine, the runs open in the page, the live hub, head-weight concepts."""

    def __init__(self, engine: Engine | None = None, hub: LiveHub | None = None, concepts_dir: str | None = None,
                 live_source: str = "", models: list[str] | None = None) -> None:
        self.engine = engine or Engine()
        self.hub = hub or LiveHub()
        self.runs: OrderedDict[str, InspectRun] = OrderedDict()
        self.concepts_dir = Path(concepts_dir) if concepts_dir else None
        self.live_source = live_source
        self.models = models or ["shapes"]  # what the page's model field offers

    def add(self, run: InspectRun) -> InspectRun:
        self.runs[run.id] = run
        while len(self.runs) > KEEP_RUNS:
            old, _ = self.runs.popitem(last=False)
            self.engine.forget(old)
        return run

    def run(self, run_id: str) -> InspectRun:
        got = self.runs.get(run_id)
        if got is None:
            raise LookupError(f"no run {run_id!r} is open (runs older than the last {KEEP_RUNS} are closed); generate or open it again")
        return got

    def concepts(self) -> list[str]:
        """Concepts with head weights: the ``--concepts DIR`` JSON files (what ``stepx relevance -o
        DIR`` writes and ``stepx serve --concepts`` reads)."""
        if self.concepts_dir is None or not self.concepts_dir.is_dir():
            return []
        return [f.stem for f in sorted(self.concepts_dir.glob("*.json"))]

    def relevance(self, concept: str) -> dict[str, list[float]]:
        """A concept's head relevance vector, split by layer."""
        if concept not in self.concepts():
            known = ", ".join(self.concepts()) or "none (start the explorer with --concepts DIR, e.g. the output of stepx relevance -o DIR)"
            raise ValueError(f"unknown concept {concept!r}; known: {known}")
        assert self.concepts_dir is not None
        return load_head_weights(self.concepts_dir / f"{concept}.json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def guarded(fn: Callable[[Explorer, Request], Awaitable[Response]]) -> Callable[[Explorer, Request], Awaitable[Response]]:
    """Bad input → 400 with its one-line message; a missing run → 404; an analysis package not
    installed → 501; anything else → 500, logged, and the server goes on."""

    @functools.wraps(fn)
    async def wrapper(ex: Explorer, request: Request) -> Response:
        try:
            return await fn(ex, request)
        except LookupError as exc:
            return _error(404, str(exc.args[0] if exc.args else exc))
        except analysis.Unavailable as exc:
            return _error(501, str(exc))
        except (ValueError, CaptureError, OSError, ImportError) as exc:  # OSError: a model path or hub id that does not load
            return _error(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except Exception as exc:
            log.exception("explorer request %s failed", request.url.path)
            return _error(500, f"{type(exc).__name__}: {exc}")

    return wrapper


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def _number(request: Request, name: str, default: float, lo: float, hi: float, cast: type = float) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo:g}-{hi:g}, got {value:g}")
    return value


def _step(request: Request, run: InspectRun) -> int:
    return _number(request, "step", int(run.steps[-1]), int(run.steps[0]), int(run.steps[-1]), int)


def _data_url(rgb: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png(rgb)).decode("ascii")


#: inferno as a 256-entry RGB table for the Live tab's heat maps: the exports' colour map, sampled (stated once)
COLORMAP = (heat_rgb(np.linspace(0.0, 1.0, 256)[None]) * 255).round().astype(int)[0].tolist()

#: a run's renderings never change (its id is new for every generation or opened trace)
_PNG_CACHE = {"Cache-Control": "private, max-age=3600"}


def _png_response(rgb: Any) -> Response:
    """An RGB image as a cacheable PNG response."""
    return Response(png(rgb), media_type="image/png", headers=_PNG_CACHE)


# --- endpoints -------------------------------------------------------------------------------------
async def index(ex: Explorer, request: Request) -> Response:
    return FileResponse(STATIC / "index.html")


@guarded
async def info(ex: Explorer, request: Request) -> Response:
    return JSONResponse({"analysis": analysis.status(), "concepts": ex.concepts(), "live": ex.live_source,
                         "models": ex.models, "any_model": ex.engine.allowed is None,
                         "colormap": COLORMAP, "phases": list(PHASE_NAMES),
                         "global": "Global is DAAM's global heat map: the sum of every word's map, scaled to its maximum",
                         "runs": [r.summary() for r in ex.runs.values()]})


@guarded
async def generate(ex: Explorer, request: Request) -> Response:
    req = GenerateRequest.checked(await _json(request))
    run = ex.add(await run_in_threadpool(ex.engine.generate, req))
    return JSONResponse(run.summary())


@guarded
async def run_summary(ex: Explorer, request: Request) -> Response:
    return JSONResponse(ex.run(request.path_params["run"]).summary())


@guarded
async def image(ex: Explorer, request: Request) -> Response:
    run = ex.run(request.path_params["run"])
    step = _step(request, run)
    return _png_response(await run_in_threadpool(run.background, step))


@guarded
async def heat(ex: Explorer, request: Request) -> Response:
    run = ex.run(request.path_params["run"])
    word, step = request.query_params.get("word", GLOBAL), _step(request, run)
    return _png_response(await run_in_threadpool(run.heat_rgb, word, step))


@guarded
async def overlay(ex: Explorer, request: Request) -> Response:
    run = ex.run(request.path_params["run"])
    word, step, alpha = request.query_params.get("word", GLOBAL), _step(request, run), _number(request, "alpha", 0.5, 0, 1)
    return _png_response(await run_in_threadpool(run.overlay, word, step, alpha))


@guarded
async def gif(ex: Explorer, request: Request) -> Response:
    run = ex.run(request.path_params["run"])
    word, alpha = request.query_params.get("word", GLOBAL), _number(request, "alpha", 0.5, 0, 1)
    run.word_index(word)  # an unknown word fails before any work
    data = await run_in_threadpool(run.gif, word, alpha)
    name = "".join(c if c.isalnum() else "_" for c in word)
    return Response(data, media_type="image/gif", headers={"Content-Disposition": f'attachment; filename="stepx_{name}.gif"'})


@guarded
async def export_all(ex: Explorer, request: Request) -> Response:
    run = ex.run(request.path_params["run"])
    data = await run_in_threadpool(run.export_zip, _number(request, "alpha", 0.5, 0, 1))
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="stepx_{run.header.get("run_id") or run.id}.zip"'})


@guarded
async def region(ex: Explorer, request: Request) -> Response:
    run = ex.run(request.path_params["run"])
    query = query_from_request(await _json(request), run.canvas(), run.grid)
    answer = await run_in_threadpool(ex.engine.region, run, query)

    def render() -> dict[str, Any]:
        from bridge.export.render import overlay as blend

        stages = {}
        for name, t in answer["stages"].items():
            m = answer["maps"][t]
            stages[name] = {"step": t, "overlay": _data_url(blend(run.background(t), m, 0.6)),
                            "heat": _data_url(blend(run.background(t), m, 1.0))}
        return {"stages": stages, "grid": list(run.grid), "query": query.kind, "cells": int((query.cell_weights(*run.grid) > 0).sum())}

    return JSONResponse(await run_in_threadpool(render))


@guarded
async def open_trace(ex: Explorer, request: Request) -> Response:
    name = Path(request.query_params.get("name") or "upload.stepx").name
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_TRACE_BYTES:
        raise ValueError(f"{name} is {size / 1e9:.1f} GB; the explorer opens traces up to {MAX_TRACE_BYTES / 1e9:.0f} GB")
    with tempfile.TemporaryDirectory(prefix="stepx-trace-") as d:
        path = Path(d) / name
        received = 0
        with path.open("wb") as f:  # local disk, a chunk at a time
            async for chunk in request.stream():
                received += len(chunk)
                if received > MAX_TRACE_BYTES:
                    raise ValueError(f"{name} is over {MAX_TRACE_BYTES / 1e9:.0f} GB, the most the explorer opens")
                f.write(chunk)
        if received == 0:
            raise ValueError(f"{name} is empty: choose a .stepx trace recorded by stepx record or stepx serve --record")
        try:
            runs, problem = await run_in_threadpool(runs_from_trace, path)
        except ValueError as exc:
            raise ValueError(f"{name} cannot be opened as a StepX trace: {exc}") from None
    return JSONResponse({"name": name, "runs": [ex.add(r).summary() for r in runs],
                         "damaged": problem.replace(str(path), name) if problem else None})


@guarded
async def detection(ex: Explorer, request: Request) -> Response:
    """Text-guided detection: the objects the typed text names (words of the prompt)."""
    run = ex.run(request.path_params["run"])
    text = str((await _json(request)).get("text") or "").strip()
    if not text:
        raise ValueError("type what to find, with words of the prompt (e.g. red circle)")
    return JSONResponse(await run_in_threadpool(analysis.find, run, ex.engine, text))


@guarded
async def titan(ex: Explorer, request: Request) -> Response:
    """TITAN: every object of the prompt, found and annotated."""
    run = ex.run(request.path_params["run"])
    return JSONResponse(await run_in_threadpool(analysis.find, run, ex.engine, None))


@guarded
async def heads(ex: Explorer, request: Request) -> Response:
    run = ex.run(request.path_params["run"])
    body = await _json(request)
    word = str(body.get("word") or GLOBAL)
    run.word_index(word)
    try:
        k = int(body.get("k", 8))
    except (TypeError, ValueError):
        raise ValueError(f"k must be a whole number, got {body.get('k')!r}") from None
    relevance = ex.relevance(str(body.get("concept") or ""))
    total = sum(len(v) for v in relevance.values())
    if not 1 <= k <= total:
        raise ValueError(f"k must be 1-{total} (the heads in this concept's weights), got {k}")
    maps = await run_in_threadpool(ex.engine.compare_heads, run, relevance, word, k)
    last = int(run.steps[-1])

    def render() -> dict[str, Any]:
        from bridge.export.render import overlay as blend

        return {name: _data_url(blend(run.background(last), m, 0.6)) for name, m in maps.items()}

    return JSONResponse({"word": word, "k": k, "heads": total, "maps": await run_in_threadpool(render)})


async def live_socket(ex: Explorer, websocket: WebSocket) -> None:
    await websocket.accept()
    await ex.hub.serve(websocket)


async def live_status(ex: Explorer, request: Request) -> Response:
    return JSONResponse({"clients": ex.hub.clients, "received": ex.hub.received, "source": ex.live_source})


def create_app(explorer: Explorer | None = None) -> Starlette:
    """The ASGI app; ``app.state.explorer`` is its state."""
    ex = explorer or Explorer()
    bind = lambda fn: functools.partial(fn, ex)
    routes = [
        Route("/", bind(index)),
        Route("/api/info", bind(info)),
        Route("/api/generate", bind(generate), methods=["POST"]),
        Route("/api/traces", bind(open_trace), methods=["POST"]),
        Route("/api/runs/{run}", bind(run_summary)),
        Route("/api/runs/{run}/image.png", bind(image)),
        Route("/api/runs/{run}/heat.png", bind(heat)),
        Route("/api/runs/{run}/overlay.png", bind(overlay)),
        Route("/api/runs/{run}/word.gif", bind(gif)),
        Route("/api/runs/{run}/export.zip", bind(export_all)),
        Route("/api/runs/{run}/region", bind(region), methods=["POST"]),
        Route("/api/runs/{run}/detect", bind(detection), methods=["POST"]),
        Route("/api/runs/{run}/titan", bind(titan), methods=["POST"]),
        Route("/api/runs/{run}/heads", bind(heads), methods=["POST"]),
        Route("/api/live", bind(live_status)),
        WebSocketRoute("/ws/live", bind(live_socket)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.explorer = ex
    return app
