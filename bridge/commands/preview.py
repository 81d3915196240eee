"""``stepx preview``: render a live ZeroMQ stream or a recorded trace with the moderngl preview.

A window (moderngl-window) where a display exists: keys 1/2/3 switch the view (particles,
overlay, image), left/right arrows switch the focus word, space pauses, Esc closes.
Headless (``--headless``, ``--out``, or no display): EGL, frames written to a PNG folder, a
.gif or a .mp4. The packet -> renderer logic lives in :mod:`bridge.preview.player`; this module
only parses options and runs one of the two thin loops.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from bridge.preview.player import PreviewLoop, PreviewPlayer, parse_size, render_headless
from bridge.preview.renderer import VIEWS, PreviewError
from bridge.preview.source import PacketSource, TraceSource, ZmqSource
from bridge.transport.zmq_sub import DEFAULT_SUB_ENDPOINT

log = logging.getLogger(__name__)

WINDOW_HINT = "pip install stepx-bridge[window]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--zmq", metavar="ENDPOINT", default=None,
                     help=f"live stream to subscribe to (default {DEFAULT_SUB_ENDPOINT}, where stepx serve publishes)")
    src.add_argument("--trace", metavar="PATH", default=None, help="recorded trace to play instead of a live stream")
    parser.add_argument("--fps", type=float, default=10.0,
                        help="trace playback: steps per second (default 10, as stepx replay; 0 = one step per frame)")
    parser.add_argument("--frame-rate", type=float, default=30.0,
                        help="frames per second rendered and written to --out (default 30)")
    parser.add_argument("--run", default=None, metavar="RUN", help="trace: play one run only (number or run_id)")
    parser.add_argument("--allow-partial", action="store_true", help="trace: play a trace that stops early")
    parser.add_argument("--word", default=None,
                        help="focus word (default: the run's focus word, else the global view; 'global' = global view)")
    parser.add_argument("--view", choices=VIEWS, default="particles", help="what to show (default particles)")
    parser.add_argument("--particles", type=int, default=65536, help="particle count (default 65536)")
    parser.add_argument("--size", default="512x512", metavar="WxH", help="frame size (default 512x512)")
    parser.add_argument("--colormap", choices=("inferno", "turbo"), default="inferno", help="heat-map colours")
    parser.add_argument("--trails", type=float, default=0.0, metavar="DECAY",
                        help="particle trails: per-frame decay in [0, 1) (default 0 = none; 0.86 = the "
                             "TouchDesigner piece's look, shaders/trails.glsl)")
    parser.add_argument("--headless", action="store_true", help="render offscreen (EGL) even where a display exists")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="headless output: a .mp4 or .webm (the mp4 extra), a .gif, or a folder of PNG frames "
                             "(implies --headless; default with --headless: preview.mp4 where the mp4 extra is "
                             "installed, else a small preview.gif)")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="headless: frames to write (default: until the trace or the live run ends)")
    parser.add_argument("--hold", type=float, default=1.0, metavar="S",
                        help="headless without --frames: keep rendering S seconds after the end (default 1)")
    parser.add_argument("--wait", type=float, default=10.0, metavar="S",
                        help="headless live: wait up to S seconds for the first step before rendering (default 10)")


def has_display() -> bool:
    """Whether a window can be opened (X11/Wayland on Linux; assumed on macOS and Windows)."""
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _open_source(args: argparse.Namespace) -> PacketSource:
    if args.trace:
        run: int | str | None = args.run
        if isinstance(run, str) and run.isdigit():
            run = int(run)
        return TraceSource(args.trace, args.fps, run=run, allow_partial=args.allow_partial)
    return ZmqSource(args.zmq or DEFAULT_SUB_ENDPOINT)


def _prime(source: PacketSource, player: PreviewPlayer, wait: float) -> None:
    """Feed what is there before the first frame, so a bad --word fails before any output.

    A trace delivers its run header and first step at t = 0; a live stream is waited on for
    up to ``wait`` seconds until a step arrives.
    """
    if isinstance(source, ZmqSource):
        deadline = time.monotonic() + wait
        while player.textures is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PreviewError(f"no step packet from {source.endpoint} within {wait:g} s: is `stepx serve` "
                                   f"(or `stepx replay --zmq {source.endpoint}`) publishing there?")
            player.feed_all(source.poll(timeout=min(left, 0.2)))
    else:
        player.feed_all(source.poll(0.0))


def run_headless(args: argparse.Namespace, source: PacketSource, player: PreviewPlayer) -> int:
    from bridge.preview.output import default_output, open_writer
    from bridge.preview.renderer import PreviewRenderer

    if not args.out:
        args.out = default_output()
        print(f"no --out given: writing {args.out}" + ("" if has_display() else " (no display: DISPLAY is not set)"),
              file=sys.stderr)
    if args.frames is not None and args.frames < 1:
        raise PreviewError(f"--frames must be >= 1, got {args.frames}")
    width, height = parse_size(args.size)
    _prime(source, player, args.wait)
    renderer = PreviewRenderer(width, height, particles=args.particles, colormap=args.colormap, trails=args.trails)
    try:
        loop = PreviewLoop(source, player, renderer)
        with open_writer(args.out, fps=args.frame_rate) as writer:
            try:
                n = render_headless(loop, writer.write, fps=args.frame_rate, frames=args.frames, hold=args.hold)
            except KeyboardInterrupt:
                n = loop.frames
                print("interrupted", file=sys.stderr)
    finally:
        renderer.release()
    print(f"wrote {n} frames ({width}x{height}, {player.view}, word {player.focus_word!r}, "
          f"{renderer.backend_path}) to {args.out}")
    return 0


def run_window(args: argparse.Namespace, source: PacketSource, player: PreviewPlayer) -> int:
    """The thin window loop: keys -> player, then tick, draw, blit, swap."""
    try:
        import moderngl_window as mglw
        from moderngl_window.conf import settings
    except ImportError:
        raise PreviewError(f"a preview window needs moderngl-window, which is not installed: {WINDOW_HINT} "
                           "(or render headless: --headless --out out.gif)") from None
    from bridge.preview.renderer import PreviewRenderer

    width, height = parse_size(args.size)
    settings.WINDOW.update({"size": (width, height), "title": "stepx preview", "gl_version": (3, 3),
                            "aspect_ratio": width / height, "vsync": True})
    window: Any = mglw.create_window_from_settings()
    bw, bh = window.buffer_size
    renderer = PreviewRenderer(bw, bh, particles=args.particles, ctx=window.ctx, colormap=args.colormap,
                               trails=args.trails)
    loop = PreviewLoop(source, player, renderer)
    keys = window.keys
    view_keys = {keys.NUMBER_1: VIEWS[0], keys.NUMBER_2: VIEWS[1], keys.NUMBER_3: VIEWS[2]}

    def on_key(key: Any, action: Any, modifiers: Any) -> None:
        if action != keys.ACTION_PRESS:
            return
        if key in view_keys:
            player.set_view(view_keys[key])
        elif key in (keys.LEFT, keys.RIGHT):
            word = player.cycle_word(-1 if key == keys.LEFT else 1)
            log.info("focus word: %s", word)
        elif key == keys.SPACE:
            log.info("paused" if player.toggle_pause() else "playing")

    window.key_event_func = on_key
    last = time.monotonic()
    try:
        while not window.is_closing:
            now = time.monotonic()
            dt, last = min(now - last, 0.1), now
            loop.tick(dt)
            renderer.draw(player.view)
            window.ctx.copy_framebuffer(window.fbo, renderer.fbo)
            window.swap_buffers()
    except KeyboardInterrupt:
        pass
    finally:
        renderer.release()
        window.destroy()
    return 0


def run(args: argparse.Namespace) -> int:
    from bridge.trace import TraceError
    from bridge.preview.output import OutputError

    try:
        player = PreviewPlayer(word=args.word, view=args.view)
        source = _open_source(args)
    except (PreviewError, TraceError, FileNotFoundError, ValueError) as exc:
        print(f"stepx preview: error: {exc}", file=sys.stderr)
        return 2
    try:
        headless = args.headless or bool(args.out) or not has_display()
        return (run_headless if headless else run_window)(args, source, player)
    except (PreviewError, OutputError, ValueError) as exc:
        print(f"stepx preview: error: {exc}", file=sys.stderr)
        return 2
    finally:
        source.close()
