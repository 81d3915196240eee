"""moderngl preview: particle / heat-map rendering of StabilityMasks, headless or windowed.

Independent of transports: feed it numpy arrays with :meth:`PreviewRenderer.set_inputs`.
moderngl is imported lazily so ``import bridge.preview`` works without it.
"""

from __future__ import annotations

__all__ = ["PreviewRenderer", "PreviewError", "open_writer", "FrameWriter", "load_shader", "SHADER_DIR"]


def __getattr__(name):
    if name in ("PreviewRenderer", "PreviewError"):
        from . import renderer
        return getattr(renderer, name)
    if name in ("open_writer", "FrameWriter"):
        from . import output
        return getattr(output, name)
    if name in ("load_shader", "SHADER_DIR"):
        from . import shaders
        return getattr(shaders, name)
    raise AttributeError(name)
