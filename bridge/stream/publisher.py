"""The Publisher protocol: what the runner and the daemon hand their Packets to.

A publisher takes built Packets (``publish``) and *recipes* (``publish_recipe``): zero-argument
callables (a ``functools.partial`` of an allow-listed function, :mod:`bridge.item_codec`) that build a Packet (or None) from host arrays. A remote publisher
(``remote = True``, the :class:`~bridge.stream.process.PacketProcess`) runs recipes in the sink
process, so the phases and packing leave the model's process; a local one runs them where it is
called. The runner asks these declared members, never ``getattr``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from bridge.protocol import Packet

if TYPE_CHECKING:
    from bridge.stream.ring import Ring, Staged

#: A zero-argument callable that builds one Packet (or None: nothing to send); to cross to the sink
#: process it must be a ``functools.partial`` of a function in ``bridge.item_codec.recipes()``.
Recipe = Callable[[], "Packet | None"]


@runtime_checkable
class Publisher(Protocol):
    """Where Packets go. ``remote``: recipes run in another process (so ``auto`` phases go there)."""

    remote: bool

    def publish(self, packet: Packet) -> None: ...

    def publish_recipe(self, recipe: Recipe) -> None: ...

    def alive(self) -> bool:
        """Whether a publish returns at once (a remote child that is down restarts first)."""
        ...


@runtime_checkable
class StagingPublisher(Publisher, Protocol):
    """A remote Publisher whose sink process maps a :class:`~bridge.stream.ring.Ring`: the runner
    lands each step's maps in a slot and hands over a notice, so no thread of the model's process
    wakes per step. ``ring`` is None while there is none to use (it could not be made)."""

    @property
    def ring(self) -> "Ring | None": ...

    def publish_staged(self, staged: "Staged", wait: bool = True) -> bool:
        """Hand over the notice; with ``wait=False`` only if that needs no wait (a free lock, room
        in the channel, a live child), else nothing happens and False says so."""
        ...


class LocalPublisher:
    """A plain ``Callable[[Packet], None]`` (a list's ``append``, a test's recorder) as a Publisher."""

    remote = False

    def __init__(self, send: Callable[[Packet], None]) -> None:
        self._send = send

    def publish(self, packet: Packet) -> None:
        self._send(packet)

    def publish_recipe(self, recipe: Recipe) -> None:
        packet = recipe()
        if packet is not None:
            self._send(packet)

    def alive(self) -> bool:
        return True


def as_publisher(target: Publisher | Callable[[Packet], None]) -> Publisher:
    """``target`` itself if it is a Publisher, else a LocalPublisher around the callable."""
    return target if isinstance(target, Publisher) else LocalPublisher(target)
