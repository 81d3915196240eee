"""Write preview frames (``uint8 [H, W, 3]``, row 0 = top) as a PNG sequence, a GIF or an MP4.

``open_writer(path, fps=30)`` picks the format from the path:
  * a folder (no suffix) or a pattern containing ``{`` (``out/frame_{:05d}.png``) -> PNG sequence
  * ``*.gif`` -> animated GIF (Pillow; frames are kept in memory until ``close()``)
  * ``*.mp4`` -> H.264 MP4 through imageio-ffmpeg (optional; a clear error when missing)
Writers are context managers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OutputError(RuntimeError):
    pass


def _check(frame) -> np.ndarray:
    f = np.asarray(frame)
    if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
        raise OutputError(f"frames must be uint8 [H, W, 3] (row 0 = top), got {f.dtype} {f.shape}")
    return np.ascontiguousarray(f)


class FrameWriter:
    def write(self, frame) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PngSequenceWriter(FrameWriter):
    def __init__(self, path: str | Path):
        path = str(path)
        if "{" in path:
            self.pattern = path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.pattern = str(Path(path) / "frame_{:05d}.png")
        self.count = 0
        self.paths: list[str] = []

    def write(self, frame) -> None:
        from PIL import Image
        p = self.pattern.format(self.count)
        Image.fromarray(_check(frame)).save(p)
        self.paths.append(p)
        self.count += 1


class GifWriter(FrameWriter):
    def __init__(self, path: str | Path, fps: float = 30.0, loop: int = 0):
        self.path, self.fps, self.loop = Path(path), float(fps), loop
        self.frames = []

    def write(self, frame) -> None:
        from PIL import Image
        self.frames.append(Image.fromarray(_check(frame)))

    def close(self) -> None:
        if not self.frames:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        first, rest = self.frames[0], self.frames[1:]
        first.save(self.path, save_all=True, append_images=rest, loop=self.loop,
                   duration=max(20, int(round(1000.0 / self.fps))), optimize=False)
        self.frames = []


class Mp4Writer(FrameWriter):
    def __init__(self, path: str | Path, fps: float = 30.0, quality: int = 7):
        try:
            import imageio_ffmpeg
        except ImportError as exc:
            raise OutputError(
                "MP4 output needs imageio-ffmpeg (pip install imageio-ffmpeg); it is not installed. "
                "Write a PNG sequence (a folder path) or a .gif instead.") from exc
        self._ffmpeg = imageio_ffmpeg
        self.path, self.fps, self.quality = Path(path), float(fps), quality
        self._gen = None
        self._size = None

    def write(self, frame) -> None:
        f = _check(frame)
        h, w = f.shape[:2]
        if self._gen is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = (w, h)
            self._gen = self._ffmpeg.write_frames(str(self.path), (w, h), fps=self.fps, quality=self.quality,
                                                  macro_block_size=1)
            self._gen.send(None)
        elif (w, h) != self._size:
            raise OutputError(f"MP4 frames must all be {self._size[0]}x{self._size[1]}, got {w}x{h}")
        self._gen.send(f)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


def open_writer(path: str | Path, fps: float = 30.0) -> FrameWriter:
    s = str(path)
    suffix = Path(s).suffix.lower()
    if suffix == ".gif":
        return GifWriter(s, fps)
    if suffix == ".mp4":
        return Mp4Writer(s, fps)
    if suffix == "" or "{" in s:
        return PngSequenceWriter(s)
    raise OutputError(f"cannot tell the output format of {s!r}: use a folder (PNG sequence), "
                      "a pattern like out/frame_{:05d}.png, a .gif or a .mp4 path")


def write_frames(frames, path: str | Path, fps: float = 30.0) -> None:
    with open_writer(path, fps) as w:
        for f in frames:
            w.write(f)
