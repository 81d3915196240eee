"""The explorer's server without a browser: region parsing, the live hub, traces, and what bad
input gets over real HTTP (a real uvicorn server on a free port)."""

from __future__ import annotations

import asyncio
import io
import zipfile

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the explorer extra (starlette, uvicorn) is not installed")

from explore_helpers import call, record_trace

from bridge.explore.live import LiveHub, _Client, packet_kind
from bridge.explore.regions import (
    RegionError,
    parse_indices,
    parse_points,
    query_from_request,
)
from bridge.explore.runs import GLOBAL, InspectRun, runs_from_trace, scaled
from bridge.protocol import Packet
from bridge.protocol import encode


# --- regions (pure) ----------------------------------------------------------------------------------
def test_pixel_specs_as_in_the_guide():
    assert parse_indices("100", 1024) == [100]
    assert parse_indices("0-1023", 1024) == list(range(1024))
    assert parse_indices("0,1,2,3", 1024) == [0, 1, 2, 3]
    assert parse_indices(" 5, 3-4  9 ", 16) == [3, 4, 5, 9]


@pytest.mark.parametrize("spec, words", [
    ("300", "out of range"), ("", "no pixel index"), ("a", "not a pixel index"), ("9-3", "backwards"), ("0-256", "0-255"),
])
def test_bad_pixel_specs_say_what_is_wrong(spec, words):
    with pytest.raises(RegionError, match=words):
        parse_indices(spec, 256)


def test_polygon_text_in_both_spellings():
    assert parse_points("1,2 3,4 5,6") == parse_points("1 2 3 4 5 6") == [(1, 2), (3, 4), (5, 6)]
    with pytest.raises(RegionError, match="odd count"):
        parse_points("1,2 3")
    with pytest.raises(RegionError, match="not a number"):
        parse_points("1,2 x,4 5,6")


def test_requests_become_queries_in_normalised_coordinates():
    q = query_from_request({"kind": "box", "x0": 64, "y0": 0, "x1": 0, "y1": 32}, (128, 128), (16, 16))
    assert q.kind == "box" and q.points == ((0.0, 0.0), (0.5, 0.25))
    q = query_from_request({"kind": "pixels", "spec": "17"}, (128, 128), (16, 16))  # row 1, column 1
    assert q.kind == "pixel" and q.points == ((1.5 / 16, 1.5 / 16),)
    assert query_from_request({"kind": "polygon", "spec": "0,0 128,0 0,128"}, (128, 128), (16, 16)).kind == "polygon"
    assert query_from_request({"kind": "diffused", "x": 5, "y": 5}, (128, 128), (16, 16)).iterations == 2
    with pytest.raises(RegionError, match="at least 3 points, got 2"):
        query_from_request({"kind": "polygon", "spec": "1,1 5,5"}, (128, 128), (16, 16))
    with pytest.raises(RegionError, match="outside the 128×128 image"):
        query_from_request({"kind": "pixel", "x": 200, "y": 5}, (128, 128), (16, 16))
    with pytest.raises(RegionError, match="no area"):
        query_from_request({"kind": "box", "x0": 5, "y0": 5, "x1": 5, "y1": 50}, (128, 128), (16, 16))
    with pytest.raises(RegionError, match="unknown region kind"):
        query_from_request({"kind": "lasso"}, (128, 128), (16, 16))


# --- runs (pure) ----------------------------------------------------------------------------------------
def test_global_is_the_sum_over_words_scaled():
    maps = np.zeros((2, 2, 2, 2), np.float32)  # [T, words, H, W]
    maps[1, 0, 0, 0], maps[1, 1, 1, 1], maps[1, 1, 0, 0] = 1.0, 3.0, 1.0
    run = InspectRun({}, ["red", "red"], np.arange(2), maps)
    assert run.choices() == [GLOBAL, "red", "red#2"]
    np.testing.assert_allclose(run.heat(GLOBAL, 1), [[2 / 3, 0], [0, 1]])
    np.testing.assert_allclose(run.heat("red#2", 1), [[1 / 3, 0], [0, 1]])
    assert not run.heat(GLOBAL, 0).any()  # an all-zero map stays zero, no division by zero
    with pytest.raises(ValueError, match="choose one of: Global, red, red#2"):
        run.heat("blue", 1)
    with pytest.raises(ValueError, match="step 7 is not in this run"):
        run.heat("red", 7)
    assert scaled(np.array([[np.nan, 2.0]])).tolist() == [[0.0, 1.0]]


# --- live hub -----------------------------------------------------------------------------------------------
def _wire(kind, **header):
    arrays = {"textures": np.ones((2, 2, 2), np.float32)} if kind == "step" else {}
    return encode(Packet(kind, {"run_id": "r", **header}, arrays))


def test_a_client_keeps_run_and_end_and_only_the_newest_step():
    c = _Client()
    for seq, (kind, step) in enumerate([("run", None), ("step", 0), ("step", 1), ("image", 1), ("step", 2), ("end", None)]):
        c.offer(seq, kind, _wire(kind, step=step))
    got = [packet_kind(d) for d in c.take()]
    assert got == ["run", "image", "step", "end"] and c.dropped == 2


def test_a_late_joiner_gets_the_current_run_first():
    hub = LiveHub()
    for kind, step in [("run", None), ("step", 0), ("step", 1)]:
        hub.push(_wire(kind, step=step))

    class FakeSocket:  # only what LiveHub.serve touches; the real socket is tested in the browser tests
        def __init__(self):
            self.sent, self.closing = [], asyncio.Event()

        async def send_bytes(self, data):
            self.sent.append(data)
            if len(self.sent) == 2:
                self.closing.set()

        async def receive_text(self):
            from starlette.websockets import WebSocketDisconnect

            await self.closing.wait()
            raise WebSocketDisconnect(1000)

    ws = FakeSocket()
    asyncio.run(asyncio.wait_for(hub.serve(ws), 30))  # a hang guard
    from bridge.protocol import decode

    assert [decode(d).kind for d in ws.sent] == ["run", "step"] and decode(ws.sent[1]).step == 1
    assert hub.clients == 0  # gone once closed


# --- the server over HTTP --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def concepts(shapes_pipe, tmp_path_factory):
    """A head-weights folder as `stepx serve --concepts` reads it: one JSON file per concept."""
    import json

    from bridge.capture import Capture

    folder = tmp_path_factory.mktemp("concepts")
    layers = Capture(shapes_pipe).cross_layers
    rng = np.random.default_rng(0)
    (folder / "shape.json").write_text(json.dumps({l.name: rng.random(l.heads).round(4).tolist() for l in layers}))
    (folder / "other_model.json").write_text(json.dumps({"down_blocks.9.attn2": [1.0, 0.5]}))
    return folder


@pytest.fixture(scope="module")
def server(shapes_pipe, concepts):
    from bridge.explore.app import Explorer, create_app
    from bridge.explore.engine import Engine
    from bridge.explore.server import BackgroundServer

    engine = Engine(device="cpu")
    engine._models["shapes"] = (shapes_pipe, "stepx-shapes")  # the module's pipeline: loaded once
    srv = BackgroundServer(create_app(Explorer(engine, concepts_dir=str(concepts)))).start()
    yield srv
    srv.stop()


def test_bad_input_gets_one_line_and_the_server_keeps_serving(server, tmp_path):
    u = server.url
    status, run = call(u + "api/generate", {"prompt": "a red circle above a blue square", "steps": 4, "seed": 2})
    assert status == 200 and run["words"][0] == GLOBAL and run["steps"] == [0, 1, 2, 3]
    rid = run["id"]
    bad = [
        (u + "api/generate", {"prompt": "a red circle " * 12, "steps": 2}, 400, "32"),
        (u + "api/generate", {"prompt": "  ", "steps": 2}, 400, "'prompt' must not be empty"),
        (u + "api/generate", {"prompt": "a circle", "steps": 0}, 400, "'steps' = 0 is out of range"),
        (u + "api/generate", {"prompt": "a circle", "seed": 2.5}, 400, "'seed' must be an integer"),
        (u + "api/generate", {"prompt": "a circle", "focus": ["circle"]}, 400, "takes no 'focus'"),
        (u + "api/generate", {"prompt": "a circle", "model": str(tmp_path / "no-model")}, 400, "cannot load the model"),
        (u + "api/generate", [1, 2], 400, "must be a JSON object"),
        (u + f"api/runs/{rid}/region", {"kind": "polygon", "spec": "1,1 9,9"}, 400, "at least 3 points"),
        (u + f"api/runs/{rid}/region", {"kind": "pixels", "spec": "999"}, 400, "out of range"),
        (u + f"api/runs/{rid}/heat.png?word=zebra&step=1", None, 400, "not a word of this prompt"),
        (u + f"api/runs/{rid}/heat.png?word=red&step=-3", None, 400, "step must be in 0-3"),
        (u + "api/runs/nope/image.png", None, 404, "no run 'nope'"),
        (u + "api/traces?name=junk.stepx", b"this is not a trace at all" * 10, 400, "junk.stepx cannot be opened"),
    ]
    for url, body, want, words in bad:
        status, answer = call(url, raw=body) if isinstance(body, bytes) else call(url, body)
        assert status == want, (url, answer)
        assert words in answer["error"] and "\n" not in answer["error"], answer
    status, png = call(u + f"api/runs/{rid}/overlay.png?word=circle&step=3&alpha=0.5")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"  # still serving


def test_a_trace_opens_with_no_model_and_exports(server, shapes_pipe, tmp_path):
    path = record_trace(shapes_pipe, tmp_path / "two words.stepx", "a green triangle", steps=4)
    status, answer = call(server.url + "api/traces?name=two%20words.stepx", raw=path.read_bytes())
    assert status == 200, answer
    (run,) = answer["runs"]
    assert run["source"] == "trace" and run["words"] == [GLOBAL, "a", "green", "triangle"] and not run["regions"]
    status, answer = call(server.url + f"api/runs/{run['id']}/region", {"kind": "pixel", "x": 3, "y": 3})
    assert status == 400 and "from a trace" in answer["error"]
    status, data = call(server.url + f"api/runs/{run['id']}/export.zip")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert status == 200 and "gifs/02_triangle.gif" in names and "measures.csv" in names and "frames/03_Global/step_003.png" in names
    runs, problem = runs_from_trace(path)
    assert runs[0].words == ["a", "green", "triangle"] and problem is None


def test_the_zeromq_feed_pushes_what_a_publisher_sends():
    """``stepx explore --live`` (and ``serve --explore`` with a sink process): a real PUB socket."""
    import socket
    import time

    from bridge.explore.live import ZmqFeed
    from bridge.transport.zmq_pub import ZmqPublisher

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pub = ZmqPublisher(f"tcp://127.0.0.1:{port}")
    hub = LiveHub()
    feed = ZmqFeed(hub, f"tcp://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while hub.received < 3 and time.monotonic() < deadline:  # a SUB socket joins late: send until it hears
            pub.send_bytes(_wire("run"))
            time.sleep(0.05)
        pub.send_bytes(_wire("step", step=4))
        while "step" not in hub._current and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hub.received >= 3 and "step" in hub._current
    finally:
        feed.close()
        pub.close()
    assert not feed._thread.is_alive()


def test_head_relevance_compares_all_top_and_bottom_heads(server):
    u = server.url
    status, info = call(u + "api/info")
    assert info["concepts"] == ["other_model", "shape"]
    status, run = call(u + "api/generate", {"prompt": "a red circle", "steps": 3, "seed": 5})
    status, answer = call(u + f"api/runs/{run['id']}/heads", {"concept": "shape", "word": "circle", "k": 4})
    assert status == 200, answer
    maps = answer["maps"]
    assert set(maps) == {"all", "top", "bottom"} and answer["heads"] > 4
    assert len({maps["all"], maps["top"], maps["bottom"]}) == 3  # three different aggregations, three pictures
    ex = server.server.config.app.state.explorer
    inspected = ex.runs[run["id"]]
    relevance = ex.relevance("shape")
    got = ex.engine.compare_heads(inspected, relevance, "circle", 4)
    np.testing.assert_allclose(got["all"], inspected.heat("circle", 2), atol=1e-5)  # uniform weights: DAAM's map
    assert not np.allclose(got["top"], got["bottom"])
    for body, words in [({"concept": "nope", "word": "circle"}, "unknown concept 'nope'; known: other_model, shape"),
                        ({"concept": "other_model", "word": "circle", "k": 1}, "do not fit"),
                        ({"concept": "shape", "word": "circle", "k": 0}, "k must be 1-"),
                        ({"concept": "shape", "word": "square"}, "not a word of this prompt")]:
        status, answer = call(u + f"api/runs/{run['id']}/heads", body)
        assert status == 400 and words in answer["error"], answer


def _objects_available() -> bool:
    from bridge.explore.analysis import availability

    return availability().available


@pytest.mark.skipif(_objects_available(), reason="bridge.analysis.objects is installed: the tabs work (next test)")
def test_object_tabs_say_plainly_when_the_package_is_missing(server):
    status, run = call(server.url + "api/generate", {"prompt": "a red circle", "steps": 2})
    for path, body in (("titan", {}), ("detect", {"text": "red circle"})):
        status, answer = call(server.url + f"api/runs/{run['id']}/{path}", body)
        assert status == 501 and "bridge.analysis.objects is not installed" in answer["error"]
    assert call(server.url + "api/info")[1]["analysis"]["titan"]["available"] is False


@pytest.mark.skipif(not _objects_available(), reason="bridge.analysis.objects (the objects engineer's package) is not installed")
def test_titan_and_text_guided_detection_through_the_seam(server):
    status, run = call(server.url + "api/generate", {"prompt": "a red circle above a blue square", "steps": 8, "seed": 3})
    status, titan = call(server.url + f"api/runs/{run['id']}/titan", {})
    assert status == 200, titan
    assert {i["category"] for i in titan["instances"]} <= {"red circle", "blue square"} and titan["instances"]
    assert titan["images"][0]["src"].startswith("data:image/png;base64,")
    assert {c["name"] for c in titan["coco"]["categories"]} == {i["category"] for i in titan["instances"]}
    assert len(titan["coco"]["annotations"]) == len(titan["instances"]) and titan["coco"]["images"][0]["width"] == 128
    status, found = call(server.url + f"api/runs/{run['id']}/detect", {"text": "blue square"})
    assert status == 200 and {i["category"] for i in found["instances"]} <= {"blue square"}
    status, answer = call(server.url + f"api/runs/{run['id']}/detect", {"text": "green star"})
    assert status == 400 and "a, red, circle" in answer["error"]


def test_every_region_kind_answers_with_early_mid_late(server, shapes_pipe):
    import torch

    from bridge.capture import Capture, CaptureConfig, Query

    u = server.url
    status, run = call(u + "api/generate", {"prompt": "a red circle above a blue square", "steps": 5, "seed": 9, "guidance": 4.0})
    for body in ({"kind": "pixel", "x": 100, "y": 40}, {"kind": "pixels", "spec": "0,1,2, 17-19"},
                 {"kind": "box", "x0": 10, "y0": 10, "x1": 70, "y1": 50}, {"kind": "polygon", "spec": "10,10 100,20 60,110"},
                 {"kind": "diffused", "x": 100, "y": 40, "iterations": 3}):
        status, answer = call(u + f"api/runs/{run['id']}/region", body)
        assert status == 200, answer
        assert [(k, v["step"]) for k, v in answer["stages"].items()] == [("early", 1), ("mid", 2), ("late", 4)]
        assert answer["query"] == ("pixels" if body["kind"] == "pixels" else body["kind"])
    # the maps are the capture's own for that query on the same request
    ex = server.server.config.app.state.explorer
    query = Query.box("region", 10 / 128, 10 / 128, 70 / 128, 50 / 128)
    got = ex.engine.region(ex.runs[run["id"]], query)["maps"]  # [T, H, W]
    with torch.inference_mode(), Capture(shapes_pipe, CaptureConfig(queries=[query], cross=False)) as cap:
        shapes_pipe("a red circle above a blue square", num_inference_steps=5, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(9), output_type="latent")
    want = np.stack([f.self_maps["region"][0].numpy() for f in cap.last_run.frames])
    np.testing.assert_allclose(got, want / want.max(axis=(1, 2), keepdims=True), atol=1e-5)


def test_an_explorer_open_to_the_network_loads_only_its_listed_models():
    from bridge.explore.engine import Engine, GenerateRequest

    engine = Engine(device="cpu", allowed=["tiny"])
    assert engine.allowed == ["shapes", "tiny"]
    with pytest.raises(ValueError, match=r"loads only shapes, tiny \(its --model options\), not '/etc/model.ckpt'"):
        engine.generate(GenerateRequest.checked({"prompt": "a red circle", "model": "/etc/model.ckpt"}))


def test_generate_without_guidance_takes_the_models_own_default():
    """An empty Guidance field means the model's default (4.0 for the embedded model), as every door."""
    from bridge.explore.engine import GenerateRequest

    assert GenerateRequest.checked({"prompt": "a red circle", "guidance": None}).guidance == 4.0
    assert GenerateRequest.checked({"prompt": "a red circle", "model": "some/sd15"}).guidance == 7.5
    assert GenerateRequest.checked({"prompt": "a red circle", "guidance": 2.5}).guidance == 2.5


def test_the_background_server_leaves_the_commands_signal_handlers_alone():
    """stepx explore sets Ctrl+C/SIGTERM to stop itself; uvicorn, on its own thread, must not take them."""
    import signal

    from starlette.applications import Starlette

    from bridge.explore.server import BackgroundServer

    def mine(*_):
        return None

    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        srv = BackgroundServer(Starlette()).start()
        try:
            assert srv.port != 0
            assert all(signal.getsignal(sig) is mine for sig in before)
        finally:
            srv.stop()
        assert all(signal.getsignal(sig) is mine for sig in before)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
