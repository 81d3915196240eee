"""The study's report: tables (CSV and Markdown) and plots answering "when does each element
emerge?", with bootstrap confidence intervals over generations (each (template, seed) run is
one resampling unit: words of one image are not independent)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from bridge.phases.measures import localisation_steps

from .prompts import ROLES
from .runs import RunResult, UnitCurves, top_k

#: Per-unit timing measures in the report, each a fraction of the run (step / (T-1)).
TIMINGS = ("emergence", "peak", "localised", "stabilised")
LOCALISED_LEVEL = 0.9


def unit_rows(result: RunResult, run_index: int, curves: UnitCurves) -> list[dict]:
    """One row per word (or phrase) of a run: timings as steps and fractions, AUC, entropy."""
    s = curves.summary
    last = max(result.steps - 1, 1)
    loc = localisation_steps(curves.agreement, s.steps, LOCALISED_LEVEL)
    rows = []
    for j, name in enumerate(curves.names):
        stab = int(s.stabilisation_step[j])
        steps = {"emergence": int(s.emergence_step[j]), "peak": int(s.peak_step[j]), "localised": int(loc[j]), "stabilised": stab}
        rows.append({
            "run": run_index, "prompt": result.prompt, "seed": result.seed, "index": j, "unit": name, "role": curves.roles[j],
            **{f"{k}_step": v for k, v in steps.items()},
            **{f"{k}_frac": (v / last if v >= 0 else float("nan")) for k, v in steps.items()},
            "auc": float(s.auc[j]), "peak_mass": float(s.peak_mass[j]),
            "mean_share": float(np.nanmean(s.series["share"][:, j])),
            "final_entropy": float(s.series["entropy"][-1, j]),
        })
    return rows


def bootstrap_mean(values: np.ndarray, groups: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (NaN skipped) and its 95% percentile interval, resampling ``groups``
    (run ids) with replacement. Returns (mean, low, high); NaNs if there is nothing."""
    ok = np.isfinite(values)
    values, groups = values[ok], groups[ok]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    ids = np.unique(groups)
    sums = np.array([values[groups == g].sum() for g in ids])
    counts = np.array([(groups == g).sum() for g in ids])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(reps, len(ids)))
    boot = sums[pick].sum(1) / np.maximum(counts[pick].sum(1), 1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(values.mean()), float(lo), float(hi)


def role_table(rows: Sequence[dict], measures: Sequence[str]) -> list[dict]:
    """Per role: n, and for each measure its mean with a bootstrap CI over runs."""
    out = []
    for role in ROLES:
        sel = [r for r in rows if r["role"] == role]
        if not sel:
            continue
        groups = np.array([r["run"] for r in sel])
        entry = {"role": role, "n": len(sel), "never_stable": sum(r["stabilised_step"] < 0 for r in sel)}
        for m in measures:
            entry[m] = bootstrap_mean(np.array([r[m] for r in sel], dtype=np.float64), groups)
        out.append(entry)
    return out


def attribute_vs_noun(rows: Sequence[dict], nouns: Sequence[str] = ("object", "detail")) -> dict[str, tuple[float, float, float]]:
    """Per timing: mean (attribute − its noun) in fractions of the run, over attribute–noun pairs
    of one phrase (the attribute followed, through attributes only, by a noun whose role is in
    ``nouns``), with a bootstrap CI over runs. Negative: the attribute comes first. ``rows``
    are :func:`unit_rows` of words (or words.csv read back with numbers)."""
    by_run: dict[int, list[dict]] = {}
    for r in rows:
        by_run.setdefault(int(r["run"]), []).append(r)
    diffs: dict[str, list[float]] = {k: [] for k in TIMINGS}
    groups: list[int] = []
    for run, units in by_run.items():
        units = sorted(units, key=lambda r: int(r["index"]))
        for j, u in enumerate(units):
            if u["role"] != "attribute":
                continue
            k = j + 1
            while k < len(units) and units[k]["role"] == "attribute":
                k += 1
            if k == len(units) or units[k]["role"] not in nouns:
                continue
            for t in TIMINGS:
                diffs[t].append(float(u[f"{t}_frac"]) - float(units[k][f"{t}_frac"]))
            groups.append(run)
    g = np.array(groups)
    return {t: bootstrap_mean(np.array(v, dtype=np.float64), g) for t, v in diffs.items()}


def _fmt(ci: tuple[float, float, float]) -> str:
    m, lo, hi = ci
    return "—" if not np.isfinite(m) else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"


def _write_csv(path: Path, rows: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path


def _role_curves(results: Sequence[RunResult], series: str, phrases: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per role: mean curve over steps with a bootstrap band over runs; mass is divided by each
    unit's peak (the curve's shape, not its scale); agreement is as is."""
    per: dict[str, list[tuple[int, np.ndarray]]] = {}
    for r_i, r in enumerate(results):
        c = r.phrases if phrases else r.words
        data = c.agreement if series == "agreement" else c.summary.series[series].astype(np.float64)  # [T, U]
        if series == "mass":
            data = data / np.maximum(data.max(axis=0, keepdims=True), 1e-30)
        for j, role in enumerate(c.roles):
            per.setdefault(role, []).append((r_i, data[:, j]))
    out = {}
    rng = np.random.default_rng(0)
    for role, items in per.items():
        runs = np.array([i for i, _ in items])
        curves = np.stack([v for _, v in items])  # [U, T]
        ids = np.unique(runs)
        by_run = np.stack([curves[runs == g].mean(0) for g in ids])  # [R, T]
        boot = by_run[rng.integers(0, len(ids), size=(1000, len(ids)))].mean(1)  # [1000, T]
        out[role] = (curves.mean(0), np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0))
    return out


def _plot_curves(curves: dict, title: str, ylabel: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for role in ROLES:
        if role not in curves:
            continue
        m, lo, hi = curves[role]
        x = np.arange(len(m))
        ax.plot(x, m, label=role)
        ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_timings(table: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    roles = [t["role"] for t in table]
    for k, timing in enumerate(TIMINGS):
        m = np.array([t[f"{timing}_frac"][0] for t in table])
        lo = np.array([t[f"{timing}_frac"][1] for t in table])
        hi = np.array([t[f"{timing}_frac"][2] for t in table])
        y = np.arange(len(roles)) + (k - 1.5) * 0.18
        # a percentile interval need not contain the mean with few runs: clip the bars at the mean
        xerr = np.nan_to_num(np.clip([m - lo, hi - m], 0.0, None))
        ax.errorbar(m, y, xerr=xerr, fmt="o", capsize=3, label=timing)
    ax.set_yticks(np.arange(len(roles)), roles)
    ax.set_xlabel("fraction of the run (step / (T-1)), mean and 95% bootstrap CI")
    ax.set_xlim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("when each kind of word emerges, peaks, localises, stabilises")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_blocks(results: Sequence[RunResult], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = sorted({b for r in results for b in r.block_mass})
    if not blocks:
        return None
    fig, axes = plt.subplots(1, len(blocks), figsize=(3 * len(blocks), 3), dpi=110, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, b in zip(axes, blocks):
        per: dict[str, list[np.ndarray]] = {}
        for r in results:
            if b not in r.block_mass:
                continue
            m = r.block_mass[b]
            m = m / np.maximum(m.max(axis=0, keepdims=True), 1e-30)
            for j, role in enumerate(r.words.roles):
                per.setdefault(role, []).append(m[:, j])
        for role in ROLES:
            if role in per:
                ax.plot(np.mean(per[role], axis=0), label=role)
        ax.set_title(b, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mass / its peak")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: Sequence[RunResult], out: Path, meta: dict, k: int = 3) -> list[Path]:
    """Write words.csv, phrases.csv, topk.csv, blocks.csv, layers.csv, plots/*.png and report.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    words = [row for i, r in enumerate(results) for row in unit_rows(r, i, r.words)]
    phrases = [row for i, r in enumerate(results) for row in unit_rows(r, i, r.phrases)]
    topk = [{"run": i, "prompt": r.prompt, "seed": r.seed, "step": s, "rank": rank + 1, "word": w, "share": v}
            for i, r in enumerate(results) for s, best in top_k(r.words, k) for rank, (w, v) in enumerate(best)]
    blocks = [{"run": i, "prompt": r.prompt, "seed": r.seed, "block": b, "step": t, "word": r.words.names[j],
               "role": r.words.roles[j], "mass": float(m[t, j])}
              for i, r in enumerate(results) for b, m in r.block_mass.items() for t in range(m.shape[0]) for j in range(m.shape[1])]
    layers = [{"run": i, "prompt": r.prompt, "seed": r.seed, "layer": name, "step": t, "word": r.words.names[j],
               "role": r.words.roles[j], "mass": float(m[t, j])}
              for i, r in enumerate(results) for name, m in r.layer_mass.items() for t in range(m.shape[0]) for j in range(m.shape[1])]
    files = [_write_csv(out / "words.csv", words), _write_csv(out / "layers.csv", layers), _write_csv(out / "phrases.csv", phrases),
             _write_csv(out / "topk.csv", topk), _write_csv(out / "blocks.csv", blocks)]
    measures = [f"{t}_frac" for t in TIMINGS] + ["mean_share", "final_entropy"]
    wt, pt = role_table(words, measures), role_table(phrases, measures)
    avn = {"object or detail": attribute_vs_noun(words), "background": attribute_vs_noun(words, ("background",))}
    plots = out / "plots"
    files.append(_plot_curves(_role_curves(results, "agreement"), "localisation: agreement of each step's map with the final map",
                              "1 − TV(p_t, p_T)", plots / "agreement.png"))
    files.append(_plot_curves(_role_curves(results, "mass"), "attention mass over steps (each word / its peak)", "mass / peak",
                              plots / "mass.png"))
    files.append(_plot_curves(_role_curves(results, "change"), "change of each word's layout per step", "TV(p_t, p_t−1)",
                              plots / "change.png"))
    files.append(_plot_curves(_role_curves(results, "agreement", phrases=True), "phrases: agreement with the final map",
                              "1 − TV(p_t, p_T)", plots / "phrases_agreement.png"))
    files.append(_plot_timings(wt, plots / "timings.png"))
    b = _plot_blocks(results, plots / "blocks.png")
    if b:
        files.append(b)

    md = io.StringIO()
    md.write("# Study: when does each element emerge?\n\n")
    for key, v in meta.items():
        md.write(f"- {key}: {v}\n")
    md.write(f"\nTimings are fractions of the run (step / (T−1)); mean and 95% bootstrap CI over runs. "
             f"`localised`: first step from which the map's layout agrees with the final one at ≥ {LOCALISED_LEVEL} "
             "(1 − total variation) at every later step; `stabilised`: first step from which the change per step stays "
             "below the stable threshold (docs/TIMELINES.md).\n\n")
    for title, table in (("Words by role", wt), ("Phrases by their noun's role", pt)):
        md.write(f"## {title}\n\n| role | n | never stable | " + " | ".join(measures) + " |\n|" + "---|" * (len(measures) + 3) + "\n")
        for t in table:
            md.write(f"| {t['role']} | {t['n']} | {t['never_stable']} | " + " | ".join(_fmt(t[m]) for m in measures) + " |\n")
        md.write("\n")
    md.write("## Attribute − noun (same phrase), fraction of the run\n\n| noun | " + " | ".join(TIMINGS) + " |\n|" +
             "---|" * (len(TIMINGS) + 1) + "\n")
    for noun, cis in avn.items():
        md.write(f"| {noun} | " + " | ".join(_fmt(cis[t]) for t in TIMINGS) + " |\n")
    if results:
        r0 = results[0]
        md.write(f"\n## Top-{k} words by share, run 0 (\"{r0.prompt}\", seed {r0.seed})\n\n| step | " +
                 " | ".join(f"#{i + 1}" for i in range(k)) + " |\n|" + "---|" * (k + 1) + "\n")
        for s, best in top_k(r0.words, k):
            md.write(f"| {s} | " + " | ".join(f"{w} {v:.2f}" for w, v in best) + " |\n")
    md.write("\n## Plots\n\n" + "".join(f"![{p.stem}](plots/{p.name})\n" for p in files if p.suffix == ".png"))
    files.append(out / "report.md")
    (out / "report.md").write_text(md.getvalue(), encoding="utf-8")
    return files
