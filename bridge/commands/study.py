"""``stepx study PROMPTS.txt --seeds N``: when does each element emerge? (docs/TIMELINES.md)

Runs every template of PROMPTS.txt (words tagged ``word/role``) with seeds 0..N-1, measures
each word and noun phrase by the phases' definitions (emergence, peak, localisation,
stabilisation, AUC), per UNet block too, and writes a report with bootstrap confidence
intervals: background vs objects vs details, attributes vs nouns. Ray runs the generations
when ``--workers`` > 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", metavar="PROMPTS.txt", help="one template per line, words tagged word/role (examples/study_prompts.txt)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per template (default 5)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--model", default=None, help="diffusers folder, hub id, 'tiny' or 'shapes-free' (the embedded ungrounded checkpoint); default: the embedded shapes model")
    p.add_argument("--upsample", choices=("bilinear", "bicubic"), default="bilinear",
                   help="how coarse layers' maps are upsampled (default bilinear; bicubic as DAAM)")
    p.add_argument("--workers", type=int, default=1, help="Ray workers (default 1: a plain loop in this process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--top-k", type=int, default=3, help="words per step in the top-k table (default 3)")
    p.add_argument("-o", "--out", required=True, help="report folder (refused if it already holds a report)")


def run(args: argparse.Namespace) -> int:
    from bridge.analysis.study import StudySettings, read_prompts, run_study, write_report

    if args.seeds < 1 or args.steps < 2 or args.workers < 1 or args.threads < 1 or args.top_k < 1:
        raise ValueError("--seeds, --workers, --threads and --top-k must be >= 1 and --steps >= 2")
    out = Path(args.out)
    if (out / "report.md").exists():
        raise ValueError(f"{out} already holds a study report; choose another --out (nothing is overwritten)")
    prompts = read_prompts(args.prompts)
    settings = StudySettings(model=args.model, steps=args.steps, guidance=args.guidance, upsample=args.upsample, threads=args.threads)
    total = len(prompts) * args.seeds
    done = [0]
    t0 = time.perf_counter()

    def progress(r) -> None:
        done[0] += 1
        print(f"[{done[0]}/{total}] seed {r.seed}: {r.prompt} ({r.seconds:.1f} s)", flush=True)

    results = run_study(settings, prompts, args.seeds, args.workers, progress)
    meta = {"model": args.model or "embedded shapes model", "templates": len(prompts), "seeds": args.seeds,
            "runs": len(results), "steps": args.steps, "guidance": args.guidance, "upsample": args.upsample,
            "workers": args.workers, "wall time (s)": round(time.perf_counter() - t0, 1)}
    files = write_report(results, out, meta, args.top_k)
    (out / "study.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(files) + 1} files under {out}; read {out / 'report.md'}")
    return 0
