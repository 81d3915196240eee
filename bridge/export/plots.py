"""Timeline plots: one line per word over the steps, one PNG per measure (matplotlib, Agg)."""

from __future__ import annotations

import io

import numpy as np

PHASE_COLOURS = ("#d9d9d9", "#c6dbef", "#fde0c5")  # noise, structure, detail
PHASE_LABELS = ("noise", "structure", "detail")
TITLES = {"mass": "mean attention (mass)", "entropy": "spatial entropy (0 focused, 1 flat)",
          "peak": "peak value", "auc_so_far": "area under the mass curve so far"}


def line_styles(n: int) -> list[tuple[tuple[float, ...], str]]:
    """``(rgba, linestyle)`` for ``n`` lines, no two alike: tab10 up to 10 words, tab20 beyond,
    dashed after 20 (matplotlib's default cycle repeats after 10, and prompts often have 11+ words)."""
    from matplotlib import colormaps  # noqa: PLC0415

    palette = colormaps["tab10" if n <= 10 else "tab20"]
    return [(tuple(palette(j % palette.N)), ("-", "--", ":")[min(j // palette.N, 2)]) for j in range(n)]


def timeline_png(steps: np.ndarray, values: np.ndarray, words: list[str], measure: str,
                 phases: np.ndarray | None = None, title: str | None = None) -> bytes:
    """PNG bytes of ``values [T, N]`` against ``steps [T]``, a line per word, phases shaded."""
    try:
        import matplotlib  # noqa: PLC0415 (optional dependency, only for --plots)

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("timeline plots need matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if phases is not None and len(phases) == len(steps) and len(steps):
            seen: set[int] = set()
            for i, (s, ph) in enumerate(zip(steps, phases)):
                ph = int(ph) if 0 <= int(ph) < 3 else 0
                right = steps[i + 1] if i + 1 < len(steps) else s + 1
                ax.axvspan(s - 0.5, right - 0.5, color=PHASE_COLOURS[ph], lw=0,
                           label=f"phase: {PHASE_LABELS[ph]}" if ph not in seen else None, zorder=0)
                seen.add(ph)
        for j, (word, (colour, dashes)) in enumerate(zip(words, line_styles(len(words)))):
            ax.plot(steps, values[:, j], marker="o", ms=3, lw=1.8, label=word, zorder=2, color=colour, linestyle=dashes)
        ax.set_xlabel("step")
        ax.set_ylabel(measure)
        ax.set_title(title or TITLES.get(measure, measure))
        ax.grid(True, alpha=0.3, zorder=1)
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
