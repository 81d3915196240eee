"""Per-word measures of a step's maps (numpy): what the OSC stream sends and export writes.

One definition for both (the live stream and the offline CSV must agree), kept with the other
pure functions over maps.
"""

from __future__ import annotations

import numpy as np


def word_measures(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-map mass, normalised entropy and centroid from ``maps [N, H, W]`` in [0, 1].

    mass = mean value; entropy = Shannon entropy of the map as a distribution / log(H*W)
    (0 = one hot pixel, 1 = flat); centroid (x, y) in [0, 1], y = 0 at the top row.
    """
    m = np.clip(np.asarray(maps, dtype=np.float32), 0.0, None)  # [N, H, W]
    n, h, w = m.shape
    total = m.reshape(n, -1).sum(1)  # [N]
    p = m.reshape(n, -1) / np.maximum(total, 1e-12)[:, None]
    ent = -(p * np.log(np.maximum(p, 1e-12))).sum(1) / np.log(max(h * w, 2))
    ys, xs = (np.arange(h, dtype=np.float32) + 0.5) / h, (np.arange(w, dtype=np.float32) + 0.5) / w
    pm = p.reshape(n, h, w)
    cx = (pm.sum(1) * xs).sum(1)
    cy = (pm.sum(2) * ys).sum(1)
    empty = total <= 1e-12
    ent[empty], cx[empty], cy[empty] = 0.0, 0.5, 0.5
    return {"mass": m.reshape(n, -1).mean(1), "entropy": ent, "cx": cx, "cy": cy}
