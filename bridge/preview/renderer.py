"""PreviewRenderer: StabilityMask particles, heat-map overlay and step image, rendered with moderngl.

Independent of any transport: feed numpy arrays with :meth:`PreviewRenderer.set_inputs`,
advance with :meth:`update`, get ``uint8 [H, W, 3]`` frames (row 0 = top) from :meth:`render`.

Orientation (explicit, tested): numpy rows are uploaded to textures unflipped, so texture
``v = 0`` holds array row 0 = the TOP of the image, and the shaders treat ``v`` as "from the
top" (particle y, fullscreen ``v_uv``). The framebuffer's row 0 is the BOTTOM, so
:meth:`render` flips rows once on read-back.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Concatenate, ParamSpec, Sequence, TypeVar

import numpy as np

from bridge.protocol import PHASE_NAMES

from .shaders import load_shader

if TYPE_CHECKING:  # moderngl loads (and needs a GL library) only when a renderer is made
    import moderngl

P = ParamSpec("P")
R = TypeVar("R")

VIEWS = ("particles", "overlay", "image")
_LOCAL_SIZE = 256
_MAX_DT = 1.0 / 30.0
IMAGE_GLOW = 0.1  # step image behind the particles in the detail phase (the TD piece's Glow default)
_FLOATS = 12  # particle state: 3 x vec4, see shaders/particles_common.glsl


class PreviewError(RuntimeError):
    """A preview problem with a message that says what was wrong and what would be right."""


@dataclass
class ForceParams:
    """Force-model constants (units: image UV and seconds). See docs/PREVIEW.md."""
    wind: float = 0.9            # wind acceleration, UV/s^2
    wind_scale: float = 3.0      # curl-noise cells across the image
    wind_dir: tuple = (0.05, -0.02)  # constant drift, UV/s^2 (y down)
    chaos_floor: float = 0.2     # minimum ChaosMask once structure forms
    attraction: float = 1.6      # attraction acceleration, UV/s^2
    damping: float = 2.0         # base damping, 1/s
    grip: float = 4.0            # extra damping where StabilityMask = 1, 1/s
    depth_rate: float = 3.0      # depth smoothing, 1/s


@dataclass
class Camera:
    yaw: float = 0.0       # radians, around the image's vertical axis
    pitch: float = 0.0     # radians, around the image's horizontal axis
    distance: float = 2.5  # camera distance; the image plane fills the view at depth 0
    depth_scale: float = 0.35  # world height of depth 1.0 (plane spans [-1, 1])


def _load_triton_before_llvmpipe() -> None:
    """Import Triton now, where it is installed and not yet loaded.

    Its ``libtriton`` carries its own LLVM. Loaded after Mesa's llvmpipe has loaded the system's
    libLLVM, it kills the process (a segfault while it loads). The other order works. diffusers
    and the fused MM-DiT map kernel import Triton, so a process that opens the preview and then
    loads a model would otherwise die there (seen with Mesa 22 / LLVM 15 and Triton 3)."""
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken Triton is the maps' fallback's business, not the preview's
        pass


def create_context(require: int | tuple[int, ...] = (430, 330)) -> moderngl.Context:
    """Standalone headless context: EGL first (Mesa llvmpipe / NVIDIA), then moderngl's default.

    Versions are tried in order: NVIDIA's EGL gives exactly the version asked for, so asking
    for 4.3 first is what makes the compute-shader path available there.
    """
    import moderngl

    _load_triton_before_llvmpipe()
    errors = []
    for version in ((require,) if isinstance(require, int) else require):
        for kwargs in ({"backend": "egl"}, {}):
            try:
                # moderngl's stub types each **settings value as a Dict (it is a str: backend="egl")
                return moderngl.create_standalone_context(require=version, **kwargs)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - report every backend's failure
                errors.append(f"{kwargs.get('backend', 'default')} GL {version}: {exc}")
    raise PreviewError(
        "could not create an OpenGL >= 3.3 context (" + "; ".join(errors) + "). Headless Linux needs "
        "EGL + Mesa: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri (llvmpipe on CPU), or an "
        "NVIDIA driver with EGL.")


def _perspective(fovy: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / math.tan(fovy / 2.0)
    return np.array([[f, 0, 0, 0], [0, f, 0, 0],
                     [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
                     [0, 0, -1, 0]], dtype=np.float64)


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]], dtype=np.float64)


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]], dtype=np.float64)


def _translate(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def _current(method: Callable[Concatenate[PreviewRenderer, P], R]) -> Callable[Concatenate[PreviewRenderer, P], R]:
    """Make an owned standalone context current around ``method`` (several renderers may coexist)."""
    import functools

    @functools.wraps(method)
    def wrapper(self: PreviewRenderer, *args: P.args, **kwargs: P.kwargs) -> R:
        if not self._own_ctx or self._in_ctx:
            return method(self, *args, **kwargs)
        self._in_ctx = True
        try:
            with self.ctx:
                return method(self, *args, **kwargs)
        finally:
            self._in_ctx = False
    return wrapper


class PreviewRenderer:
    """Particles / heat-map overlay / step image, headless (EGL) or on a given context.

    Parameters: ``width``, ``height`` of the frame; ``particles`` count; ``ctx`` an existing
    moderngl context (else a standalone EGL one is created and owned); ``prefer_compute`` uses the
    GL 4.3 compute shader when available, else transform feedback (GL 3.3). ``seed`` makes the
    initial particles deterministic. ``smoothing`` is the time constant (s) for crossfading masks,
    images and phase weights between steps. ``trails`` in [0, 1) is the per-frame decay of the
    particle trails (0 = none; shaders/trails.glsl, the same maths as TouchDesigner's trails).
    """

    # class defaults: _current and release() may run on a renderer whose __init__ stopped early
    _own_ctx = False  # the renderer created its context (and makes it current, releases it)
    _in_ctx = False  # inside a _current method: the context is current already
    _released = False

    def __init__(self, width: int = 512, height: int = 512, particles: int = 65536, ctx: moderngl.Context | None = None,
                 prefer_compute: bool = True, *, seed: int = 0, shader_dir: str | Path | None = None,
                 colormap: str = "inferno", overlay_alpha: float = 0.6, smoothing: float = 0.15,
                 params: ForceParams | None = None, camera: Camera | None = None,
                 point_size: float | None = None, background: Sequence[float] = (0.02, 0.02, 0.035),
                 trails: float = 0.0) -> None:
        import moderngl
        self._mgl = moderngl
        if width < 16 or height < 16:
            raise PreviewError(f"frame size must be at least 16x16, got {width}x{height}")
        if particles < 1:
            raise PreviewError(f"particles must be >= 1, got {particles}")
        if colormap not in ("inferno", "turbo"):
            raise PreviewError(f"colormap must be 'inferno' or 'turbo', got {colormap!r}")
        self.width, self.height, self.count = int(width), int(height), int(particles)
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else create_context()
        self.shader_dir = shader_dir
        self.params = params or ForceParams()
        self.camera = camera or Camera()
        self.colormap = colormap
        self.overlay_alpha = float(overlay_alpha)
        self.smoothing = float(smoothing)
        self.point_size = float(point_size) if point_size else max(1.5, 2.4 * self.height / 512.0)
        self.background = tuple(float(c) for c in background)
        if not 0.0 <= float(trails) < 1.0:
            raise PreviewError(f"trails must be a decay in [0, 1), got {trails!r}")
        self.trails = float(trails)
        self.time = 0.0
        self.compute_error: str | None = None

        # programs
        src = lambda name: load_shader(name, shader_dir)  # noqa: E731
        self._cs: moderngl.ComputeShader | None = None
        if prefer_compute and self.ctx.version_code >= 430:
            try:
                self._cs = self.ctx.compute_shader(src("particles_update.comp"))
            except Exception as exc:  # noqa: BLE001 - fall back and say why
                self.compute_error = str(exc)
        self.backend_path = "compute" if self._cs is not None else "transform_feedback"
        if self._cs is None:
            self._tf = self.ctx.program(vertex_shader=src("particles_update_tf.vert"),
                                        varyings=("out_a", "out_b", "out_c"))
        self._render_prog = self.ctx.program(vertex_shader=src("particles_render.vert"),
                                             fragment_shader=src("particles_render.frag"))
        self._screen_prog = self.ctx.program(vertex_shader=src("fullscreen.vert"),
                                             fragment_shader=src("overlay.frag"))
        self._hud_prog = self.ctx.program(vertex_shader=src("fullscreen.vert"),
                                          fragment_shader=src("hud.frag"))
        self._trail_prog = self.ctx.program(vertex_shader=src("fullscreen.vert"),
                                            fragment_shader=src("trails.frag"))
        self._trail_vao = self.ctx.vertex_array(self._trail_prog, [])
        self._screen_vao = self.ctx.vertex_array(self._screen_prog, [])
        self._hud_vao = self.ctx.vertex_array(self._hud_prog, [])

        # target
        self._color = self.ctx.texture((self.width, self.height), 4)
        self.fbo = self.ctx.framebuffer(color_attachments=[self._color])
        # trails: this frame's particles (premultiplied) and two trail images (ping-pong)
        size = (self.width, self.height)
        self._trail_tex = [self.ctx.texture(size, 4, dtype="f2") for _ in range(3)]
        self._trail_fbo = [self.ctx.framebuffer(color_attachments=[t]) for t in self._trail_tex]
        self._trail_cur = 0  # index of the newest trail image; 2 holds this frame's particles
        for f in self._trail_fbo:
            f.clear(0.0, 0.0, 0.0, 0.0)

        # inputs (owned textures)
        self._mask_tex = self._mask_texture(64, 64)  # replaced when a mask of another size comes
        self._mask_cur: np.ndarray | None = None  # [h, w] float32, on the texture now
        self._mask_target: np.ndarray | None = None  # [h, w] float32, crossfaded towards
        self._image_tex: moderngl.Texture | None = None
        self._image_cur: np.ndarray | None = None  # [h, w, 3] float32, on the texture now
        self._image_target: np.ndarray | None = None  # [h, w, 3] float32, crossfaded towards
        self._has_image = False
        self._blank_image = self.ctx.texture((1, 1), 3, bytes(3))
        self._hud_tex: moderngl.Texture | None = None
        self._hud_size = (0, 0)
        self.hud: dict | None = None
        self._phase_cur: np.ndarray | None = None  # [3] noise, structure, detail
        self._phase_target = np.array([1.0, 0.0, 0.0])
        self._upload_mask(np.zeros((64, 64), np.float32))

        # particles
        self._buffers: list[moderngl.Buffer] = []  # particle state; two (ping-pong) for transform feedback
        self.reset(seed)

    # ------------------------------------------------------------------ state
    @_current
    def reset(self, seed: int = 0) -> None:
        """Re-seed the particles uniformly over the image, at rest, depth 0."""
        rng = np.random.default_rng(seed)
        state = np.zeros((self.count, _FLOATS), np.float32)
        state[:, 0:2] = rng.random((self.count, 2), dtype=np.float32)
        state[:, 5] = rng.random(self.count, dtype=np.float32)
        for b in self._buffers:
            b.release()
        self._buffers = [self.ctx.buffer(state.tobytes())]
        if self._cs is None:
            self._buffers.append(self.ctx.buffer(reserve=state.nbytes))
            self._tf_vaos = [self.ctx.vertex_array(self._tf, [(b, "4f 4f 4f", "in_a", "in_b", "in_c")])
                             for b in self._buffers]
        self._render_vaos = [self.ctx.vertex_array(self._render_prog, [(b, "4f 4f 4f", "in_a", "in_b", "in_c")])
                             for b in self._buffers]
        self._cur = 0
        self.time = 0.0

    @_current
    def state(self) -> np.ndarray:
        """Particle state ``float32 [N, 12]``: x, y (UV, y = 0 top), vx, vy, depth, seed, S, age, r, g, b, has_image."""
        return np.frombuffer(self._buffers[self._cur].read(), np.float32).reshape(self.count, _FLOATS).copy()

    def positions(self) -> np.ndarray:
        """Particle positions ``float32 [N, 2]`` in image UV, (x, y) with y = 0 the top row."""
        return self.state()[:, :2]

    @property
    def phase_weights(self) -> np.ndarray:
        return self._phase_now().copy()

    def _phase_now(self) -> np.ndarray:
        """The phase weights in effect: crossfading, or the target before the first :meth:`set_inputs`."""
        return self._phase_cur if self._phase_cur is not None else self._phase_target

    # ------------------------------------------------------------------ inputs
    @_current
    def set_inputs(self, stability: np.ndarray, image: np.ndarray | None = None,
                   phase_weights: Sequence[float] = (1.0, 0.0, 0.0), hud: dict | None = None,
                   *, immediate: bool = False) -> None:
        """Set the focus word's StabilityMask, the step image, phase weights and HUD.

        ``stability``: ``[H, W]`` floats in [0, 1] (clipped), row 0 = top of the image.
        ``image``: ``uint8 [h, w, 3]`` (or 4, alpha dropped), row 0 = top, or None.
        ``phase_weights``: (noise, structure, detail), normalised to sum 1.
        ``hud``: ``{"step": int (0-based), "total": int, "phase": int|str, "word": str}`` or None.
        Changes crossfade over ``smoothing`` seconds of :meth:`update` unless ``immediate``.
        """
        mask = np.asarray(stability)
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim != 2 or mask.shape[0] < 2 or mask.shape[1] < 2:
            raise PreviewError(f"stability must be a 2-D [H, W] array (one word's map), got shape {mask.shape}")
        mask = np.nan_to_num(mask.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        mask = np.ascontiguousarray(np.clip(mask, 0.0, 1.0))
        w = np.asarray(phase_weights, dtype=np.float64).reshape(-1)
        if w.shape != (3,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise PreviewError(f"phase_weights must be 3 non-negative floats (noise, structure, detail), got {phase_weights!r}")
        w = w / w.sum() if w.sum() > 0 else np.array([1.0, 0.0, 0.0])

        first = self._mask_target is None or self._phase_cur is None
        snap = immediate or first or self.smoothing <= 0
        self._mask_target = mask
        if snap or self._mask_cur is None or self._mask_cur.shape != mask.shape:
            self._upload_mask(mask)
        self._phase_target = w
        if snap or self._phase_cur is None:
            self._phase_cur = w.copy()

        if image is None:
            self._has_image = False
            self._image_target = self._image_cur = None
        else:
            img = np.asarray(image)
            if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
                raise PreviewError(f"image must be uint8 [h, w, 3] with row 0 = top, got {img.dtype} {img.shape}")
            img = np.ascontiguousarray(img[:, :, :3])
            self._image_target = img.astype(np.float32)
            if snap or not self._has_image or self._image_cur is None or self._image_cur.shape != img.shape:
                self._upload_image(self._image_target)
            self._has_image = True

        if hud != self.hud:
            self.hud = dict(hud) if hud else None
            self._build_hud()

    def _mask_texture(self, w: int, h: int) -> moderngl.Texture:
        tex = self.ctx.texture((w, h), 1, dtype="f4")
        tex.repeat_x = tex.repeat_y = False
        tex.filter = (self._mgl.LINEAR_MIPMAP_LINEAR, self._mgl.LINEAR)
        return tex

    def _upload_mask(self, mask: np.ndarray) -> None:
        h, w = mask.shape
        if self._mask_tex.size != (w, h):
            self._mask_tex.release()
            self._mask_tex = self._mask_texture(w, h)
        self._mask_tex.write(mask.astype(np.float32).tobytes())  # row 0 (top) -> v = 0
        self._mask_tex.build_mipmaps()
        self._mask_cur = mask.astype(np.float32).copy()
        self._mask_levels = int(math.floor(math.log2(max(w, h))))

    def _upload_image(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        if self._image_tex is None or self._image_tex.size != (w, h):
            if self._image_tex is not None:
                self._image_tex.release()
            self._image_tex = self.ctx.texture((w, h), 3)
            self._image_tex.repeat_x = self._image_tex.repeat_y = False
        self._image_tex.write(np.clip(img + 0.5, 0, 255).astype(np.uint8).tobytes())  # row 0 (top) -> v = 0
        self._image_cur = img.astype(np.float32).copy()

    def _build_hud(self) -> None:
        if self._hud_tex is not None:
            self._hud_tex.release()
            self._hud_tex = None
        if not self.hud:
            return
        from PIL import Image, ImageDraw, ImageFont
        hud = self.hud
        phase = hud.get("phase", "")
        if isinstance(phase, (int, np.integer)) and 0 <= int(phase) < 3:
            phase = PHASE_NAMES[int(phase)]
        parts = []
        if "step" in hud:
            total = hud.get("total")
            # one numbering everywhere (README, "Conventions"): steps count from 0, so the last of 20
            # reads "step 19/19", as its files (step_019.png), the wire and OSC name it
            parts.append(f"step {int(hud['step'])}" + (f"/{int(total) - 1}" if total else ""))
        if phase != "":
            parts.append(str(phase))
        lines = ["  ".join(parts)] if parts else []
        if hud.get("word"):
            lines.append(f"word: {hud['word']}")
        if not lines:
            return
        size = max(11, int(round(13 * self.height / 512)))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed bitmap font
            font = ImageFont.load_default()
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        boxes = [probe.textbbox((0, 0), line, font=font) for line in lines]
        line_h = int(max(b[3] - b[1] for b in boxes)) + 4  # Pillow's boxes are whole pixels, typed float
        pad = 6
        tw = min(self.width - 8, int(max(b[2] for b in boxes)) + 2 * pad)
        th = min(self.height - 8, line_h * len(lines) + 2 * pad - 4)
        img = Image.new("RGBA", (tw, th), (0, 0, 0, 150))
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            draw.text((pad, pad + i * line_h - boxes[i][1]), line, font=font, fill=(255, 255, 255, 255))
        self._hud_tex = self.ctx.texture((tw, th), 4, img.tobytes())  # PIL row 0 = top -> v = 0
        self._hud_size = (tw, th)

    # ------------------------------------------------------------------ simulation
    def _smooth_inputs(self, dt: float) -> None:
        if self.smoothing <= 0:
            return
        k = 1.0 - math.exp(-dt / self.smoothing)
        if self._phase_cur is not None:
            self._phase_cur += (self._phase_target - self._phase_cur) * k
        if self._mask_target is not None and self._mask_cur is not None and self._mask_cur is not self._mask_target:
            diff = self._mask_target - self._mask_cur
            if float(np.abs(diff).max(initial=0.0)) > 2e-3:
                self._upload_mask(self._mask_cur + diff * k)
            elif diff.any():
                self._upload_mask(self._mask_target)
        if self._image_target is not None and self._image_cur is not None:  # target set = has an image
            diff = self._image_target - self._image_cur
            if float(np.abs(diff).max(initial=0.0)) > 0.5:
                self._upload_image(self._image_cur + diff * k)
            elif diff.any():
                self._upload_image(self._image_target)

    def _bind_inputs(self) -> None:
        self._mask_tex.use(0)
        image = self._image_tex if self._has_image else None
        (image if image is not None else self._blank_image).use(1)

    def _set_uniforms(self, prog: moderngl.Program | moderngl.ComputeShader, values: dict[str, Any]) -> None:
        for name, value in values.items():
            uniform = prog.get(name, None)  # None: optimised out
            if isinstance(uniform, self._mgl.Uniform):
                uniform.value = value

    @_current
    def update(self, dt: float = 1.0 / 30.0) -> None:
        """Advance particles by ``dt`` seconds (sub-stepped at <= 1/30 s)."""
        if dt <= 0:
            return
        steps = max(1, int(math.ceil(dt / _MAX_DT - 1e-9)))
        h = dt / steps
        for _ in range(steps):
            self._smooth_inputs(h)
            self._step(h)

    def _step(self, dt: float) -> None:
        p = self.params
        w, hgt = self._mask_tex.size
        uniforms = {
            "u_mask": 0, "u_image": 1, "u_has_image": 1.0 if self._has_image else 0.0,
            "u_phase": tuple(float(x) for x in self._phase_now()),  # before any set_inputs: the default target
            "u_time": float(self.time), "u_dt": float(dt),
            "u_wind": p.wind, "u_wind_scale": p.wind_scale, "u_wind_dir": tuple(p.wind_dir),
            "u_chaos_floor": p.chaos_floor, "u_attraction": p.attraction, "u_damping": p.damping,
            "u_grip": p.grip, "u_mask_size": (float(w), float(hgt)),
            "u_mask_lod_max": float(max(self._mask_levels - 1, 0)), "u_depth_rate": p.depth_rate,
        }
        self._bind_inputs()
        if self._cs is not None:
            uniforms["u_count"] = self.count
            self._set_uniforms(self._cs, uniforms)
            self._buffers[0].bind_to_storage_buffer(0)
            self._cs.run(group_x=(self.count + _LOCAL_SIZE - 1) // _LOCAL_SIZE)
            self.ctx.memory_barrier()
        else:
            self._set_uniforms(self._tf, uniforms)
            src, dst = self._cur, 1 - self._cur
            # EGL surfaceless contexts have an incomplete default framebuffer; a draw call (even
            # with rasteriser discard) against it fails with GL_INVALID_FRAMEBUFFER_OPERATION.
            self.fbo.use()
            self._tf_vaos[src].transform(self._buffers[dst], mode=self._mgl.POINTS, vertices=self.count)
            self._cur = dst
        self.time += dt

    # ------------------------------------------------------------------ rendering
    def mvp(self) -> np.ndarray:
        c = self.camera
        proj = _perspective(2.0 * math.atan(1.0 / c.distance), 0.05, 100.0)
        return proj @ _translate(0, 0, -c.distance) @ _rot_x(c.pitch) @ _rot_y(c.yaw)

    @_current
    def draw(self, view: str = "particles") -> None:
        """Render ``view`` into the renderer's framebuffer (no read-back)."""
        if view not in VIEWS:
            raise PreviewError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        ctx, mgl = self.ctx, self._mgl
        self.fbo.use()
        ctx.viewport = (0, 0, self.width, self.height)
        ctx.disable(mgl.BLEND | mgl.DEPTH_TEST | mgl.CULL_FACE)
        self._bind_inputs()
        cmap = 1 if self.colormap == "turbo" else 0
        has_image = 1.0 if self._has_image else 0.0
        wph = self._phase_now()
        screen = {"u_mask": 0, "u_image": 1, "u_alpha": self.overlay_alpha, "u_colormap": cmap,
                  "u_has_image": has_image, "u_background": self.background,
                  "u_image_glow": float(IMAGE_GLOW * wph[2])}
        screen["u_mode"] = {"overlay": 0, "image": 1, "particles": 2}[view]
        self._set_uniforms(self._screen_prog, screen)
        self._screen_vao.render(mgl.TRIANGLES, vertices=3)
        if view == "particles" and self.trails > 0.0:
            self._draw_trails(wph, cmap, has_image)
        elif view == "particles":
            ctx.enable(mgl.BLEND | mgl.PROGRAM_POINT_SIZE)
            ctx.blend_func = mgl.ONE, mgl.ONE_MINUS_SRC_ALPHA
            self._draw_points(wph, cmap, has_image)
        if self._hud_tex is not None:
            tw, th = self._hud_size
            margin = 8
            ctx.enable(mgl.BLEND)
            ctx.blend_func = mgl.SRC_ALPHA, mgl.ONE_MINUS_SRC_ALPHA
            ctx.viewport = (margin, self.height - margin - th, tw, th)  # GL origin is bottom-left
            self._hud_tex.use(2)
            self._set_uniforms(self._hud_prog, {"u_hud": 2})
            self._hud_vao.render(mgl.TRIANGLES, vertices=3)
            ctx.viewport = (0, 0, self.width, self.height)
        ctx.disable(mgl.BLEND)

    def _draw_points(self, wph: np.ndarray, cmap: int, has_image: float) -> None:
        """Draw the particles into the bound framebuffer, premultiplied-alpha blended."""
        ctx, mgl = self.ctx, self._mgl
        ctx.enable(mgl.BLEND | mgl.PROGRAM_POINT_SIZE)
        ctx.blend_func = mgl.ONE, mgl.ONE_MINUS_SRC_ALPHA
        self._set_uniforms(self._render_prog, {
            "u_depth_scale": self.camera.depth_scale,
            "u_point_size": self.point_size * self.camera.distance,
            "u_phase": tuple(float(x) for x in wph), "u_colormap": cmap, "u_opacity": 0.8})
        mvp = self._render_prog.get("u_mvp", None)  # None: optimised out
        if isinstance(mvp, self._mgl.Uniform):
            mvp.write(self.mvp().T.astype("f4").tobytes())  # column-major
        self._render_vaos[self._cur].render(mgl.POINTS, vertices=self.count)
        ctx.disable(mgl.PROGRAM_POINT_SIZE)

    def _draw_trails(self, wph: np.ndarray, cmap: int, has_image: float) -> None:
        """Particles -> trail image (fade previous + over) -> shown over the background."""
        ctx, mgl = self.ctx, self._mgl
        ctx.disable(mgl.BLEND)
        self._trail_fbo[2].use()
        ctx.clear(0.0, 0.0, 0.0, 0.0)
        self._draw_points(wph, cmap, has_image)
        ctx.disable(mgl.BLEND)
        src, dst = self._trail_cur, 1 - self._trail_cur
        self._trail_fbo[dst].use()
        self._trail_tex[src].use(3)
        self._trail_tex[2].use(4)
        common = {"u_prev": 3, "u_cur": 4, "u_image": 1, "u_decay": self.trails, "u_background": self.background,
                  "u_has_image": has_image, "u_image_glow": float(IMAGE_GLOW * wph[2])}
        self._set_uniforms(self._trail_prog, {**common, "u_mode": 0})
        self._trail_vao.render(mgl.TRIANGLES, vertices=3)
        self._trail_cur = dst
        self.fbo.use()
        self._trail_tex[dst].use(3)
        self._set_uniforms(self._trail_prog, {**common, "u_mode": 1})
        self._trail_vao.render(mgl.TRIANGLES, vertices=3)

    @_current
    def clear_trails(self) -> None:
        """Forget the trail images (e.g. on a new run)."""
        for f in self._trail_fbo:
            f.clear(0.0, 0.0, 0.0, 0.0)

    @_current
    def render(self, view: str = "particles") -> np.ndarray:
        """Render ``view`` ('particles' | 'overlay' | 'image') -> ``uint8 [H, W, 3]``, row 0 = top."""
        self.draw(view)
        return self.read()

    @_current
    def read(self) -> np.ndarray:
        data = self.fbo.read(components=3, alignment=1)
        frame = np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
        return np.ascontiguousarray(frame[::-1])  # GL row 0 = bottom -> numpy row 0 = top

    @_current
    def finish(self) -> None:
        self.ctx.finish()

    # ------------------------------------------------------------------ lifetime
    def info(self) -> dict:
        return {"backend_path": self.backend_path, "particles": self.count,
                "size": [self.width, self.height], "gl_renderer": self.ctx.info.get("GL_RENDERER"),
                "gl_version": self.ctx.info.get("GL_VERSION"), "params": asdict(self.params),
                "compute_error": self.compute_error}

    @_current
    def _release_objects(self) -> None:
        for obj in [*self._buffers, self._mask_tex, self._image_tex, self._blank_image, self._hud_tex,
                    self._color, self.fbo, *self._trail_fbo, *self._trail_tex]:
            if obj is not None:
                obj.release()
        self._buffers = []

    def release(self) -> None:
        """Free the textures and buffers, and the context when the renderer created it."""
        if self._buffers:
            self._release_objects()
        if self._own_ctx and not self._released:
            self._released = True
            self.ctx.release()

    def __enter__(self) -> PreviewRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
