"""The long-lived heap: the loaded model's objects out of the cyclic collector's reach."""

from __future__ import annotations

import argparse
import atexit
import gc
import weakref

import pytest

from bridge import heap


@pytest.fixture
def unfrozen():
    """Hand every frozen object back to the collector after the test (the suite's process goes on)."""
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_freeze_heap_freezes_what_is_alive_and_still_collects_what_comes_after(unfrozen, monkeypatch) -> None:
    registered: list = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(heap, "_unfreeze_at_exit", False)
    kept = _Node()
    frozen = heap.freeze_heap()
    assert frozen == gc.get_freeze_count() > 1000  # this process's modules, functions, the node above
    assert not any(o is kept for o in gc.get_objects())  # a full collection no longer walks it
    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None  # made after the freeze: collected as before
    assert heap.freeze_heap() >= frozen and registered == [gc.unfreeze]  # handed back at exit, once however often called


def test_load_model_freezes_the_loaded_model(unfrozen) -> None:
    from bridge.commands.common import load_model
    from bridge.runner import denoiser

    gc.unfreeze()
    args = argparse.Namespace(device="cpu", model=None, dtype="auto", arch=None, model_config=None, threads=1)
    pipe, _ = load_model(args)
    weight = next(denoiser(pipe).parameters())
    assert gc.get_freeze_count() > 10_000
    assert not any(o is weight for o in gc.get_objects())  # the model's parameters: frozen
