"""The generation daemon: control in, every step out, all night.

One generation thread (the caller of ``serve_forever``) owns the model. Control servers run
in their own threads and only touch a small locked state: a new prompt cancels the current
run (the pipeline stops within one step) and becomes the next. While idle, the last run is
replayed so a patch never goes dark; a playlist cycles prompts with a pause. A status packet
goes out once a second. Nothing a client sends can stop the loop: bad requests get an error
reply, failed runs an error status.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from bridge.budget import MAX_STEP_SECONDS, Budget, BudgetError, latent_tokens
from bridge.protocol import Packet
from bridge.runner import Request, Runner, RunResult
from bridge.protocol import state_code
from bridge.stream.publisher import Publisher, Recipe, StagingPublisher, as_publisher
from bridge.stream.recipes import kept_item, prepare_run
from bridge.stream.recorder import RECORDING_OFF
from bridge.stream.ring import Ring, Staged, StagedStep

log = logging.getLogger(__name__)


@dataclass
class DaemonOptions:
    idle_replay: bool = True
    replay_fps: float = 10.0
    playlist_pause: float = 2.0
    heartbeat: float = 1.0
    progress: bool = False  # a console progress bar per run (stepx serve turns it on for a terminal)
    max_step_seconds: float = MAX_STEP_SECONDS  # refuse requests predicted to take longer per step (bridge.budget)


class Daemon:
    """Owns the request queue, the current run and the idle loop; see the module docstring."""

    def __init__(self, runner: Runner, publish: Publisher | Callable[[Packet], None], options: DaemonOptions | None = None,
                 recording: Callable[[], dict[str, Any]] | None = None) -> None:
        """``recording``: the recorder's health for the status (``FanOut.recording`` or
        ``PacketProcess.recording``); without it the status says ``{"state": "off"}``."""
        self.runner = runner
        self._recording = recording or (lambda: dict(RECORDING_OFF))
        self.publisher = as_publisher(publish)
        self.publish = self.publisher.publish
        self.options = options or DaemonOptions()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._pending: Request | None = None
        self._playlist: list[Request] = []
        self._playlist_loop = False
        self._playlist_index = 0
        self._current: Request | None = None
        self._last_packets: list[Packet] = []
        self._state = "idle"
        self._step = 0
        self._fps = 0.0
        self._message = ""
        self.results: deque[RunResult] = deque(maxlen=32)  # the latest runs only: a show runs all night
        self.runs_done = 0
        self._started = time.time()
        self.budget = Budget(runner.pipe, self.options.max_step_seconds)

    # --- control (any thread) --------------------------------------------------------------
    def handle(self, req: Any) -> dict[str, Any]:
        """Handler for the control servers: takes a validated ControlRequest, returns the reply payload."""
        cmd = "generate" if req.cmd == "start" else req.cmd
        if cmd == "generate":
            warnings = self.runner.check(req.params)  # a focus word not in the prompt is refused here (ValueError)
            self.check(req.params)  # refused at the door, with the reason, if the machine cannot serve it
            self.submit(req.params)
            return {"queued": True, **({"warnings": warnings} if warnings else {})}
        if cmd == "cancel":
            with self._lock:
                self._pending = None
                self._playlist = []
            self._cancel.set()
            self._wake.set()
            return {"cancelled": True}
        if cmd == "playlist":
            for i, item in enumerate(req.playlist):
                try:
                    self.runner.check(item)
                    self.check(item)
                except ValueError as exc:
                    raise ValueError(f"playlist item {i}: {exc}") from None
            self.set_playlist(list(req.playlist), bool(req.loop))
            return {"playlist": len(self._playlist), "loop": self._playlist_loop}
        return self.status()  # status, ping

    def check(self, request: Request) -> None:
        """Raise :class:`~bridge.budget.BudgetError` if ``request`` cannot be served on this machine
        (memory, or a step too long to cancel within); from what is known, never running the model."""
        self.budget.check(request.width, request.height, request.guidance, probe=False)

    def submit(self, request: Request) -> None:
        """Queue ``request`` (latest wins) and preempt the current run."""
        with self._lock:
            self._pending = request
            self._playlist = []
        self._cancel.set()
        self._wake.set()

    def set_playlist(self, requests: list[Request], loop: bool) -> None:
        """Replace the queue with ``requests``, cycled when ``loop``; preempts the current run."""
        with self._lock:
            self._playlist = list(requests)
            self._playlist_loop = loop
            self._playlist_index = 0
            self._pending = None
        self._cancel.set()
        self._wake.set()

    def stop(self) -> None:
        """Ask the loop to end; the current run is cancelled within one step."""
        self._stop.set()
        self._cancel.set()
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """The status payload: ``state`` and ``state_code`` from the one table (bridge.protocol.STATES),
        ``device_memory`` in bytes (CUDA allocated, else the process's RSS), ``recording`` (the
        recorder's health: docs/PROTOCOL.md)."""
        mem = torch.cuda.memory_allocated() if torch.cuda.is_available() else _rss_bytes()
        return {
            "state": self._state, "state_code": state_code(self._state), "fps": round(self._fps, 2), "step": self._step, "device_memory": int(mem),
            "prompt": self._current.prompt if self._current else "", "message": self._message,
            "playlist": len(self._playlist), "uptime": round(time.time() - self._started, 1),
            "recording": self._recording_health(),
        }

    def _recording_health(self) -> dict[str, Any]:
        try:
            return self._recording()
        except Exception as exc:  # the status never fails for want of the recorder's health
            return {"state": "failed", "error": f"recorder health unavailable: {exc!r}"[:400]}

    # --- generation thread -----------------------------------------------------------------
    def serve_forever(self) -> None:
        beat = threading.Thread(target=self._heartbeat, name="stepx-heartbeat", daemon=True)
        beat.start()
        try:
            while not self._stop.is_set():
                req = self._next_request()
                if req is not None:
                    self._generate(req)
                    if self._playlist and not self._pending:
                        self._wake.wait(self.options.playlist_pause)
                        self._wake.clear()
                elif self.options.idle_replay and self._last_packets:
                    self._replay_once()
                else:
                    if self._state != "error":  # an error stays visible until the next request
                        self._state = "idle"
                    self._wake.wait(0.2)
                    self._wake.clear()
        finally:
            self._stop.set()
            beat.join(timeout=2)

    def _next_request(self) -> Request | None:
        with self._lock:
            if self._pending is not None:
                req, self._pending = self._pending, None
                return req
            if self._playlist:
                if self._playlist_index >= len(self._playlist):
                    if not self._playlist_loop:
                        self._playlist = []
                        return None
                    self._playlist_index = 0
                req = self._playlist[self._playlist_index]
                self._playlist_index += 1
                return req
        return None

    def _generate(self, req: Request) -> None:
        self._cancel.clear()
        self._current, self._state, self._message = req, "generating", ""
        try:  # here, on the model's thread, a first oversized request may time one probe step
            self.budget.check(req.width, req.height, req.guidance)
        except BudgetError as exc:
            self._state, self._message = "error", str(exc)
            self.publish(Packet("status", {**self.status(), "error": str(exc)}))
            log.error("request not started: %s", exc)
            return
        bar = None
        if self.options.progress:
            from tqdm import tqdm

            bar = tqdm(total=req.steps, desc=req.prompt[:40], unit="step", leave=False)
        t_last = [time.perf_counter()]
        clock = self.runner.step_clock

        def on_step(run_id: str, step: int) -> None:  # on the model's thread, as each step ends
            now = time.perf_counter()
            rate = 1 / max(now - t_last[0], 1e-6)
            self._fps = 0.8 * self._fps + 0.2 * rate if self._fps else rate
            t_last[0] = now
            self._step = int(step)
            if bar is not None:
                bar.update(1)
            if clock is not None:
                clock(run_id, step)

        record = _RunRecord(self.publisher)
        self.runner.publisher, self.runner.step_clock = record, on_step
        try:
            result = self.runner.run(req, self._cancel)
        finally:
            self.runner.step_clock = clock
            if bar is not None:
                bar.close()
        self.results.append(result)
        self.runs_done += 1
        if result.status == "done" and result.timings and result.steps:
            self.budget.learn(latent_tokens(self.runner.pipe, req.width, req.height),
                              result.timings["denoise"] / result.steps)
        if result.status == "done":
            self._last_packets = record.items
        if result.status == "error":
            self._state, self._message = "error", result.error or "error"
            self.publish(Packet("status", {**self.status(), "error": result.error}))
            log.error("run failed (the daemon keeps serving): %s", result.error)
        else:
            self._state = "idle"
            log.info("run %s %s: %d steps in %.2fs", result.run_id, result.status, result.steps, result.seconds)

    def _replay_once(self) -> None:
        """Play the last run's packets once at ``replay_fps``, stopping as soon as work arrives.
        Recipes (a run published through a sink process) are sent again to be built there."""
        if self._state != "error":  # an error stays visible until the next request (the replay still plays)
            self._state = "replaying"
        self._wake.clear()  # a wake left from the run's own submit must not cut the replay short; new work is seen below
        period = 1.0 / max(self.options.replay_fps, 0.1)
        if self._wake.wait(period):  # one frame's pause at the loop point: the last end, then the next run
            self._wake.clear()
            return
        for p in self._last_packets:
            if self._stop.is_set() or self._pending is not None or self._playlist:
                return
            if isinstance(p, Packet):
                self.publish(Packet(p.kind, {**p.header, "replay": True}, p.arrays))
                is_step = p.kind == "step"
            else:
                self.publisher.publish_recipe(partial(replayed, p))
                # a preview goes with its step; the run's preparation is no frame
                is_step = not (p.func is kept_item and p.args[1] == "image" or p.func is prepare_run)
            if is_step and self._wake.wait(period):
                self._wake.clear()
                return

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.options.heartbeat):
            try:
                self.publish(Packet("status", self.status()))
            except Exception as exc:  # the heartbeat never dies
                log.warning("heartbeat failed: %s", exc)


class _RunRecord:
    """The runner's Publisher for one run: forwards everything to the daemon's publisher and keeps
    it for the idle replay (recipes as recipes, so a remote publisher builds them again)."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._staging = publisher if isinstance(publisher, StagingPublisher) else None  # asked once, not per step
        self.remote = publisher.remote
        self.items: list[Any] = []  # Packets and recipes, in run order

    def publish(self, packet: Packet) -> None:
        self.items.append(packet)
        self._publisher.publish(packet)

    def publish_recipe(self, recipe: Recipe) -> None:
        if not self.remote:  # built here: keep the packet, so the replay does not build it again
            packet = recipe()
            if packet is not None:
                self.publish(packet)
            return
        self.items.append(recipe)
        self._publisher.publish_recipe(recipe)

    @property
    def ring(self) -> Ring | None:
        return self._staging.ring if self._staging is not None else None

    def publish_staged(self, staged: Staged, wait: bool = True) -> bool:
        """Forward a staged step or preview; the replay keeps a recipe that rebuilds it from what
        the sink process kept of it (its values never reach this process as arrays)."""
        if self._staging is None:
            raise TypeError(f"{type(self._publisher).__name__} takes no staged steps (it has no ring)")
        sent = self._staging.publish_staged(staged, wait)
        if sent:
            self.items.append(partial(kept_item, staged.run_id, "step" if isinstance(staged, StagedStep) else "image", staged.step))
        return sent

    def alive(self) -> bool:
        return self._publisher.alive()


def replayed(recipe: Callable[[], Packet | None]) -> Packet | None:
    """A recipe's packet marked as a replay (a recipe itself, built where the sinks are)."""
    p = recipe()
    return None if p is None else Packet(p.kind, {**p.header, "replay": True}, p.arrays)


def _rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
