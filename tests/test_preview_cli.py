"""`stepx preview`: the packet -> renderer player (plain), trace/ZeroMQ sources, and headless
renders of synthetic streams asserted on pixels (Mesa llvmpipe via EGL)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bridge.protocol import Packet
from bridge.preview.player import PreviewPlayer, UnknownWordError
from bridge.preview.source import TraceSource

WORDS = ["cat", "dog"]
M = 64          # map size
SIZE = 128      # frame size
CAT = (0.25, 0.55, 0.18)   # disc centre x, y (from the top), radius, in UV
DOG = (0.75, 0.55, 0.18)


def disc(cx: float, cy: float, r: float, n: int = M) -> np.ndarray:
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / n
    return ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(np.float32)


def test_image() -> np.ndarray:
    img = np.zeros((64, 64, 3), np.uint8)
    img[:32] = (220, 30, 30)    # top half red
    img[32:] = (30, 200, 40)    # bottom half green
    return img


test_image.__test__ = False  # a helper, not a test


def packets(steps: int = 3, focus: str | None = "cat", run_id: str = "r1", phase: int = 1) -> list[Packet]:
    """run, then `steps` structure-phase steps (cat and dog discs, global = max), an image, end."""
    w = [0.0, 0.0, 0.0]
    w[phase] = 1.0
    cat, dog = disc(*CAT), disc(*DOG)
    tex = np.stack([cat, dog, np.maximum(cat, dog)])
    header = {"run_id": run_id, "prompt": "a cat and a dog", "words": WORDS, "total_steps": steps,
              "seed": 0, "model": "synthetic", "width": 64, "height": 64, "map_size": M}
    if focus is not None:
        header["focus"] = [focus]
    out = [Packet("run", header)]
    for s in range(steps):
        out.append(Packet("step", {"run_id": run_id, "step": s, "total_steps": steps, "progress": (s + 1) / steps,
                                   "phase": phase, "phase_progress": 0.5, "phase_weights": w, "words": WORDS},
                          {"textures": tex}))
    out.append(Packet("image", {"run_id": run_id, "step": steps - 1, "final": True}, {"image": test_image()}))
    out.append(Packet("end", {"run_id": run_id, "status": "done"}))
    return out


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    from bridge.trace import TraceWriter
    path = tmp_path / "synthetic.stx"
    with TraceWriter(path, fsync=False) as w:
        for p in packets():
            w.send(p)
    return path


# ---------------------------------------------------------------------------- player (no GL)
def test_player_default_focus_and_inputs():
    p = PreviewPlayer()
    assert p.inputs() is None
    p.feed_all(packets())
    assert p.focus_word == "cat"
    inp = p.inputs()
    assert inp.stability.shape == (M, M) and inp.stability.dtype == np.float32
    np.testing.assert_array_equal(inp.stability, disc(*CAT))
    assert inp.phase_weights == (0.0, 1.0, 0.0)
    assert inp.hud == {"word": "cat", "step": 2, "total": 3, "phase": "structure"}
    assert inp.image is not None and inp.image.shape == (64, 64, 3)


def test_player_takes_the_daemons_focus_indices():
    pk = packets(focus=None)
    pk[0].header["focus"] = [1]  # stepx serve/record send indices into the word list
    p = PreviewPlayer()
    p.feed_all(pk)
    assert p.focus_word == WORDS[1]


def test_player_global_without_focus_and_word_cycling():
    p = PreviewPlayer()
    p.feed_all(packets(focus=None))
    assert p.focus_word == "global"
    np.testing.assert_array_equal(p.inputs().stability, np.maximum(disc(*CAT), disc(*DOG)))
    assert p.cycle_word(1) == "cat"
    assert p.cycle_word(1) == "dog"
    np.testing.assert_array_equal(p.inputs().stability, disc(*DOG))
    assert p.cycle_word(1) == "global"
    assert p.cycle_word(-1) == "dog"


def test_player_unknown_word_lists_the_run_words():
    p = PreviewPlayer(word="horse")
    with pytest.raises(UnknownWordError, match=r"'horse'.*'cat', 'dog'"):
        p.feed_all(packets())
    q = PreviewPlayer()
    q.feed_all(packets())
    with pytest.raises(UnknownWordError, match="'cat', 'dog'"):
        q.set_word("horse")
    q.set_word("DOG")  # case-insensitive match
    assert q.focus_word == "dog"


def test_player_dequantizes_uint8_and_ignores_repeated_run_and_other_runs():
    p = PreviewPlayer(word="dog")
    pk = packets()
    p.feed(pk[0])
    q = (np.stack([disc(*CAT), disc(*DOG), disc(*DOG)]) * 255).astype(np.uint8)
    p.feed(Packet("step", dict(pk[1].header), {"textures": q}))
    s = p.inputs().stability
    assert s.dtype == np.float32 and s.max() == pytest.approx(1.0)
    p.feed(pk[0])  # re-sent run header (late joiner cache): keeps the step
    assert p.textures is not None
    p.feed(Packet("image", {"run_id": "other", "step": 0, "final": False}, {"image": test_image()}))
    assert p.image is None
    assert p.take_inputs() is not None and p.take_inputs() is None  # dirty flag


def test_trace_source_paces_steps(trace: Path):
    src = TraceSource(str(trace), fps=10)
    first = src.poll(0.0)
    assert [p.kind for p in first] == ["run", "step"]
    assert src.poll(0.05) == []
    assert [p.kind for p in src.poll(0.1)] == ["step"]
    assert [p.kind for p in src.poll(0.25)] == ["step", "image", "end"]
    assert src.finished
    src.close()


# ---------------------------------------------------------------------------- headless renders
@pytest.fixture(scope="module")
def gl():
    pytest.importorskip("moderngl", reason="moderngl not installed (pip install moderngl)")
    from bridge.preview.renderer import create_context
    try:
        ctx = create_context()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no OpenGL 3.3 context could be created headless: {exc}")
    ctx.release()


def cli(*argv: str) -> int:
    from bridge.cli import main
    return main(["preview", *argv])


def frames_of(folder: Path) -> list[np.ndarray]:
    from PIL import Image
    return [np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.glob("*.png"))]


def disc_light(frame: np.ndarray, c: tuple[float, float, float]) -> float:
    """Light above the background inside disc ``c`` (slightly enlarged for the point size)."""
    lum = frame.astype(np.float32).mean(axis=2)
    w = np.clip(lum - np.median(lum) - 8.0, 0, None)
    yy, xx = (np.mgrid[0:frame.shape[0], 0:frame.shape[1]] + 0.5) / frame.shape[0]
    return float(w[(xx - c[0]) ** 2 + (yy - c[1]) ** 2 < (c[2] * 1.1) ** 2].sum())


def render_trace(trace: Path, out: Path, *extra: str, frames: int = 75) -> list[np.ndarray]:
    rc = cli("--trace", str(trace), "--out", str(out), "--frames", str(frames), "--size", f"{SIZE}x{SIZE}",
             "--particles", "8192", *extra)
    assert rc == 0
    got = frames_of(out)
    assert len(got) == frames and got[0].shape == (SIZE, SIZE, 3)
    return got


def test_particles_gather_in_the_focus_word_disc(gl, trace: Path, tmp_path: Path):
    cat = render_trace(trace, tmp_path / "cat", "--word", "cat")[-1]
    dog = render_trace(trace, tmp_path / "dog", "--word", "dog")[-1]
    assert disc_light(cat, CAT) > 3 * disc_light(cat, DOG)
    assert disc_light(dog, DOG) > 3 * disc_light(dog, CAT)
    assert np.abs(cat.astype(int) - dog.astype(int)).mean() > 5  # switching word changes the picture


def test_overlay_and_image_views_show_the_step_image(gl, trace: Path, tmp_path: Path):
    img = render_trace(trace, tmp_path / "img", "--view", "image", frames=30)[-1]
    ov = render_trace(trace, tmp_path / "ov", "--view", "overlay", "--word", "cat", frames=30)[-1]
    top, bottom = (int(SIZE * 0.42), SIZE // 2), (int(SIZE * 0.9), SIZE // 2)  # (row, col): below the HUD, outside both discs
    np.testing.assert_allclose(img[top], (220, 30, 30), atol=12)
    np.testing.assert_allclose(img[bottom], (30, 200, 40), atol=12)
    # overlay = 0.4 * image + 0.6 * inferno(S); outside the discs S = 0 (inferno(0) is near black)
    np.testing.assert_allclose(ov[bottom], 0.4 * np.array([30, 200, 40]), atol=14)
    assert ov[top][0] > 2 * ov[top][1]
    centre = ov[int(CAT[1] * SIZE), int(CAT[0] * SIZE)].astype(int)
    assert centre.sum() > ov[bottom].astype(int).sum() + 200  # heat colour of S = 1 on top


def test_gif_until_the_trace_ends(gl, trace: Path, tmp_path: Path):
    from PIL import Image
    out = tmp_path / "run.gif"
    assert cli("--trace", str(trace), "--out", str(out), "--size", "64x64", "--particles", "1024",
               "--hold", "0.5") == 0
    with Image.open(out) as im:
        n = im.n_frames
    # 3 steps at 10 steps/s = 0.2 s of steps, then 0.5 s held, at 30 frames/s
    assert 18 <= n <= 24


def test_unknown_word_on_the_command_line(gl, trace: Path, tmp_path: Path, capsys):
    assert cli("--trace", str(trace), "--out", str(tmp_path / "x"), "--word", "horse") == 2
    err = capsys.readouterr().err
    assert "'horse'" in err and "'cat', 'dog'" in err
    assert not list((tmp_path).glob("x/*.png"))


def test_damaged_trace_is_reported(tmp_path: Path, capsys):
    bad = tmp_path / "bad.stx"
    bad.write_bytes(b"not a trace at all")
    assert cli("--trace", str(bad), "--out", str(tmp_path / "o")) == 2
    assert "bad.stx" in capsys.readouterr().err


def test_live_zmq_stream(gl, tmp_path: Path):
    from bridge.transport.zmq_pub import ZmqPublisher
    pub = ZmqPublisher("tcp://127.0.0.1:*", sndhwm=8)
    stop = threading.Event()
    pk = packets(steps=1000)
    body = [p for p in pk if p.kind in ("step", "image")][:-1]

    def feed():
        pub.send(pk[0])  # run: cached and re-sent to the subscriber when it joins
        i = 0
        while not stop.is_set():
            pub.send(body[i % len(body)])
            if i % 5 == 0:
                pub.send(pk[-2])  # image
            if i % 20 == 0:
                pub.send(pk[0])  # a repeated run header is a no-op for a player that has it
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        out = tmp_path / "live"
        assert cli("--zmq", pub.endpoint, "--out", str(out), "--frames", "120", "--size", f"{SIZE}x{SIZE}",
                   "--particles", "8192", "--frame-rate", "60", "--wait", "30", "--word", "cat") == 0
    finally:
        stop.set()
        t.join(2)
        pub.close()
    last = frames_of(out)[-1]
    assert disc_light(last, CAT) > 3 * disc_light(last, DOG)
