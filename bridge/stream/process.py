"""Sinks in a child process: the model's process only hands over host arrays.

Why: on a GPU host, SD 1.5 at 512² is bound by the one Python thread that launches its kernels.
Any Python that runs beside it in the same process (packing, float16 encoding, socket sends,
the sinks' threads) takes the GIL from that thread, and every hand-over of the GIL costs it
more: with the sinks in-process, capture + phases + publish measured 1.10–1.16× plain on an
H100, against 0.99–1.02× for capture alone (docs/BENCHMARKS.md). A :class:`PacketProcess`
runs the :class:`~bridge.stream.fanout.FanOut` and its sinks in a spawned child. The parent encodes
each item as a JSON frame (a step recipe: a fixed binary header) plus raw array frames (no
pickle: :mod:`bridge.item_codec`), joined into one message (pyzmq lets the GIL go for every
frame it sends: one send per item), and sends it over a ZeroMQ socket whose I/O thread does the
sending without the GIL.

The channel admits only the daemon's own child (docs/SECURITY.md, "Internal channels and
traces"): an ``ipc://`` socket file in a fresh directory that only this user can enter (0700,
``tempfile.mkdtemp``), bound by a PAIR socket, and removed (file and directory) as soon as the
child's first message arrives on it: from then on there is nothing to connect to. So no other
local process can read the items (prompts, images) or feed the child one (and an item can only
name an allow-listed recipe: nothing on the channel is unpickled); a loopback TCP
port would admit any local process, and a PUSH socket would deal packets out to it. Where
ZeroMQ has no ``ipc://`` (older Windows builds) the PacketProcess refuses to start and says so:
run without the sink process there (``--sink-process off``).

An item is a Packet, or a *recipe*: a ``functools.partial`` of an allow-listed module-level
function over host arrays (:func:`bridge.item_codec.recipes`) that the child calls to build the Packet (or None:
nothing to send), so the phases, the packing and the header maths run there too (``Runner``
sends recipes to a remote Publisher such as this one; by default it then runs the
phases in the child, on the CPU, from each step's word maps).

Sinks are built in the child from ``sinks``, a picklable factory (e.g.
``functools.partial(build_sinks, args)``; handed over once by ``multiprocessing``'s spawn, on
the child's inherited pipe, never on the item channel), so a socket or a file belongs to one process only.
A sink that cannot open raises in the parent, from the constructor, with the child's error.
If the child dies, the next item starts a new one (at most once every ``restart_every``
seconds; items in between are dropped and counted), so a long show keeps going.

The child is spawned, not forked (a forked CUDA process is unusable), so as with any spawn-based
``multiprocessing``, a script that makes a PacketProcess must do so under
``if __name__ == "__main__":``; ``stepx`` commands already do.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import zmq

from bridge.heap import freeze_heap, keep_heap
from bridge.item_codec import decode_item, decode_staged, encode_item, encode_staged, join_frames, split_frames
from bridge.stream.recorder import RECORDING_OFF
from bridge.stream.ring import SLOT_BYTES, Ring, RingError, Staged, remove_folder, ring_folder
from bridge.threads import fine_timer_slack, timer_slack

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import SynchronizedString

log = logging.getLogger(__name__)

SinkFactory = Callable[[], list]

_PACKET, _RECIPE, _STAGED, _FLUSH, _CLOSE = b"P", b"R", b"S", b"F", b"C"
STAGED_TIMEOUT = 30.0  # seconds a staged step's maps may take to land (a step of the largest model is < 1 s)
HEALTH_BYTES = 2048  # room for the recorder's health JSON (its error is cut to 400 characters)
HEALTH_EVERY = 0.25  # seconds between the child's health reports (a change shows within this)


def parse_cpus(text: str) -> set[int]:
    """``"0-3,8,10-11"`` → ``{0, 1, 2, 3, 8, 10, 11}`` (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            cpus.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"not a CPU list: {text!r} (e.g. 0-3,8)") from None
    return cpus


def set_cpus(cpus: set[int]) -> None:
    """Restrict this process to ``cpus`` where the OS lets a process choose (Linux), else warn."""
    import os

    if not hasattr(os, "sched_setaffinity"):
        log.warning("this platform cannot restrict a process to CPUs; ignored")
        return
    os.sched_setaffinity(0, cpus)


class PacketProcessError(RuntimeError):
    """The sink process could not start or stopped answering."""


def private_endpoint() -> tuple[str, str]:
    """``(folder, endpoint)``: an ``ipc://`` endpoint in a new directory only this user can enter."""
    if not zmq.has("ipc"):
        raise PacketProcessError("this ZeroMQ build has no ipc:// transport, which the sink process needs to keep "
                                 "its channel private; run with --sink-process off")
    folder = tempfile.mkdtemp(prefix="stepx-sinks-")  # mode 0700: no other user can reach the socket
    os.chmod(folder, 0o700)  # (mkdtemp already does; said twice because it is the point)
    return folder, f"ipc://{os.path.join(folder, 'items')}"


class PacketProcess:
    """A publish callable whose FanOut and sinks live in a child process (module docstring).

    ``publish(packet)`` / ``publish_recipe(recipe)`` never wait for a sink; they wait for the local
    socket only when ``hwm`` items are already queued for the child (then at most
    ``send_timeout`` seconds, after which the item is dropped and counted).
    """

    def __init__(self, sinks: SinkFactory, *, restart_sinks: SinkFactory | None = None, keep_max: int = 64, hwm: int = 256,
                 send_timeout: float = 2.0, start_timeout: float = 120.0, restart_every: float = 5.0,
                 name: str = "stepx-sinks", cpus: set[int] | None = None, ring_slots: int = 0,
                 ring_slot_bytes: int = SLOT_BYTES) -> None:
        """``restart_sinks``: the factory for a child that replaces a dead one (default ``sinks``),
        e.g. one that appends to the recording instead of starting it again. ``cpus``: the CPUs
        the child may run on (Linux; None: the parent's), to keep it off the cores of the thread
        that launches the model's kernels. ``ring_slots`` × ``ring_slot_bytes``: a ring the
        runner lands step maps and previews in (:mod:`bridge.stream.ring`; ``SLOTS`` is the
        usual count: ``stepx serve --step-ring on``). 0 (the default): none, every step's values go through the packet thread
        and the channel: the simpler path, within a per cent of the ring on H100s (docs/BENCHMARKS.md, runs 20-22)."""
        self._factory = sinks
        self._restart_factory = restart_sinks or sinks
        self._keep_max = keep_max
        self._hwm = hwm
        self._send_timeout = send_timeout
        self._start_timeout = start_timeout
        self._restart_every = restart_every
        self._name = name
        self._cpus = set(cpus) if cpus else None
        self._mp = mp.get_context("spawn")  # never fork a process that holds a CUDA context
        # the child's recorder health (JSON), shared memory the parent reads for its status: no
        # message to drain, so a parent that never asks cannot block the child
        self._health = self._mp.Array(ctypes.c_char, HEALTH_BYTES)  # as typecode "c"; typed with its .value
        self._zctx = zmq.Context()
        self._lock = threading.Lock()
        self._closed = False
        self._last_start = 0.0
        self.sent = 0
        self.dropped = 0
        self.restarts = 0
        self.recipes = 0  # of sent: items built in the child
        self.staged = 0  # of recipes: steps whose maps came through the ring
        self.sink_names: list[str] = []
        self.child_frozen = 0  # objects the current child took out of its collector's reach (bridge/heap.py)
        self.child_timer_slack: int | None = None  # its ring-polling thread's timer slack, ns (Linux)
        self._ring_shape = (ring_slots, ring_slot_bytes)
        self._ring: Ring | None = None
        self._rings = 0
        self._retired: list[Ring] = []  # rings of dead children: copies may still be landing in them
        self._start()

    # -- the child's life ------------------------------------------------------------------------
    def _new_ring(self) -> tuple[Ring | None, str | None]:
        """A ring for the next child and its folder, or none (said once in the log) where it
        cannot be made: the steps then go the old way."""
        slots, slot_bytes = self._ring_shape
        if slots <= 0:
            return None, None
        folder = ring_folder()
        self._rings += 1
        try:
            return Ring.create(folder, slots, slot_bytes, ident=self._rings), folder
        except (RingError, ValueError, OSError) as exc:
            remove_folder(folder)
            log.warning("no shared ring for the step maps (%s); they go through the packet thread", exc)
            return None, None

    def _start(self, factory: SinkFactory | None = None) -> None:
        self._last_start = time.monotonic()
        ring, ring_dir = self._new_ring()
        spec = None if ring is None else (ring.path, ring.slots, ring.slot_bytes, ring.ident)
        folder, endpoint = private_endpoint()
        sock = self._zctx.socket(zmq.PAIR)  # one peer: the child; nobody else is dealt a packet
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(self._send_timeout * 1000))
        sock.bind(endpoint)
        here, there = self._mp.Pipe()
        proc = self._mp.Process(target=serve, name=self._name, daemon=True,
                                args=(factory or self._factory, endpoint, there, self._keep_max,
                                      logging.getLogger().getEffectiveLevel(), self._cpus, self._health, spec))
        proc.start()
        there.close()
        started: list[Any] = []
        try:
            if not here.poll(self._start_timeout):
                raise PacketProcessError(f"the sink process did not start within {self._start_timeout:.0f}s")
            status, detail, *started = here.recv()  # "ready": sink names, then the ring mapped, objects frozen, timer slack
            if status == "ready":  # the child's hello on the channel: connected; now close the door
                if not sock.poll(int(self._start_timeout * 1000)):
                    raise PacketProcessError("the sink process never connected to its channel")
                sock.recv()
                shutil.rmtree(folder, ignore_errors=True)  # the socket file goes: nobody can connect after it
        except (EOFError, OSError):
            status, detail = "error", PacketProcessError(f"the sink process exited while starting (code {proc.exitcode})")
        except PacketProcessError as exc:
            status, detail = "error", exc
        if ring_dir is not None:
            remove_folder(ring_dir)  # the child has mapped it (or never will): the file goes
        if status != "ready":
            proc.join(5)
            if proc.is_alive():
                proc.kill()
            sock.close(linger=0)
            here.close()
            shutil.rmtree(folder, ignore_errors=True)
            if ring is not None:
                ring.close()
            raise detail if isinstance(detail, BaseException) else PacketProcessError(str(detail))
        mapped, frozen, slack = started  # the child's "ready" (serve) sends all three
        if ring is not None and not mapped:
            log.warning("the sink process could not map the step ring; the step maps go through the packet thread")
            ring.close()
            ring = None
        if self._ring is not None:
            self._retired.append(self._ring)
        self._ring = ring
        self._sock, self._conn, self._proc, self._folder = sock, here, proc, folder
        self.endpoint = endpoint
        self.sink_names = list(detail)
        self.child_frozen, self.child_timer_slack = int(frozen), slack

    def _revive(self) -> bool:
        """Start a new child if the last one died and the restart interval has passed."""
        if self._proc.is_alive():
            return True
        if time.monotonic() - self._last_start < self._restart_every:
            return False
        log.error("the sink process died (exit code %s); starting a new one", self._proc.exitcode)
        self._sock.close(linger=0)
        self._conn.close()
        shutil.rmtree(self._folder, ignore_errors=True)
        try:
            self._start(self._restart_factory)
        except Exception as exc:  # keep the producer alive: try again after the interval
            log.error("could not restart the sink process: %s", exc)
            return False
        self.restarts += 1
        return True

    # -- producer side -------------------------------------------------------------------------
    #: A Publisher whose recipes run in the child (bridge.stream.publisher).
    remote = True

    def publish(self, packet: Any) -> None:
        """Publish a built Packet. Pass the PacketProcess itself to Runner and Daemon: it is a
        remote Publisher, so they send it recipes."""
        self._push(_PACKET, packet)

    __call__ = publish

    def alive(self) -> bool:
        """Whether the child is running, so a push returns at once instead of starting a new one."""
        return not self._closed and self._proc.is_alive()

    def recording(self) -> dict[str, Any]:
        """The child's recorder health, as its FanOut last reported it (``{"state": "off"}`` before)."""
        with self._health.get_lock():
            raw = self._health.value
        try:
            got = json.loads(raw) if raw else None
        except ValueError:
            got = None
        return got if isinstance(got, dict) else dict(RECORDING_OFF)

    def publish_recipe(self, recipe: Callable[[], Any]) -> None:
        """Publish the Packet that ``recipe()`` builds, calling it in the child."""
        self._push(_RECIPE, recipe)

    @property
    def ring(self) -> Ring | None:
        """The ring the current child maps (None: none could be made; steps go the old way)."""
        return self._ring

    def publish_staged(self, staged: Staged, wait: bool = True) -> bool:
        """Hand the child a staged step's or preview's notice: it waits for the values to land in
        the ring and builds the packet there. ``wait=False`` (the model's thread): only if the lock is free, the
        child alive and the channel has room; else False and nothing sent."""
        message = join_frames([_STAGED, *encode_staged(staged)])
        if wait:
            sent = self._push_message(message, f"step {staged.step}'s {type(staged).__name__}", ring=staged.slot.ring)
        else:
            if not self._lock.acquire(blocking=False):
                return False
            try:
                if self._closed or not self._maps(staged.slot.ring) or not self._proc.is_alive():
                    return False
                try:
                    self._sock.send(message, zmq.NOBLOCK)
                except zmq.Again:  # the child is behind: the packet thread waits for it instead
                    return False
            finally:
                self._lock.release()
            self.sent += 1
            sent = True
        if sent:
            self.recipes += 1
            self.staged += 1
        return sent

    def _maps(self, ring: int) -> bool:
        """Whether the current child maps the ring of id ``ring``."""
        return self._ring is not None and self._ring.ident == ring

    def _push(self, tag: bytes, item: Any) -> bool:
        message = join_frames([tag, *encode_item(item)])  # no pickle: JSON + raw array frames (bridge.item_codec), one send
        if self._push_message(message, getattr(item, "kind", "recipe")):
            self.recipes += tag == _RECIPE
            return True
        return False

    def _push_message(self, message: bytes, what: str, ring: int | None = None) -> bool:
        """Send one message, waiting for room up to ``send_timeout``; ``ring``: the id of the ring a
        staged item's values are in, which the child must have mapped."""
        with self._lock:
            if self._closed:
                raise RuntimeError("PacketProcess is closed")
            if not self._revive():
                self.dropped += 1
                return False
            if ring is not None and not self._maps(ring):  # mapped by a child that died
                self.dropped += 1
                log.warning("dropped %s: the sink process that mapped its ring was replaced", what)
                return False
            try:
                self._sock.send(message)
            except zmq.Again:  # the child is alive but took no item for send_timeout seconds
                self.dropped += 1
                log.warning("sink process busy for %.1fs; dropped a %s", self._send_timeout, what)
                return False
        self.sent += 1
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the child has handed every earlier item to its sinks' mailboxes."""
        with self._lock:
            if self._closed or not self._proc.is_alive():
                return False
            token = str(time.monotonic_ns()).encode()
            self._sock.send(join_frames([_FLUSH, token]))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0 and self._conn.poll(left):
                status, detail = self._conn.recv()
                if status == "flushed" and detail == token:
                    return True
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), stop the child and close the sinks."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._proc.is_alive():
                try:
                    self._sock.send(join_frames([_CLOSE, b""]))
                except zmq.ZMQError:
                    pass
                self._proc.join(timeout)
            if self._proc.is_alive():
                log.warning("the sink process did not stop within %.1fs; killed", timeout)
                self._proc.kill()
                self._proc.join(1)
            self._sock.close(linger=0)
            self._conn.close()
            shutil.rmtree(self._folder, ignore_errors=True)
            for ring in [*self._retired, *([self._ring] if self._ring is not None else [])]:
                ring.close()
                remove_folder(os.path.dirname(ring.path))  # gone already, except where a mapped file cannot be removed (Windows)
            self._ring, self._retired = None, []
        self._zctx.term()

    def __enter__(self) -> "PacketProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _report(health: SynchronizedString, fan: Any, last: bytes) -> bytes:
    """Write the FanOut's recorder health to the shared ``health`` array if it changed."""
    text = json.dumps(fan.recording(), separators=(",", ":")).encode()[:HEALTH_BYTES - 1]
    if text != last:
        with health.get_lock():
            health.value = text
    return text


def serve(factory: SinkFactory, endpoint: str, conn: Any, keep_max: int, log_level: int, cpus: set[int] | None = None,
          health: SynchronizedString | None = None, ring_spec: tuple[str, int, int, int] | None = None) -> None:
    """The child: build the sinks, map the ring (``ring_spec``: path, slots, slot bytes, id), then
    publish every item pulled from ``endpoint`` until told to close or the parent goes away. A bad
    item is logged (rate-limited) and skipped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides when to stop
    if cpus:
        set_cpus(cpus)
    fine_timer_slack()  # this thread polls the ring for each step's values: its sleeps end on time
    keep_heap()  # no page faults for every step's new arrays
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[sinks]: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        import torch  # recipes pack on the CPU: one thread, the model's process needs the cores

        torch.set_num_threads(1)
        from bridge.item_codec import recipes
        from bridge.stream.fanout import FanOut
        from bridge.stream.recipes import staged_recipe

        recipes()  # import the recipes' modules now, not at the first step (a 0.2 s wait in its latency)
        sinks = factory()
        fan = FanOut(sinks, keep_max)
        frozen = freeze_heap()  # torch's, numpy's and the sinks' objects: no full collection walks them per step
    except BaseException as exc:  # the parent raises it: a sink that cannot open says why there
        try:
            conn.send(("error", exc))
        except Exception:
            conn.send(("error", PacketProcessError(f"{type(exc).__name__}: {exc}")))
        return
    ring = None
    if ring_spec is not None:
        try:
            ring = Ring(*ring_spec[:3], ident=ring_spec[3], create=False)
        except (RingError, ValueError, OSError) as exc:  # the parent runs without it and says so
            log.warning("cannot map the step ring: %s", exc)
    zctx = zmq.Context()
    pull = zctx.socket(zmq.PAIR)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, int(HEALTH_EVERY * 1000))  # a blocking receive that wakes for the health report
    pull.connect(endpoint)
    pull.send(b"hello")  # the parent removes the socket file once this arrives
    conn.send(("ready", [s.name for s in sinks], ring is not None, frozen, timer_slack()))
    parent = mp.parent_process()
    errors, last_log = 0, -1e9
    reported, last_report = b"", -1e9
    try:
        while True:
            if health is not None and time.monotonic() - last_report >= HEALTH_EVERY:
                reported, last_report = _report(health, fan, reported), time.monotonic()
            try:  # one call per item: Socket.poll builds a Poller every time
                message = pull.recv(copy=False)
            except zmq.Again:
                if parent is not None and not parent.is_alive():
                    break
                continue
            try:
                frames = split_frames(message.buffer)  # views of the message: the arrays are not copied
                tag = bytes(frames[0])
                if tag == _CLOSE:
                    break
                if tag == _FLUSH:
                    conn.send(("flushed", bytes(frames[1])))
                    continue
                if tag == _STAGED:
                    item = _landed(ring, decode_staged(frames[1:]), staged_recipe)
                else:
                    item = decode_item(frames[1:])  # a Packet, or an allow-listed recipe
                packet = item() if isinstance(item, partial) else item
                if packet is not None:  # a recipe may find nothing to send (a timeline of no steps)
                    fan.publish(packet)
            except Exception as exc:  # one bad item must not stop the stream
                errors += 1
                if time.monotonic() - last_log > 30.0:
                    log.error("sink process: an item failed (%d so far): %r", errors, exc)
                    last_log = time.monotonic()
    finally:
        fan.close()
        pull.close(linger=0)
        zctx.term()
        if ring is not None:
            ring.close()


def _landed(ring: Ring | None, staged: Staged, recipe: Callable[[Staged, Any], partial]) -> partial:
    """The recipe of a staged item once its values have landed in ``ring`` (copied out: the slot
    is free again); ValueError if they are not for this ring or never land."""
    slot = staged.slot
    if ring is None or slot.ring != ring.ident:
        raise ValueError(f"step {staged.step}'s values are in ring {slot.ring}, which this process has not mapped")
    if not ring.wait(slot.index, slot.seq, STAGED_TIMEOUT):
        ring.release(slot.index, slot.seq)
        raise ValueError(f"step {staged.step}'s values did not land within {STAGED_TIMEOUT:.0f}s")
    return recipe(staged, ring.read(slot.index, slot.seq, staged.nbytes, np.dtype(np.uint8)))
