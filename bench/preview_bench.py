#!/usr/bin/env python
"""Preview benchmark: particles x frames per second, headless (EGL), per particle-update path.

One frame = update(1/60 s) + draw('particles') into the renderer's framebuffer, timed with
ctx.finish() so GPU/llvmpipe work is counted. 'readback_fps' adds the uint8 read-back that PNG
or video output needs. The last line printed is JSON.

    python bench/preview_bench.py                       # 65,536 particles, both paths
    python bench/preview_bench.py --particles 1000000 --frames 300 --paths compute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def inputs(n=64):
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / n
    mask = np.exp(-((xx - 0.35) ** 2 + (yy - 0.45) ** 2) / 0.02) + 0.7 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.7) ** 2) / 0.008)
    mask = (mask / mask.max()).astype(np.float32)
    img = (np.stack([xx, yy, 0.5 + 0.5 * np.sin(9 * xx)], -1) * 255).astype(np.uint8)
    return mask, img


def bench_path(ctx, path, args):
    from bridge.preview.renderer import PreviewRenderer
    r = PreviewRenderer(args.width, args.height, args.particles, ctx=ctx, prefer_compute=(path == "compute"))
    if r.backend_path != path:
        r.release()
        return {"path": path, "skipped": f"not available ({r.compute_error or 'GL < 4.3'})"}
    mask, img = inputs()
    r.set_inputs(mask, img, (0.1, 0.6, 0.3), {"step": 20, "total": 50, "phase": 1, "word": "bench"})
    for _ in range(args.warmup):
        r.update(1 / 60)
        r.draw("particles")
    r.finish()
    t0 = time.perf_counter()
    for _ in range(args.frames):
        r.update(1 / 60)
        r.draw("particles")
    r.finish()
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    nrb = max(1, args.frames // 4)
    for _ in range(nrb):
        r.update(1 / 60)
        r.render("particles")
    dt_rb = time.perf_counter() - t1
    fps = args.frames / dt
    out = {"path": path, "particles": args.particles, "frames": args.frames, "fps": round(fps, 2),
           "ms_per_frame": round(1000 / fps, 3), "particles_x_fps": round(args.particles * fps),
           "readback_fps": round(nrb / dt_rb, 2)}
    r.release()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int, default=65536)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--paths", default="compute,transform_feedback",
                    help="comma-separated: compute, transform_feedback")
    args = ap.parse_args(argv)

    from bridge.preview.renderer import create_context
    ctx = create_context()
    info = {"gl_renderer": ctx.info.get("GL_RENDERER"), "gl_version": ctx.info.get("GL_VERSION")}
    print(f"# {info['gl_renderer']} | {info['gl_version']} | {args.particles} particles, "
          f"{args.width}x{args.height}, {args.frames} frames")
    results = []
    for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
        res = bench_path(ctx, path, args)
        results.append(res)
        if "skipped" in res:
            print(f"{path:>20}: skipped, {res['skipped']}")
        else:
            print(f"{path:>20}: {res['fps']:8.1f} fps  ({res['ms_per_frame']:.2f} ms/frame, "
                  f"{res['particles_x_fps']:,} particles*fps; with read-back {res['readback_fps']:.1f} fps)")
    print(json.dumps({"bench": "preview", **info, "width": args.width, "height": args.height,
                      "particles": args.particles, "results": results}))


if __name__ == "__main__":
    main()
