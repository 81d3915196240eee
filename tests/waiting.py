"""Waiting in tests without depending on wall-clock speed.

A test that waits for something that MUST happen (a reply, a packet, a file, a state) waits
generously and returns as soon as it happens: a busy CI machine may stall for seconds, a quiet
one pays nothing. Short waits are only for asserting that something did NOT happen (they can
pass falsely, never fail falsely).
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

#: how long a test waits for an event that must come (a hang guard, not a speed claim)
ARRIVAL_S = 30.0


def wait_until(predicate: Callable[[], T], timeout: float = ARRIVAL_S, what: str = "the condition",
               interval: float = 0.01) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if got := predicate():
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)
