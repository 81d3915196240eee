"""The one seam between the StepX extensions and TouchDesigner's ``td`` module.

Why: the extensions must be testable where TouchDesigner cannot run. They never import
``td`` directly; they call ``get_td()``, which returns TouchDesigner's module inside TD and
whatever a test ``install()``-ed elsewhere (or None).
"""

from __future__ import annotations

from typing import Any

_installed: Any = None


def install(fake: Any) -> None:
    """Use ``fake`` as the ``td`` module (tests only); ``install(None)`` removes it."""
    global _installed
    _installed = fake


def get_td() -> Any:
    """TouchDesigner's ``td`` module, the installed fake, or None outside TD."""
    if _installed is not None:
        return _installed
    try:
        import td  # type: ignore[import-not-found]  # only exists inside TouchDesigner
    except ImportError:
        return None
    return td
