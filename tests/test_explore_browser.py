"""The explorer driven in a real headless browser (Debian's chromium + chromedriver, Selenium).

Generate with the embedded model, move the Step slider, change word and alpha, draw a box,
export the ZIP and read it, follow a live run in two tabs and close one mid-stream, open a trace.
Screenshots of every tab go to $STEPX_SCREENSHOTS (else a pytest temporary folder).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the explorer extra (starlette, uvicorn) is not installed")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install 'stepx-bridge[test]')")

from explore_helpers import call, record_trace
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/system-deps.sh installs them)",
                allow_module_level=True)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1150")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("STEPX_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def explorer(shapes_pipe, tmp_path_factory):
    """A real server (uvicorn, free port) whose engine already holds the embedded model, with the
    head-relevance concepts `stepx relevance` writes for it (a short run: 3 generations)."""
    from bridge.cli import main
    from bridge.explore.app import Explorer, create_app
    from bridge.explore.engine import Engine
    from bridge.explore.server import BackgroundServer

    concepts = tmp_path_factory.mktemp("concepts")
    assert main(["relevance", "--concepts", "shapes", "--runs", "3", "--steps", "5", "-o", str(concepts), "--device", "cpu",
                 "--workers", "0", "--threads", "1"]) == 0
    engine = Engine(device="cpu")
    engine._models["shapes"] = (shapes_pipe, "stepx-shapes")
    ex = Explorer(engine, concepts_dir=str(concepts))
    srv = BackgroundServer(create_app(ex)).start()
    yield ex, srv
    srv.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout=120, what="the page"):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=f"waiting for {what}")


def data(driver, selector: str, key: str) -> str | None:
    return driver.execute_script(f"const e = document.querySelector({selector!r}); return e && e.dataset[{key!r}];")


def canvas(driver, selector: str) -> np.ndarray:
    """The canvas's pixels as uint8 RGB ``[h, w, 3]``."""
    url = driver.execute_script(f"return document.querySelector({selector!r}).toDataURL('image/png');")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def server_tasks(ex) -> int:
    """How many asyncio tasks the server's event loop holds now."""
    import asyncio

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), ex.hub._loop).result(10)


def tab(driver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#tabs button[data-tab={name}]").click()


INSPECT = "#inspect-view .inspector"


@pytest.mark.slow
def test_generate_inspect_regions_and_export(browser, explorer, shots, downloads):
    ex, srv = explorer
    d = browser
    d.get(srv.url)
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready"), what="the page to start")
    steps = d.find_element(By.ID, "gen-steps")
    steps.clear()
    steps.send_keys("6")
    d.find_element(By.ID, "gen-go").click()
    wait(d, lambda d: data(d, INSPECT, "state") == "ready", what="the generated run to be drawn")
    assert d.find_element(By.ID, "gen-status").text.startswith("done: 6 steps")
    assert data(d, INSPECT, "step") == "5" and data(d, INSPECT, "word") == "Global"
    options = [o.text for o in Select(d.find_element(By.CSS_SELECTOR, f"{INSPECT} .word")).options]
    assert options[0] == "Global (sum over words)" and "circle" in options
    assert "sum of every word's map" in d.find_element(By.CSS_SELECTOR, f"{INSPECT} .hint").text
    (run,) = ex.runs.values()

    # what the page blends is the exporters' overlay of the same step and word
    d.find_element(By.CSS_SELECTOR, f"{INSPECT} .word")
    Select(d.find_element(By.CSS_SELECTOR, f"{INSPECT} .word")).select_by_value("circle")
    wait(d, lambda d: data(d, INSPECT, "word") == "circle" and data(d, INSPECT, "state") == "ready")
    drawn = canvas(d, f"{INSPECT} .overlay").astype(int)
    assert np.abs(drawn - run.overlay("circle", 5, 0.5).astype(int)).max() <= 3
    np.testing.assert_allclose(canvas(d, f"{INSPECT} .heat"), run.heat_rgb("circle", 5), atol=1)
    d.save_screenshot(str(shots / "explorer_inspect.png"))

    # the Step slider, moved with the keyboard
    before_heat = canvas(d, f"{INSPECT} .heat")
    slider = d.find_element(By.CSS_SELECTOR, f"{INSPECT} .step")
    slider.send_keys(Keys.HOME)
    wait(d, lambda d: data(d, INSPECT, "step") == "0" and data(d, INSPECT, "state") == "ready")
    assert d.find_element(By.CSS_SELECTOR, f"{INSPECT} .step-out").text == "0 / 5"
    assert not np.array_equal(canvas(d, f"{INSPECT} .heat"), before_heat)
    slider.send_keys(Keys.RIGHT, Keys.RIGHT)
    wait(d, lambda d: data(d, INSPECT, "step") == "2" and data(d, INSPECT, "state") == "ready")
    assert 2 in run.images  # that step's VAE decode, made once and kept

    # Overlay alpha: the overlay changes, the raw heat map beside it does not
    heat, over = canvas(d, f"{INSPECT} .heat"), canvas(d, f"{INSPECT} .overlay")
    d.find_element(By.CSS_SELECTOR, f"{INSPECT} .alpha").send_keys(Keys.END)
    wait(d, lambda d: data(d, INSPECT, "alpha") == "1" and data(d, INSPECT, "state") == "ready")
    np.testing.assert_array_equal(canvas(d, f"{INSPECT} .heat"), heat)
    full = canvas(d, f"{INSPECT} .overlay")
    assert not np.array_equal(full, over) and np.abs(full.astype(int) - heat.astype(int)).max() <= 1  # alpha 1: heat only

    # GIF of the word over the steps, then Export All
    d.find_element(By.CSS_SELECTOR, f"{INSPECT} .gif").click()
    wait(d, lambda d: data(d, INSPECT, "download") == "ready", what="the GIF")
    assert d.find_element(By.CSS_SELECTOR, f"{INSPECT} .gif-view").is_displayed()
    d.find_element(By.CSS_SELECTOR, f"{INSPECT} .export").click()
    zips = wait(d, lambda d: [p for p in downloads.glob("*.zip")], what="the ZIP download")
    names = set(zipfile.ZipFile(zips[0]).namelist())
    words = ["a", "red", "circle", "above", "a#2", "blue", "square", "on", "a#3", "yellow", "background", "Global"]
    for i, w in enumerate(words):
        slug = f"{i:02d}_{w.replace('#', '_')}"
        assert {f"frames/{slug}/step_{s:03d}.png" for s in range(6)} <= names, slug
        assert f"gifs/{slug}.gif" in names
    assert {"measures.csv", "summary.csv", "coco.json", "final.png", "export.json", "plots/mass.png"} <= names

    # Region-to-region: drag a box over the image, compute, early/mid/late side by side
    tab(d, "regions")
    board = d.find_element(By.ID, "rg-canvas")
    wait(d, lambda d: d.execute_script("return document.getElementById('rg-grid').textContent").startswith("Image 128"))
    d.find_element(By.CSS_SELECTOR, "input[name=rg-mode][value=box]").click()
    ActionChains(d).move_to_element_with_offset(board, -150, -150).click_and_hold().move_by_offset(120, 100).release().perform()
    box = d.find_element(By.ID, "rg-box").get_attribute("value")
    (x0, y0), (x1, y1) = [tuple(int(v) for v in p.split(",")) for p in box.split()]
    assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and x1 - x0 > 20, box
    d.find_element(By.ID, "rg-box-go").click()
    wait(d, lambda d: data(d, "#rg-results", "state") in ("ready", "error"), what="the box's heat maps")
    assert data(d, "#rg-results", "state") == "ready", d.find_element(By.ID, "rg-status").text
    captions = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#rg-results figcaption")]
    assert [c.split()[0] for c in captions] == ["early", "mid", "late"]
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rg-results canvas.answer")) == 3, 20, "the box drawn on the answers")
    answer = canvas(d, "#rg-results canvas.answer")
    edge = answer[y0 - 1 : y0 + 2, x0 + 3 : x1 - 3].astype(int)  # [3, w, 3] rows around the box's top edge
    assert (np.abs(edge - [0x35, 0xE0, 0xFF]).sum(2).min(0) < 60).mean() > 0.8  # drawn in the outline colour
    d.save_screenshot(str(shots / "explorer_regions.png"))

    # a polygon of two points and a pixel out of range: a clear line in the page, and it keeps working
    d.find_element(By.CSS_SELECTOR, "input[name=rg-mode][value=polygon]").click()
    for dx, dy in ((-100, -100), (-40, -60)):
        ActionChains(d).move_to_element_with_offset(board, dx, dy).click().perform()
    d.find_element(By.ID, "rg-poly-go").click()
    wait(d, lambda d: "at least 3 points, got 2" in d.find_element(By.ID, "rg-status").text, what="the polygon error")
    d.find_element(By.ID, "rg-pixels").send_keys("0-99999")
    d.find_element(By.ID, "rg-pixels-go").click()
    wait(d, lambda d: "out of range" in d.find_element(By.ID, "rg-status").text, what="the pixel error")
    d.find_element(By.ID, "rg-pixels").clear()
    d.find_element(By.ID, "rg-pixels").send_keys("100")
    d.find_element(By.ID, "rg-pixels-go").click()
    wait(d, lambda d: "pixel query over 1 of 256" in d.find_element(By.ID, "rg-status").text, what="a good query after bad ones")

    # an unknown word and a prompt over the token limit, from the page
    tab(d, "inspect")
    prompt = d.find_element(By.ID, "gen-prompt")
    prompt.clear()
    prompt.send_keys("a red circle " * 12)
    d.find_element(By.ID, "gen-go").click()
    wait(d, lambda d: "token limit" in d.find_element(By.ID, "gen-status").text, what="the prompt-length error")
    assert "error" in d.find_element(By.ID, "gen-status").get_attribute("class")
    status, answer = call(srv.url + f"api/runs/{run.id}/word.gif?word=zebra")
    assert status == 400 and "choose one of: Global" in answer["error"]

    tab(d, "heads")
    assert [o.text for o in Select(d.find_element(By.ID, "heads-concept")).options] == ["background", "colour", "position", "shape", "size"]
    Select(d.find_element(By.ID, "heads-concept")).select_by_value("shape")
    Select(d.find_element(By.ID, "heads-word")).select_by_value("circle")
    k = d.find_element(By.ID, "heads-k")
    k.clear()
    k.send_keys("4")
    d.find_element(By.ID, "heads-go").click()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#heads-out img")) == 3, what="three head aggregations")
    captions = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#heads-out figcaption")]
    assert captions == ["all heads (“circle”)", "4 most relevant heads (“circle”)", "4 least relevant heads (“circle”)"]
    d.save_screenshot(str(shots / "explorer_heads.png"))
    for name in ("detect", "titan"):
        tab(d, name)
        time.sleep(0.2)
        d.save_screenshot(str(shots / f"explorer_{name}.png"))
    from bridge.explore.analysis import availability

    note = d.find_element(By.ID, "titan-unavailable")
    if availability().available:  # TITAN on the generated image, through the seam
        assert not note.is_displayed()
        d.find_element(By.ID, "titan-go").click()
        wait(d, lambda d: d.find_element(By.ID, "titan-status").text in ("done",) or "error" in d.find_element(By.ID, "titan-status").get_attribute("class"))
        assert d.find_element(By.ID, "titan-status").text == "done"
        assert d.find_elements(By.CSS_SELECTOR, "#titan-out img") and d.find_elements(By.CSS_SELECTOR, "#titan-out .instances li")
        d.save_screenshot(str(shots / "explorer_titan.png"))
    else:
        assert "Not available: bridge.analysis.objects is not installed" in note.text
        assert not d.find_element(By.ID, "titan-go").is_displayed()


def test_live_follows_a_run_in_two_tabs_and_a_closed_tab_leaks_nothing(browser, explorer, shapes_pipe, shots):
    from bridge.explore.live import LiveSink
    from bridge.stream.fanout import FanOut
    from bridge.runner import Request, Runner

    ex, srv = explorer
    d = browser
    first = d.current_window_handle
    d.get(srv.url + "#live")
    d.switch_to.new_window("tab")
    second = d.current_window_handle
    d.get(srv.url + "#live")
    wait(d, lambda d: ex.hub.clients == 2, 20, "two live clients")
    tasks_with_two = server_tasks(ex)

    fanout = FanOut([LiveSink(ex.hub)])
    runner = Runner(shapes_pipe, fanout.publish, "stepx-shapes", step_clock=lambda run_id, step: time.sleep(0.4))  # a slower model
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(r=runner.run(Request(prompt="a blue square left of a red star", seed=4, steps=10))))
    worker.start()
    try:
        wait(d, lambda d: int(d.execute_script("return document.body.dataset.liveSeen || 0")) >= 2, 60, "steps in the second tab")
        d.switch_to.window(first)
        d.close()  # mid-stream
        d.switch_to.window(second)
        wait(d, lambda d: ex.hub.clients == 1, 20, "the closed tab's client to go")
        worker.join(120)
        run_id = result["r"].run_id
        wait(d, lambda d: d.execute_script("return document.body.dataset.liveEnd") == run_id, 30, "the run's end")
    finally:
        worker.join(120)
        fanout.close()
    seen = int(d.execute_script("return document.body.dataset.liveSeen"))
    assert seen >= 5, f"the page saw {seen} of 10 steps"  # step by step, not only the last
    assert d.execute_script("return document.body.dataset.liveDrawn") == "9"
    assert "a blue square left of a red star" in d.find_element(By.ID, "live-prompt").text
    words = [o.text for o in Select(d.find_element(By.ID, "live-word")).options]
    assert words[:3] == ["Global (sum over words)", "a", "blue"]
    Select(d.find_element(By.ID, "live-word")).select_by_visible_text("square")
    heat = canvas(d, "#live-heat")
    assert heat.std() > 5  # a drawn heat map, not a blank canvas
    d.save_screenshot(str(shots / "explorer_live.png"))
    assert server_tasks(ex) <= tasks_with_two - 2  # the closed tab's handler and watcher tasks are gone, nothing waits for it
    assert ex.hub.clients == 1


def test_traces_open_in_the_page(browser, explorer, shapes_pipe, shots, tmp_path):
    ex, srv = explorer
    d = browser
    d.get(srv.url + "?fresh#traces")
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready"), what="the page to start")
    path = record_trace(shapes_pipe, tmp_path / "night.stepx", "a yellow star above a green triangle", steps=5)
    d.find_element(By.ID, "trace-file").send_keys(str(path))
    view = "#trace-view .inspector"
    wait(d, lambda d: "night.stepx: 1 run(s)" in d.find_element(By.ID, "trace-status").text, 60, "the trace to open")
    wait(d, lambda d: data(d, view, "state") == "ready", 60, "the trace to be drawn")
    d.find_element(By.CSS_SELECTOR, f"{view} .step").send_keys(Keys.HOME)
    wait(d, lambda d: data(d, view, "step") == "0" and data(d, view, "state") == "ready")
    Select(d.find_element(By.CSS_SELECTOR, f"{view} .word")).select_by_value("star")
    wait(d, lambda d: data(d, view, "word") == "star" and data(d, view, "state") == "ready")
    d.save_screenshot(str(shots / "explorer_traces.png"))
    corrupt = tmp_path / "broken.stepx"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    corrupt.write_bytes(bytes(raw))
    d.find_element(By.ID, "trace-file").send_keys(str(corrupt))
    # the reader steps over the damaged record: the page opens what is intact and names the damage
    wait(d, lambda d: "broken.stepx is damaged: skipped 1 damaged stretch" in d.find_element(By.ID, "trace-status").text,
         30, "the damaged-trace message")


@pytest.mark.parametrize("encoding", ["float32", "float16", "uint8"])
def test_the_page_decodes_the_wire_format_as_python_encodes_it(browser, explorer, encoding):
    """static/wire.js against bridge's encoder: every float encoding, a uint8 image, the header."""
    from bridge.protocol import Packet
    from bridge.protocol import encode

    ex, srv = explorer
    d = browser
    if not d.current_url.startswith(srv.url):
        d.get(srv.url)
    rng = np.random.default_rng(7)
    textures = rng.random((3, 5, 4), dtype=np.float32)  # [maps, H, W]
    image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    data = encode(Packet("step", {"run_id": "r1", "step": 3, "phase": 1, "words": ["a", "b"]}, {"textures": textures, "image": image}), encoding)
    got = d.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const p = decodeWire(bytes.buffer);
        return {kind: p.kind, step: p.header.step, words: p.header.words, tshape: p.arrays.textures.shape,
                textures: Array.from(p.arrays.textures.data), ishape: p.arrays.image.shape, image: Array.from(p.arrays.image.data)};
    """, base64.b64encode(data).decode())
    assert got["kind"] == "step" and got["step"] == 3 and got["words"] == ["a", "b"]
    assert got["tshape"] == [3, 5, 4] and got["ishape"] == [6, 5, 3]
    tol = {"float32": 1e-7, "float16": 1e-3, "uint8": 0.5 / 255 + 1e-7}[encoding]
    np.testing.assert_allclose(np.asarray(got["textures"]).reshape(3, 5, 4), textures, atol=tol)
    np.testing.assert_array_equal(np.asarray(got["image"]).reshape(6, 5, 3), image)
    bad = d.execute_script("try { decodeWire(new Uint8Array([115, 0, 1, 2]).buffer); return 'decoded'; } catch (e) { return e.message; }")
    assert "truncated" in bad
