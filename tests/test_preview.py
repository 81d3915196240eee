"""Headless tests for bridge.preview (Mesa llvmpipe via EGL, or any GL >= 3.3), asserting on pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest

moderngl = pytest.importorskip("moderngl", reason="moderngl not installed (pip install moderngl)")

from bridge.colormap import colormap  # noqa: E402
from bridge.preview.renderer import PreviewError, PreviewRenderer, create_context  # noqa: E402
from bridge.preview.shaders import SHADER_DIR, load_shader  # noqa: E402

STRUCTURE = (0.0, 1.0, 0.0)
NOISE = (1.0, 0.0, 0.0)
SIZE = 128
N = 16384


@pytest.fixture(scope="module")
def ctx():
    try:
        c = create_context()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no OpenGL 3.3 context could be created headless: {exc}")
    yield c
    c.release()


def disc_mask(n=64, cx=0.25, cy=0.5, r=0.2):
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / n
    return ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(np.float32)


def in_disc(xy, cx=0.25, cy=0.5, r=0.2):
    return (xy[..., 0] - cx) ** 2 + (xy[..., 1] - cy) ** 2 < r * r


def run(r, mask, weights, n=150, image=None):
    r.set_inputs(mask, image, weights, immediate=True)
    for _ in range(n):
        r.update(1.0 / 30.0)


def lit_fraction_in_disc(frame, r=0.2):
    lum = frame.astype(np.float32).mean(axis=2)
    bg = np.median(lum)
    w = np.clip(lum - bg - 8.0, 0, None)
    yy, xx = (np.mgrid[0:frame.shape[0], 0:frame.shape[1]] + 0.5) / frame.shape[0]
    inside = (xx - 0.25) ** 2 + (yy - 0.5) ** 2 < (r * 1.1) ** 2  # small margin for point size
    return float(w[inside].sum() / max(w.sum(), 1e-6)), float(w.sum())


def paths(ctx):
    out = ["transform_feedback"]
    if ctx.version_code >= 430:
        out.insert(0, "compute")
    return out


# ---------------------------------------------------------------- shaders on disk

def test_every_shader_has_a_documenting_header():
    files = sorted(p for p in SHADER_DIR.iterdir() if p.suffix in (".glsl", ".vert", ".frag", ".comp"))
    assert len(files) >= 8
    for p in files:
        lines = p.read_text().splitlines()
        start = 1 if lines[0].startswith("#version") else 0
        assert lines[start].startswith("//"), f"{p.name} must start with a header comment"
        header = "\n".join(l for l in lines[start:start + 45] if l.startswith("//"))
        assert re.search(r"uniform", header, re.I), f"{p.name} header must document its uniforms"
        assert re.search(r"texture|sampler", header, re.I), f"{p.name} header must document textures"


def test_include_is_spliced_and_version_stays_first():
    for name in ("particles_update.comp", "particles_update_tf.vert", "particles_render.vert", "overlay.frag"):
        src = load_shader(name)
        assert src.splitlines()[0].startswith("#version")
        assert not re.search(r'^\s*#include', src, re.M)
    assert "particle_step" in load_shader("particles_update_tf.vert")
    assert "particle_step" in load_shader("particles_update.comp")


# ---------------------------------------------------------------- force model

@pytest.mark.parametrize("path", ["compute", "transform_feedback"])
def test_particles_gather_where_stability_is_high(ctx, path):
    if path == "compute" and ctx.version_code < 430:
        pytest.skip("compute shaders need GL 4.3")
    r = PreviewRenderer(SIZE, SIZE, N, ctx=ctx, prefer_compute=(path == "compute"), seed=1)
    assert r.backend_path == path
    mask = disc_mask()
    assert in_disc(r.positions()).mean() < 0.2  # starts spread (disc area is 0.126)
    run(r, mask, STRUCTURE)
    assert in_disc(r.positions()).mean() > 0.7
    frac, total = lit_fraction_in_disc(r.render("particles"))
    assert total > 0 and frac > 0.7, frac
    r.release()


@pytest.mark.parametrize("path", ["compute", "transform_feedback"])
def test_particles_scatter_where_chaos_is_high(ctx, path):
    if path == "compute" and ctx.version_code < 430:
        pytest.skip("compute shaders need GL 4.3")
    r = PreviewRenderer(SIZE, SIZE, N, ctx=ctx, prefer_compute=(path == "compute"), seed=1)
    run(r, disc_mask(), NOISE)
    pos = r.positions()
    assert in_disc(pos).mean() < 0.3
    assert (pos[:, 0] > 0.5).mean() > 0.3  # the chaotic right half still holds particles
    assert np.abs(pos - r.state()[:, :2]).max() == 0
    frame = r.render("particles")
    frac, _ = lit_fraction_in_disc(frame)
    assert frac < 0.35, frac
    r.release()


def test_transform_feedback_matches_compute(ctx):
    if ctx.version_code < 430:
        pytest.skip("compute shaders need GL 4.3")
    rc = PreviewRenderer(SIZE, SIZE, N, ctx=ctx, prefer_compute=True, seed=3)
    rt = PreviewRenderer(SIZE, SIZE, N, ctx=ctx, prefer_compute=False, seed=3)
    assert (rc.backend_path, rt.backend_path) == ("compute", "transform_feedback")
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :, 1] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    for weights in (NOISE, STRUCTURE, (0.0, 0.3, 0.7)):
        for r in (rc, rt):
            run(r, disc_mask(), weights, n=40, image=img)
        a, b = rc.state(), rt.state()
        d = np.abs(a[:, :2] - b[:, :2])
        d = np.minimum(d, 1.0 - d)  # positions wrap
        assert np.percentile(d, 99) < 1e-3 and np.median(d) < 1e-4, (weights, d.max())
        assert np.abs(a[:, 4] - b[:, 4]).max() < 1e-2  # depth
    fa, fb = rc.render("particles").astype(int), rt.render("particles").astype(int)
    assert np.abs(fa - fb).mean() < 1.0
    rc.release()
    rt.release()


@pytest.mark.parametrize("path", ["compute", "transform_feedback"])
def test_a_renderer_runs_before_its_first_inputs(ctx, path):
    """update() before any set_inputs runs on the defaults (an empty mask, the noise phase): the
    preview window animates while it waits for the first step (it raised on the missing weights)."""
    if path not in paths(ctx):
        pytest.skip("no GL 4.3 compute here")
    r = PreviewRenderer(64, 64, 256, ctx=ctx, prefer_compute=path == "compute", seed=2)
    before = r.positions()
    r.update(1 / 30)
    assert np.allclose(r.phase_weights, NOISE)
    assert not np.allclose(r.positions(), before)  # the wind moves them
    assert r.render().shape == (64, 64, 3)
    r.release()


def test_phase_weights_crossfade(ctx):
    r = PreviewRenderer(64, 64, 256, ctx=ctx, smoothing=0.2)
    r.set_inputs(disc_mask(), None, NOISE)
    r.set_inputs(disc_mask(), None, STRUCTURE)
    assert np.allclose(r.phase_weights, NOISE)  # no hard cut
    r.update(1 / 30)
    w = r.phase_weights
    assert 0.0 < w[1] < 0.5 and abs(w.sum() - 1) < 1e-6
    r.update(3.0)
    assert np.allclose(r.phase_weights, STRUCTURE, atol=1e-3)
    r.release()


# ---------------------------------------------------------------- orientation

def test_mask_bright_at_top_puts_particles_at_top_of_png(ctx, tmp_path):
    from PIL import Image
    r = PreviewRenderer(SIZE, SIZE, N, ctx=ctx, seed=2)
    mask = np.zeros((64, 64), np.float32)
    mask[:16] = 1.0  # row 0 = top of the image
    run(r, mask, STRUCTURE)
    assert (r.positions()[:, 1] < 0.3).mean() > 0.7  # particle y = 0 is the top
    png = tmp_path / "top.png"
    Image.fromarray(r.render("particles")).save(png)
    frame = np.asarray(Image.open(png)).astype(np.float32).mean(axis=2)
    w = np.clip(frame - np.median(frame) - 8, 0, None)
    assert w[: SIZE * 3 // 10].sum() / w.sum() > 0.7
    r.release()


def test_image_and_overlay_keep_row0_at_top(ctx):
    r = PreviewRenderer(64, 64, 64, ctx=ctx)
    img = np.zeros((32, 32, 3), np.uint8)
    img[:16] = (255, 0, 0)  # top red
    img[16:] = (0, 0, 255)  # bottom blue
    mask = np.zeros((32, 32), np.float32)
    mask[:, :16] = 1.0  # left bright
    r.set_inputs(mask, img, STRUCTURE)
    frame = r.render("image")
    assert tuple(frame[4, 32]) == (255, 0, 0)
    assert tuple(frame[60, 32]) == (0, 0, 255)
    r.overlay_alpha = 1.0
    ov = r.render("overlay").astype(int)
    assert np.abs(ov[32, 4] - np.round(colormap(1.0) * 255)).max() <= 2
    assert np.abs(ov[32, 60] - np.round(colormap(0.0) * 255)).max() <= 2
    r.release()


# ---------------------------------------------------------------- overlay colour

@pytest.mark.parametrize("cmap,alpha", [("inferno", 0.6), ("turbo", 0.35)])
def test_overlay_colour_is_lut_blended_with_alpha(ctx, cmap, alpha):
    r = PreviewRenderer(SIZE, SIZE, 64, ctx=ctx, colormap=cmap, overlay_alpha=alpha)
    mask = np.zeros((64, 64), np.float32)
    mask[:, :32] = 0.25
    mask[:, 32:] = 0.8
    mask[48:, :] = 0.5
    img = np.full((64, 64, 3), (40, 120, 200), np.uint8)
    r.set_inputs(mask, img, STRUCTURE)
    frame = r.render("overlay").astype(np.float64)
    for (y, x), s in {(40, 30): 0.25, (40, 100): 0.8, (120, 64): 0.5}.items():
        expected = (1 - alpha) * np.array([40, 120, 200]) + alpha * colormap(s, cmap) * 255
        assert np.abs(frame[y, x] - expected).max() <= 2.0, (cmap, s, frame[y, x], expected)
    r.release()


# ---------------------------------------------------------------- HUD, inputs, output

def test_hud_is_drawn_top_left(ctx):
    r = PreviewRenderer(SIZE, SIZE, 64, ctx=ctx)
    mask = np.zeros((64, 64), np.float32)
    r.set_inputs(mask, None, NOISE)
    plain = r.render("overlay").astype(int)
    r.set_inputs(mask, None, NOISE, {"step": 4, "total": 50, "phase": 0, "word": "cat"})
    hud = r.render("overlay").astype(int)
    diff = np.abs(hud - plain).sum(axis=2)
    assert diff[: SIZE // 3, : SIZE // 2].sum() > 0  # text lands top-left
    assert diff[SIZE // 2:, :].sum() == 0
    assert (hud[: SIZE // 3, : SIZE // 2].min(axis=2) > 180).any()  # white glyph pixels
    r.release()


def test_bad_inputs_name_what_is_right(ctx):
    r = PreviewRenderer(64, 64, 64, ctx=ctx)
    with pytest.raises(PreviewError, match=r"\[H, W\]"):
        r.set_inputs(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(PreviewError, match="uint8"):
        r.set_inputs(np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(PreviewError, match="phase_weights"):
        r.set_inputs(np.zeros((8, 8), np.float32), None, (1, 0))
    with pytest.raises(PreviewError, match="particles, overlay, image"):
        r.render("wireframe")
    r.release()


def test_owned_contexts_coexist():
    try:
        a = PreviewRenderer(64, 64, 512, seed=5)
        b = PreviewRenderer(64, 64, 512, seed=6, prefer_compute=False)
    except PreviewError as exc:
        pytest.skip(str(exc))
    for r in (a, b):
        run(r, disc_mask(), STRUCTURE, n=20)
    assert not np.allclose(a.positions(), b.positions())
    assert a.ctx.error == "GL_NO_ERROR" and b.ctx.error == "GL_NO_ERROR"
    a.release()
    b.release()


def test_output_writers(tmp_path):
    from PIL import Image
    from bridge.preview.output import OutputError, open_writer
    frames = [np.full((16, 24, 3), i * 40, np.uint8) for i in range(3)]
    with open_writer(tmp_path / "seq") as w:
        for f in frames:
            w.write(f)
    pngs = sorted((tmp_path / "seq").glob("*.png"))
    assert len(pngs) == 3 and np.asarray(Image.open(pngs[2]))[0, 0, 0] == 80
    with open_writer(tmp_path / "a.gif", fps=10) as w:
        for f in frames:
            w.write(f)
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 3 and gif.size == (24, 16)
    with pytest.raises(OutputError, match="uint8"):
        open_writer(tmp_path / "b").write(np.zeros((4, 4), np.float32))
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        with pytest.raises(OutputError, match="imageio-ffmpeg"):
            open_writer(tmp_path / "c.mp4")
    else:
        with open_writer(tmp_path / "c.mp4") as w:
            for f in frames:
                w.write(f)
        assert (tmp_path / "c.mp4").stat().st_size > 0


def test_gif_shares_one_palette_and_stores_only_changes(tmp_path):
    """A small moving square over a fixed gradient: later frames cost a fraction of the first."""
    from PIL import Image
    from bridge.preview.output import open_writer
    base = np.zeros((96, 128, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, 128, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 255, 96, dtype=np.uint8)[:, None]
    frames = []
    for i in range(24):
        f = base.copy()
        f[40:52, 4 * i:4 * i + 12] = (30, 90, 250)
        frames.append(f)
    with open_writer(tmp_path / "one.gif") as w:
        w.write(frames[0])
    with open_writer(tmp_path / "all.gif") as w:
        for f in frames:
            w.write(f)
    one, many = (tmp_path / "one.gif").stat().st_size, (tmp_path / "all.gif").stat().st_size
    assert many < 24 * one / 4  # 24 frames at under a quarter of 24 whole frames: changed rectangles only
    gif = Image.open(tmp_path / "all.gif")
    assert gif.n_frames == 24
    gif.seek(23)
    back = np.asarray(gif.convert("RGB")).astype(int)
    assert np.abs(back - frames[23]).mean() < 6  # the shared palette keeps the colours
    assert tuple(back[45, 4 * 23 + 5]) == pytest.approx((30, 90, 250), abs=24)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_video_round_trip(tmp_path, suffix):
    ffmpeg = pytest.importorskip("imageio_ffmpeg")
    from bridge.preview.output import OutputError, open_writer
    frames = [np.full((32, 48, 3), (200, 40 + 10 * i, 20), np.uint8) for i in range(6)]
    with open_writer(tmp_path / f"v{suffix}", fps=12) as w:
        for f in frames:
            w.write(f)
    reader = ffmpeg.read_frames(str(tmp_path / f"v{suffix}"))
    meta = next(reader)
    got = [np.frombuffer(b, np.uint8).reshape(32, 48, 3) for b in reader]
    assert meta["size"] == (48, 32) and len(got) == 6
    assert np.abs(got[-1].astype(int) - frames[-1]).mean() < 12
    with pytest.raises(OutputError, match="even width and height"):
        open_writer(tmp_path / f"odd{suffix}").write(np.zeros((31, 48, 3), np.uint8))


# ---------------------------------------------------------------- trails (shaders/trails.glsl)

def test_trails_leave_comet_tails_and_fade_to_the_background(ctx):
    """With trails the moving particles light more pixels than without; the trail image fades
    to exactly the background once nothing new is drawn (no ghost that never leaves)."""
    def lit_after(trails: float) -> tuple[int, PreviewRenderer]:
        r = PreviewRenderer(96, 96, 3000, ctx=ctx, seed=2, trails=trails)
        r.set_inputs(np.zeros((16, 16), np.float32), None, (1.0, 0.0, 0.0), immediate=True)
        for _ in range(12):
            r.update(1.0 / 30.0)
            frame = r.render("particles")
        return int((frame.max(axis=2) > 40).sum()), r

    with ctx:  # tests with owned contexts may have left another context current
        lit_plain, r0 = lit_after(0.0)
        lit_trails, r1 = lit_after(0.9)
        assert lit_trails > 1.3 * lit_plain
        bg = np.round(np.array(r1.background) * 255).astype(int)
        r1.count = 0  # draw no particles from now on: only the fading trail image is left
        for _ in range(80):
            frame = r1.render("particles")
        assert np.abs(frame.astype(int) - bg).max() <= 1
        r0.release()
        r1.release()


def test_trails_must_be_a_decay_below_one(ctx):
    with ctx, pytest.raises(PreviewError, match="trails"):
        PreviewRenderer(32, 32, 10, ctx=ctx, trails=1.0)


def test_preview_defaults_are_the_touchdesigner_pieces():
    """The preview's force constants, look and glow are the TD piece's defaults (stepx_td/piece.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "td_components"))
    from stepx_td.piece import PIECE_PARAMS

    from bridge.preview.renderer import IMAGE_GLOW, ForceParams

    piece = {p.name: p.default for p in PIECE_PARAMS}
    f = ForceParams()
    assert (f.wind, f.wind_scale, f.chaos_floor, f.attraction, f.damping, f.grip, f.depth_rate) == (
        piece["Wind"], piece["Windscale"], piece["Chaosfloor"], piece["Attraction"], piece["Damping"],
        piece["Grip"], piece["Depthrate"])
    assert f.wind_dir == (piece["Winddirx"], -piece["Winddiry"])  # the preview's y points down, TD's up
    assert IMAGE_GLOW == piece["Glow"]
    import inspect

    defaults = inspect.signature(PreviewRenderer).parameters
    assert tuple(defaults["background"].default) == (piece["Backgroundr"], piece["Backgroundg"], piece["Backgroundb"])


def test_a_model_loads_after_the_preview_opened_a_context():
    """Mesa's llvmpipe and Triton's own LLVM: Triton imported after a llvmpipe context segfaulted
    the process (diffusers imports Triton). create_context loads Triton first where it is installed."""
    import subprocess
    import sys

    pytest.importorskip("triton", reason="the crash needs Triton installed")
    code = ("from bridge.preview.renderer import create_context\n"
            "ctx = create_context()\n"
            "print(ctx.info['GL_RENDERER'])\n"
            "import triton, diffusers\n"
            "print('loaded')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "could not create an OpenGL" in done.stderr:
        pytest.skip("no OpenGL context headless here")
    assert done.returncode == 0 and done.stdout.strip().endswith("loaded"), (done.returncode, done.stderr[-2000:])
