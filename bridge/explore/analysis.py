"""The one seam between the explorer and the analysis packages it shows.

Text-guided detection and TITAN come from ``bridge.analysis.objects``; head relevance from
``bridge.analysis.relevance``. Those packages are optional here: when one is not importable in
this install (or lacks what the tab calls), its tab says so plainly and shows nothing made up.
Every call the tabs make goes through this module, so wiring a new API version touches only it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

#: tab -> (module, the functions the tab calls)
PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "objects": ("bridge.analysis.objects", ("detect", "titan")),
    "relevance": ("bridge.analysis.relevance", ("load_relevance", "concepts")),
}


class Unavailable(RuntimeError):
    """The analysis package a tab needs is not usable in this install; the message says why."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason}


def availability(tab: str) -> Availability:
    """Whether ``tab``'s package can be imported and offers what the tab calls."""
    module_name, needed = PACKAGES[tab]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return Availability(False, f"{module_name} is not installed in this environment ({exc.msg}); "
                                   f"this tab shows its results once it is")
    missing = [n for n in needed if not callable(getattr(module, n, None))]
    if missing:
        return Availability(False, f"{module_name} is installed but has no {', '.join(missing)}; "
                                   f"this explorer version cannot call it")
    return Availability(True, f"{module_name} is available")


def status() -> dict[str, dict[str, Any]]:
    return {tab: availability(tab).to_dict() for tab in PACKAGES}


def _module(tab: str) -> Any:
    got = availability(tab)
    if not got.available:
        raise Unavailable(got.reason)
    return importlib.import_module(PACKAGES[tab][0])


def detect(run: Any, words: list[str]) -> dict[str, Any]:
    """Text-guided detection over ``run`` for ``words`` (boxes, masks, COCO document)."""
    return _module("objects").detect(run, words)


def titan(run: Any) -> dict[str, Any]:
    """TITAN: the prompt's objects found automatically and annotated (boxes, masks, COCO document)."""
    return _module("objects").titan(run)


def concepts() -> list[str]:
    """Names of the head-relevance concepts the relevance package can load."""
    return list(_module("relevance").concepts())


def relevance(concept: str) -> dict[str, list[float]]:
    """A concept's head relevance vector, split by layer."""
    return dict(_module("relevance").load_relevance(concept))
