"""numpy mirror of shaders/colormap.glsl (same polynomials), for tests and CPU-side use."""

from __future__ import annotations

import numpy as np

_INFERNO = np.array([
    (0.0002189403691192265, 0.001651004631001012, -0.01948089843709184),
    (0.1065134194856116, 0.5639564367884091, 3.932712388889277),
    (11.60249308247187, -3.972853965665698, -15.9423941062914),
    (-41.70399613139459, 17.43639888205313, 44.35414519872813),
    (77.162935699427, -33.40235894210092, -81.80730925738993),
    (-71.31942824499214, 32.62606426397723, 73.20951985803202),
    (25.13112622477341, -12.24266895238567, -23.07032500287172),
])
_TURBO = np.array([  # columns r, g, b; rows t^0 .. t^5
    (0.13572138, 0.09140261, 0.10667330),
    (4.61539260, 2.19418839, 12.64194608),
    (-42.66032258, 4.84296658, -60.58204836),
    (132.13108234, -14.18503333, 110.36276771),
    (-152.94239396, 4.27729857, -89.90310912),
    (59.28637943, 2.82956604, 27.34824973),
])
COLORMAPS = {"inferno": 0, "turbo": 1}


def colormap(t, name: str = "inferno") -> np.ndarray:
    """RGB floats in [0,1], shape ``t.shape + (3,)``."""
    coeffs = {"inferno": _INFERNO, "turbo": _TURBO}[name]
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)[..., None]
    acc = np.zeros(t.shape[:-1] + (3,))
    for i, c in enumerate(coeffs):
        acc = acc + c * t ** i
    return np.clip(acc, 0.0, 1.0)
