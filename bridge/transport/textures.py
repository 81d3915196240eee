"""Texture senders: Spout (Windows), Syphon (macOS), NDI (cyndilib, where its wheels run).

Each backend's library is imported only when that sender is opened, so the package imports
on any machine. On a platform where a backend cannot run, ``open_texture_sender`` raises
``TransportUnavailable`` naming the backends that can. The sender is a fan-out Sink
(``encoding = None``): it takes the ``image`` array of ``image`` packets (uint8 [h, w, 3|4],
row 0 = top) and ships it as an RGBA frame.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

import numpy as np

#: backend -> (platforms it runs on, pip package, import name)
BACKENDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "spout": (("win32",), "SpoutGL", "SpoutGL"),
    "syphon": (("darwin",), "syphon-python", "syphon"),
    "ndi": (("win32", "darwin", "linux"), "cyndilib", "cyndilib"),
}


class TransportUnavailable(RuntimeError):
    """A texture backend cannot run here; the message names the ones that can."""


def _importable(mod: str) -> bool:
    try:
        importlib.import_module(mod)
    except Exception:
        return False
    return True


def available(platform: str | None = None, importer: Callable[[str], bool] = _importable) -> list[str]:
    """Backends that can run on ``platform`` (default: this one) with their library installed."""
    plat = platform or sys.platform
    return [b for b, (plats, _pip, mod) in BACKENDS.items() if plat in plats and importer(mod)]


def check(backend: str, platform: str | None = None, importer: Callable[[str], bool] = _importable) -> None:
    """Raise TransportUnavailable unless ``backend`` can run here."""
    plat = platform or sys.platform
    if backend not in BACKENDS:
        raise TransportUnavailable(f"unknown texture backend {backend!r}; known: {', '.join(BACKENDS)}")
    plats, pip, mod = BACKENDS[backend]
    can = available(plat, importer)
    others = ", ".join(can + ["zmq"]) if can else "zmq (textures as wire packets)"
    if plat not in plats:
        raise TransportUnavailable(f"{backend} runs only on {', '.join(plats)}; this is {plat}. "
                                   f"Texture transports that can run here: {others}")
    if not importer(mod):
        raise TransportUnavailable(f"{backend} needs the '{pip}' package (pip install {pip}); "
                                   f"texture transports that can run here: {others}")


def to_rgba(image: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3|4] (or float in [0, 1]) -> contiguous uint8 [h, w, 4], row 0 = top."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 3:
        img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return np.ascontiguousarray(img)


class NdiSender:
    """NDI video sender (cyndilib). ``send_rgba(frame uint8 [h, w, 4])``; size fixed at first frame."""

    inline, lossless = False, False  # Sink: on its own thread, latest frames

    def __init__(self, name: str = "StepX", fps: int = 30) -> None:
        check("ndi")
        from cyndilib.sender import Sender  # noqa: PLC0415 (lazy on purpose)
        from cyndilib.video_frame import VideoSendFrame  # noqa: PLC0415
        from cyndilib.wrapper.ndi_structs import FourCC  # noqa: PLC0415

        self.name, self.encoding = f"ndi:{name}", None
        self._fps = fps
        self._sender = Sender(name)
        self._vf = VideoSendFrame()
        self._vf.set_fourcc(FourCC.RGBA)
        self._size: tuple[int, int] | None = None

    def send_rgba(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self._size is None:
            self._vf.set_resolution(w, h)
            self._vf.set_frame_rate(self._fps)
            self._sender.set_video_frame(self._vf)
            self._sender.open()
            self._size = (w, h)
        elif self._size != (w, h):
            raise ValueError(f"NDI frame size changed from {self._size} to {(w, h)}; open a new sender")
        self._sender.write_video(frame.reshape(-1))

    def send(self, packet: Any, data: bytes | None = None) -> None:
        """Sink interface: forward the ``image`` array of image packets."""
        if packet.kind == "image" and "image" in packet.arrays:
            self.send_rgba(to_rgba(packet.arrays["image"]))

    def close(self) -> None:
        if self._size is not None:
            self._sender.close()


class _LazyPlatformSender:
    """Spout / Syphon: checked at construction (import or a clear error), drawn via the lib."""

    backend = ""
    inline, lossless = False, False  # Sink: on its own thread, latest frames

    def __init__(self, name: str = "StepX") -> None:
        check(self.backend)
        self.name, self.encoding = f"{self.backend}:{name}", None
        self._server_name = name
        self._impl: Any = None

    def send(self, packet: Any, data: bytes | None = None) -> None:
        if packet.kind == "image" and "image" in packet.arrays:
            self.send_rgba(to_rgba(packet.arrays["image"]))

    def send_rgba(self, frame: np.ndarray) -> None:  # pragma: no cover - needs Windows/macOS
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - needs Windows/macOS
        self._impl = None


class SpoutSender(_LazyPlatformSender):  # pragma: no cover - Windows only
    """Spout sender via SpoutGL (needs an OpenGL context on Windows)."""

    backend = "spout"

    def send_rgba(self, frame: np.ndarray) -> None:
        import SpoutGL  # noqa: PLC0415
        from OpenGL import GL  # noqa: PLC0415

        if self._impl is None:
            self._impl = SpoutGL.SpoutSender()
            self._impl.setSenderName(self._server_name)
        h, w = frame.shape[:2]
        # Spout's origin is top-left like ours: no flip.
        self._impl.sendImage(frame.tobytes(), w, h, GL.GL_RGBA, False, 0)


class SyphonSender(_LazyPlatformSender):  # pragma: no cover - macOS only
    """Syphon sender via syphon-python (Metal server)."""

    backend = "syphon"

    def send_rgba(self, frame: np.ndarray) -> None:
        import syphon  # noqa: PLC0415
        from syphon.utils.numpy import copy_image_to_mtl_texture  # noqa: PLC0415
        from syphon.utils.raw import create_mtl_texture  # noqa: PLC0415

        h, w = frame.shape[:2]
        if self._impl is None:
            self._impl = syphon.SyphonMetalServer(self._server_name)
            self._tex = create_mtl_texture(self._impl.device, w, h)
        copy_image_to_mtl_texture(frame, self._tex)
        self._impl.publish_frame_texture(self._tex)


def open_texture_sender(backend: str, name: str = "StepX") -> Any:
    """Open a texture sender Sink for ``backend`` (spout, syphon, ndi) or raise TransportUnavailable."""
    check(backend)
    return {"spout": SpoutSender, "syphon": SyphonSender, "ndi": NdiSender}[backend](name)
