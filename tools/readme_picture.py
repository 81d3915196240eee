"""Make docs/images/demo.png from a trace: step images on top, then where chosen words attend.

    python tools/readme_picture.py out/demo.stepx docs/images/demo.png circle square background
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw

from bridge.export import load_run, overlay
from bridge.export.render import resize_image
from bridge.trace import TraceReader

CELL, LABEL = 160, 110


def main(trace: str, out: str, *words: str) -> None:
    with TraceReader(trace) as reader:
        run = load_run(reader)
    n = len(run.steps)
    cols = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
    rows = [("step image", None)] + [(w, run.words.index(w)) for w in words]
    sheet = Image.new("RGB", (LABEL + CELL * len(cols), 24 + CELL * len(rows)), (18, 18, 24))
    draw = ImageDraw.Draw(sheet)
    for c, i in enumerate(cols):
        draw.text((LABEL + c * CELL + 6, 6), f"step {int(run.steps[i])}/{n - 1}", fill=(220, 220, 220))
    for r, (name, wi) in enumerate(rows):
        draw.text((8, 24 + r * CELL + CELL // 2 - 6), name if wi is None else f'"{name}"', fill=(220, 220, 220))
        for c, i in enumerate(cols):
            step = int(run.steps[i])
            image = run.final_image if i == n - 1 and run.final_image is not None else run.image_at(step)
            image = resize_image(image, (CELL, CELL))
            tile = image if wi is None else overlay(image, run.maps[i, wi], alpha=0.65)
            sheet.paste(Image.fromarray(np.asarray(tile)), (LABEL + c * CELL, 24 + r * CELL))
    sheet.save(out)
    print(out, sheet.size)


if __name__ == "__main__":
    main(*sys.argv[1:])
