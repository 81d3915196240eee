"""CPU thread counts: the default counts the CPUs other work leaves free; --threads wins."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from bridge import threads
from bridge.cli import main


@pytest.mark.parametrize("cpus,load,expected", [
    (2, 0.1, 2), (2, 0.9, 1), (2, 14.5, 1), (16, 0.0, 16), (16, 4.2, 12), (16, 40.0, 1), (8, None, 8), (1, 0.0, 1),
])
def test_default_threads_leaves_busy_cpus_alone(cpus, load, expected):
    assert threads.default_threads(cpus, load) == expected


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads, "load_average", lambda: 2.7)
    assert threads.configure_threads(None, "cpu") == 1 == torch.get_num_threads()
    monkeypatch.setattr(threads, "load_average", lambda: 0.4)
    assert threads.configure_threads(None, "cpu") == 4
    assert threads.configure_threads(3, "cpu") == 3 == torch.get_num_threads()
    torch.set_num_threads(2)
    assert threads.configure_threads(None, "cuda") == 2  # a GPU model keeps torch's count
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        threads.configure_threads(0, "cpu")


def test_record_takes_threads(tmp_path, restore_threads):
    rc = main(["record", "a red circle", "--model", "tiny", "--steps", "2", "--seed", "1", "--threads", "1",
               "-o", str(tmp_path / "t.stepx")])
    assert rc == 0 and torch.get_num_threads() == 1 and (tmp_path / "t.stepx").stat().st_size > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl's timer slack is Linux's")
def test_fine_timer_slack_is_the_calling_threads_own():
    """Set in one thread, it is that thread's (read back from the kernel); the others keep theirs."""
    seen: dict[str, int | None] = {}

    def fine() -> None:
        seen["before"] = threads.timer_slack()
        seen["set"] = threads.fine_timer_slack()
        seen["after"] = threads.timer_slack()

    main_before = threads.timer_slack()
    t = threading.Thread(target=fine)
    t.start()
    t.join()
    assert seen["set"] is True and seen["after"] == threads.FINE_SLACK_NS != seen["before"]
    assert threads.timer_slack() == main_before  # this thread's own slack is untouched
