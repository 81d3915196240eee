"""Render the piece's early / mid / late phase pictures from a trace with the moderngl preview.

The preview draws the TouchDesigner piece with the same shaders (particles_common.glsl,
particles_look.glsl, trails.glsl), so these pictures are what the TouchDesigner network shows::

    stepx record "a red circle above a blue square on a yellow background" --seed 3 -o out/demo.stepx
    python tools/piece_pictures.py out/demo.stepx docs/images --word circle

Writes piece_early.png, piece_mid.png, piece_late.png and piece_phases.png (the three side by side).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bridge.preview.player import PreviewLoop, PreviewPlayer
from bridge.preview.renderer import Camera, PreviewRenderer
from bridge.preview.source import TraceSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "td_components"))
from stepx_td.piece import PIECE_PARAMS

FPS = 30.0
PIECE = {p.name: p.default for p in PIECE_PARAMS}


def piece_camera() -> Camera:
    """The TouchDesigner piece's default view (stepx COMP: Camyaw, Campitch, Camdistance, Depthscale)."""
    return Camera(yaw=math.radians(PIECE["Camyaw"]), pitch=math.radians(PIECE["Campitch"]),
                  distance=PIECE["Camdistance"], depth_scale=PIECE["Depthscale"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("out_dir")
    ap.add_argument("--word", default=None)
    ap.add_argument("--steps-per-second", type=float, default=2.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--particles", type=int, default=120_000)
    ap.add_argument("--trails", type=float, default=PIECE["Trails"])
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    source = TraceSource(args.trace, fps=args.steps_per_second)
    player = PreviewPlayer(word=args.word)
    renderer = PreviewRenderer(args.size, args.size, args.particles, seed=1, camera=piece_camera(),
                               trails=args.trails, smoothing=0.6)  # 0.6 s = the receiver's Morph default
    loop = PreviewLoop(source, player, renderer)
    shots: dict[str, np.ndarray] = {}
    due: dict[str, int] = {}  # frame at which to shoot: a moment after the step arrived (morph, trails)
    settle = int(0.45 * FPS)
    frame = 0
    while len(shots) < 3 and frame < 20_000:
        loop.tick(1.0 / FPS)
        frame += 1
        picture = renderer.render("particles")  # every frame, as TouchDesigner cooks: trails need it
        hud = player.hud()
        step, total = hud.get("step"), hud.get("total")
        if step is not None and total:
            for name, at in (("early", max(1, round(0.12 * total))), ("mid", round(0.5 * total)), ("late", total - 1)):
                if step >= at:
                    due.setdefault(name, frame + (int(1.5 * FPS) if name == "late" else settle))
        for name, at_frame in due.items():
            if name not in shots and frame >= at_frame:
                shots[name] = picture
    renderer.release()
    tiles = []
    for name in ("early", "mid", "late"):
        Image.fromarray(shots[name]).save(out / f"piece_{name}.png")
        tiles.append(shots[name])
    strip = Image.fromarray(np.concatenate(tiles, axis=1))
    draw = ImageDraw.Draw(strip)
    for i, label in enumerate(("early: noise", "mid: structure", "late: detail")):
        draw.text((i * args.size + 10, args.size - 22), label, fill=(235, 235, 235))
    # 256-colour palette, dithered (no banding in the glow): about half the bytes for the docs
    palette = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    strip.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out / "piece_phases.png", optimize=True)
    print("wrote", *(str(out / f"piece_{n}.png") for n in ("early", "mid", "late", "phases")))


if __name__ == "__main__":
    main()
