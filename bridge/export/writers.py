"""File writers for exports (the I/O edge): PNG, GIF, CSV, JSON and ZIP."""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image


def slug(word: str, index: int) -> str:
    """File-name-safe name for a word, prefixed by its index so names never collide."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", word).strip("_") or "word"
    return f"{index:02d}_{s[:40]}"


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Save an RGB uint8 ``[h, w, 3]`` array (row 0 = top) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)
    return path


def frame_ms(fps: float) -> int:
    """GIF frame time: GIF stores hundredths of a second, so round to 10 ms (20 ms at least)."""
    return max(20, int(round(100.0 / fps)) * 10)


def write_gif(path: Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Looping GIF of RGB uint8 frames, ``fps`` frames per second (one adaptive palette per frame)."""
    imgs = [Image.fromarray(np.asarray(f, dtype=np.uint8)).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                                    dither=Image.Dither.NONE)
            for f in frames]
    if not imgs:
        raise ValueError(f"no frames for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=frame_ms(fps),
                 loop=0, disposal=1, optimize=False)
    return path


def write_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])
    return path


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_zip(path: Path, root: Path, files: Iterable[Path]) -> Path:
    """ZIP of ``files`` with names relative to ``root`` (PNG/GIF stored, text deflated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for f in sorted(set(files)):
            packed = f.suffix.lower() in (".png", ".gif")
            z.write(f, f.relative_to(root).as_posix(),
                    compress_type=zipfile.ZIP_STORED if packed else zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return path
