"""PhaseFrame: what the phases stage produced for one step, on the device, with lazy
host views for packets (``scalars()`` for the header, ``arrays()`` for the arrays)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from .packing import pack_rgba, to_host
from .timeline import SERIES


@dataclass
class PhaseFrame:
    """One step's phases output. Device tensors stay usable directly (e.g. by a GPU preview).

    textures, settled, accumulated: ``[N+1, H, W]`` in [0, 1] (words in prompt order, global last).
    phase_maps: ``[3, H, W]`` the global view's accumulated map per phase (noise, structure, detail).
    live: ``[7 * N + 2 * (N + 1) + N]`` flat per-word measures (SERIES rows), then the per-view
    means of ``settled`` and of the texture, then each word's ``stable_since``; copied to the
    host once by ``scalars()``.
    """

    words: list[str]
    step: int
    total_steps: int
    progress: float
    phase: int
    phase_progress: float
    phase_weights: tuple[float, float, float]
    wind: float
    attraction: float
    normalisation: str
    textures: Tensor
    settled: Tensor
    accumulated: Tensor
    phase_maps: Tensor
    live: Tensor
    _scalars: dict[str, Any] | None = field(default=None, repr=False)

    def rgba(self) -> Tensor:
        """Packed RGBA on the device, ``[N+1, H, W, 4]`` (layout in packing.RGBA_CHANNELS)."""
        return pack_rgba(self.textures, self.settled, self.accumulated)

    def arrays(self, dtype: str = "float32") -> dict[str, np.ndarray]:
        """Host arrays after ONE device -> host copy: ``textures``, ``settled``, ``accumulated``
        ``[N+1, H, W]``; ``rgba`` ``[N+1, H, W, 4]``; ``phase_maps`` ``[3, H, W]``; all of ``dtype``
        (float32, float16, or uint8 = round(x * 255))."""
        return to_host(
            {
                "textures": self.textures,
                "settled": self.settled,
                "accumulated": self.accumulated,
                "rgba": self.rgba(),
                "phase_maps": self.phase_maps,
            },
            dtype,
        )

    def scalars(self) -> dict[str, Any]:
        """JSON-able header values (one device -> host copy of ``live``, cached)."""
        if self._scalars is None:
            n = len(self.words)
            live = self.live.cpu().numpy().astype(np.float64)  # [7N + 2(N+1) + N]
            rows = live[: len(SERIES) * n].reshape(len(SERIES), n)  # [7, N]
            settled_mean = live[len(SERIES) * n : len(SERIES) * n + n + 1]  # [N+1]
            texture_mean = live[len(SERIES) * n + n + 1 : len(SERIES) * n + 2 * (n + 1)]  # [N+1]
            stable_since = live[len(SERIES) * n + 2 * (n + 1) :]  # [N]

            def clean(values: np.ndarray) -> list[float | None]:
                return [v if math.isfinite(v) else None for v in values.tolist()]

            out: dict[str, Any] = {
                "step": self.step,
                "total_steps": self.total_steps,
                "progress": self.progress,
                "phase": self.phase,
                "phase_progress": self.phase_progress,
                "phase_weights": list(self.phase_weights),
                "words": list(self.words),
                "normalisation": self.normalisation,
            }
            for i, name in enumerate(SERIES):
                out[name] = clean(rows[i])
            out["settled"] = clean(settled_mean[:n])
            out["settled_global"] = float(settled_mean[n])
            # first step of each word's current stable streak (-1: changing); at the last step
            # it is the run's stabilisation step (bridge.phases.measures.update_stable_since)
            out["stable_since"] = [int(v) for v in stable_since.tolist()]
            stability = texture_mean  # mean StabilityMask per view
            chaos = 1.0 - texture_mean  # mean ChaosMask per view
            out["forces"] = {
                "wind": self.wind,
                "attraction": self.attraction,
                "chaos": float(self.wind * chaos[n]),
                "stability": float(self.attraction * stability[n]),
                "chaos_words": clean(self.wind * chaos[:n]),
                "stability_words": clean(self.attraction * stability[:n]),
            }
            self._scalars = out
        return _fresh(self._scalars)


def _fresh(value: Any) -> Any:
    """A copy of the scalars' dicts and lists (their leaves are immutable), so a caller may edit
    what ``scalars()`` returns; far cheaper than ``copy.deepcopy`` on the packet worker."""
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return list(value) if isinstance(value, list) else value
