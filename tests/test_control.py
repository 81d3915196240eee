"""Control: validation, fuzzing, and both servers on real loopback sockets."""

import json
import socket

import pytest
import zmq
from hypothesis import given, settings, strategies as st
from pythonosc.osc_packet import OscPacket

from bridge.transport import osc_encode
from bridge.transport.control import ControlError, handle_json, parse_request
from bridge.transport.control_osc import ControlOscServer
from bridge.transport.control_zmq import ControlZmqServer

calls = []


def handler(req):
    calls.append(req)
    return {"queued": req.cmd}


def test_parse_generate_and_errors():
    r = parse_request({"cmd": "start", "prompt": "a cat", "seed": 3, "steps": 20, "focus": ["cat"],
                       "phase_boundaries": [0.3, 0.7], "concept": "texture", "id": 9})
    assert r.cmd == "generate" and r.params.seed == 3 and r.params.phase_boundaries == (0.3, 0.7) and r.id == 9
    for bad, msg in [({"cmd": "fly"}, "one of"), ({"cmd": "generate"}, "prompt"),
                     ({"cmd": "generate", "prompt": "x", "steps": 0}, "out of range"),
                     ({"cmd": "generate", "prompt": "x", "guidance": float("nan")}, "guidance"),
                     ({"cmd": "generate", "prompt": "x", "phase_boundaries": [0.8, 0.2]}, "0 < a < b < 1"),
                     ({"cmd": "generate", "prompt": "x", "head_weights": [1], "concept": "c"}, "not both"),
                     ({"cmd": "generate", "prompt": "x", "sed": 1}, "unknown field"),
                     ({"cmd": "playlist", "items": [{"prompt": "a"}, {"prompt": ""}]}, "item 1")]:
        with pytest.raises(ControlError, match=msg):
            parse_request(bad)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["cmd", "prompt", "seed", "steps", "guidance", "focus", "items",
                                                  "phase_boundaries", "head_weights", "concept", "id", "loop"]),
                                 json_values).map(lambda d: json.dumps(d).encode()),
                 st.binary(max_size=200)))
def test_fuzz_handle_json_always_replies(data):
    reply = json.loads(handle_json(data, handler))
    assert isinstance(reply["ok"], bool) and (reply["ok"] or isinstance(reply["error"], str))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.one_of(st.integers(-2**31, 2**31 - 1), st.floats(width=32, allow_nan=False),
                                                   st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=10)),
                                         max_size=4),  # an OSC string is UTF-8 up to its first NUL: no NUL, no lone surrogate
       st.sampled_from(["/stepx/seed", "/stepx/steps", "/stepx/prompt", "/stepx/focus", "/stepx/start",
                        "/stepx/control", "/stepx/phase_boundaries", "/nope"]))
def test_fuzz_osc_datagrams(blob, args, addr):
    srv = _parser_only()
    peer = ("127.0.0.1", 1)
    assert srv.handle_datagram(blob, peer) is None or blob.startswith(b"/stepx/") or blob.startswith(b"#bundle")
    reply = srv.handle_datagram(osc_encode.message(addr, *args), peer)
    assert reply is None if addr == "/nope" else isinstance(reply["ok"], bool)


def _parser_only():
    """A ControlOscServer without its socket (the datagram logic alone)."""
    import threading
    from collections import OrderedDict

    srv = ControlOscServer.__new__(ControlOscServer)
    srv.handler, srv.token, srv.defaults = handler, None, None
    srv.staged, srv.known, srv._lock = OrderedDict(), OrderedDict(), threading.Lock()
    return srv


def test_remote_bind_needs_flag():
    with pytest.raises(ControlError, match="allow_remote"):
        ControlZmqServer(handler, "tcp://0.0.0.0:*")
    with pytest.raises(ControlError, match="allow_remote"):
        ControlOscServer(handler, "0.0.0.0", 0)


def test_zmq_server_survives_garbage_and_checks_token():
    srv = ControlZmqServer(handler, "tcp://127.0.0.1:*", token="s3cret")
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ); req.setsockopt(zmq.LINGER, 0); req.setsockopt(zmq.RCVTIMEO, 30_000)
    req.connect(srv.endpoint)
    try:
        for data, ok in [(b"\xff\xfe", False), (b"[1,2]", False), (b'{"cmd":"ping"}', False),
                         (b'{"cmd":"ping","token":"s3cret","id":"a"}', True),
                         (b'{"cmd":"generate","prompt":"x","steps":9999,"token":"s3cret"}', False)]:
            req.send(data)
            rep = json.loads(req.recv())
            assert rep["ok"] is ok, rep
        assert rep["error"].startswith("'steps' = 9999 is out of range")
    finally:
        req.close(); srv.close()


def test_osc_server_stages_params_then_starts():
    calls.clear()
    srv = ControlOscServer(handler, "127.0.0.1", 0)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); cli.settimeout(30.0)  # replies must come
    try:
        def ask(addr, *args):
            cli.sendto(osc_encode.message(addr, *args), ("127.0.0.1", srv.port))
            msg = OscPacket(cli.recv(65536)).messages[0].message
            assert msg.address == "/stepx/reply"
            return json.loads(msg.params[0])
        cli.sendto(b"garbage", ("127.0.0.1", srv.port))  # malformed, from an unknown peer: no reply
        # a new sender's first message is executed, but its reply may not outgrow the datagram:
        # 32 bytes cannot hold one, so none comes
        cli.sendto(osc_encode.message("/stepx/prompt", "a red fox"), ("127.0.0.1", srv.port))
        cli.settimeout(0.3)  # short: it asserts that no reply comes
        with pytest.raises(socket.timeout):
            cli.recv(65536)
        cli.settimeout(30.0)
        assert ask("/stepx/prompt", "a red fox")["ok"]  # now a known peer: full replies
        assert ask("/stepx/steps", 12)["ok"]
        assert not ask("/stepx/steps", -1)["ok"]
        cli.sendto(b"garbage", ("127.0.0.1", srv.port)); cli.recv(65536)  # a known peer gets the error
        rep = ask("/stepx/start")
        assert rep == {"ok": True, "id": None, "cmd": "generate", "result": {"queued": "generate"}}
        assert calls[-1].params.prompt == "a red fox" and calls[-1].params.steps == 12
        assert ask("/stepx/control", json.dumps({"cmd": "cancel"}))["ok"]
    finally:
        cli.close(); srv.close()
