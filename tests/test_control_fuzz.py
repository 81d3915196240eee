"""A bounded control fuzzer on real sockets: nothing a client sends may silence control.

ZeroMQ (a ROUTER server; REQ, DEALER and raw-TCP clients) and OSC (UDP): huge numbers, huge
payloads, deep nesting, random bytes, bad UTF-8, lone surrogates, wrong types, garbage peers.
After every batch the loop must still answer a ping; every answer is a reply or a clear error
(never an "internal"/"could not be validated" one: each of those is a validation gap); OSC sends
at most one reply per datagram, none to malformed datagrams from unknown peers, and never one
larger than the datagram to a peer it does not know yet.
"""

from __future__ import annotations

import json
import random
import socket
import struct

import pytest
import zmq

from bridge.daemon import Daemon, DaemonOptions
from bridge.runner import Runner
from bridge.transport import osc_encode
from bridge.transport.control_osc import ControlOscServer
from bridge.transport.control_zmq import ControlZmqServer
from bridge.request import FIELD_NAMES, MAX_REQUEST_BYTES, GenerateParams

SEED = 1234
GAPS = ("internal error", "could not be", "failed:")  # replies that mean a check was missing


@pytest.fixture(scope="module")
def handler(sd_pipe):
    """The real daemon's handler (door checks included), its loop not running: requests only queue."""
    runner = Runner(sd_pipe, lambda p: None, "tiny", image_every=0)
    return Daemon(runner, lambda p: None, DaemonOptions(idle_replay=False)).handle


HUGE = int("9" * 300)


def hostile_requests(rng: random.Random) -> list[bytes]:
    """Requests that broke or wedged the control loop before, and their relatives."""
    out: list[bytes] = []
    numeric = ("seed", "steps", "guidance", "width", "height")
    for field in numeric:
        for v in (HUGE, -HUGE, "1" + "0" * 400, "1e400", "-1e400", "NaN", "Infinity", "1797" + "6" * 305):
            out.append(f'{{"cmd":"generate","prompt":"a","{field}":{v}}}'.encode())
    for field in FIELD_NAMES:
        for v in ([], {}, [[[[]]]], True, None, "x" * 5000, [HUGE], {"a": HUGE}, -1, 0.5, "\ud800"):
            out.append(json.dumps({"cmd": "generate", "prompt": "a red circle", field: v}).encode())
    for v in (HUGE, "\ud800", "\udfff" * 10, ["x"], {"a": 1}, True, 1.5):
        out.append(json.dumps({"cmd": "ping", "id": v}).encode())
        out.append(json.dumps({"cmd": "ping", "token": v}).encode())
        out.append(json.dumps({"cmd": v}).encode())
    out.append(json.dumps({"cmd": "playlist", "items": [{"prompt": "a", "seed": HUGE}]}).encode())
    out.append(json.dumps({"cmd": "playlist", "items": [{"prompt": "a"}] * 1001}).encode())
    out.append(json.dumps({"cmd": "generate", "prompt": "a red circle", "focus": ["dog"]}).encode())
    out.append(json.dumps({"cmd": "generate", "prompt": "a red circle", "concept": "nope"}).encode())
    out.append(json.dumps({"cmd": "generate", "prompt": "a red circle", "head_weights": [1.0] * 3}).encode())
    for depth in (100, 5000, 100_000):
        out.append(b"[" * depth + b"]" * depth)
        out.append(b'{"cmd":"generate","prompt":"a","focus":' + b"[" * depth + b"]" * depth + b"}")
    out += [b"\xff\xfe\xfd", b'{"cmd":"ping","id":"\xed\xa0\x80"}', b"", b"null", b"1e999999", b"9" * 5000]
    out += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(150)]
    return out


def _req(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 30_000)  # a reply that must come: a busy machine may take seconds
    s.connect(endpoint)
    return s


def _ping(ctx: zmq.Context, endpoint: str) -> dict:
    s = _req(ctx, endpoint)
    try:
        s.send(b'{"cmd":"ping","id":"alive"}')
        return json.loads(s.recv())
    finally:
        s.close()


def test_zmq_control_answers_everything_and_keeps_answering(handler):
    rng = random.Random(SEED)
    srv = ControlZmqServer(handler, "tcp://127.0.0.1:*")
    ctx = zmq.Context.instance()
    req = _req(ctx, srv.endpoint)
    try:
        requests = hostile_requests(rng)
        for i, data in enumerate(requests):
            req.send(data)
            reply = json.loads(req.recv())  # a REQ client is never left waiting: every request gets one
            assert isinstance(reply["ok"], bool), (data[:80], reply)
            if not reply["ok"]:
                assert not any(g in reply["error"] for g in GAPS), (data[:80], reply)
            if i % 50 == 0:
                assert _ping(ctx, srv.endpoint)["ok"]
        # over the size limit: a clear error, not silence (1.1 MB and 10 MB)
        for size in (MAX_REQUEST_BYTES + 1, 1_100_000, 10_000_000):
            req.send(b'{"cmd":"ping","pad":"' + b"x" * size + b'"}')
            reply = json.loads(req.recv())
            assert not reply["ok"] and "at most" in reply["error"]
        pong = _ping(ctx, srv.endpoint)
        assert srv.alive and pong["ok"] and pong["id"] == "alive" and pong["result"]["state"] == "idle"
    finally:
        req.close()
        srv.close()


def test_zmq_garbage_peers_never_steal_a_reply(handler):
    """Raw-TCP garbage, DEALERs with broken envelopes and peers that vanish mid-request: the
    legitimate client still gets every one of its replies (REP lost 6 of 6 pings here)."""
    rng = random.Random(SEED + 1)
    srv = ControlZmqServer(handler, "tcp://127.0.0.1:*")
    ctx = zmq.Context.instance()
    port = int(srv.endpoint.rsplit(":", 1)[1])
    good = _req(ctx, srv.endpoint)
    try:
        for round_ in range(40):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:  # not ZMTP at all
                raw.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(srv.endpoint)
            dealer.send_multipart(rng.choice([[b""], [b"", b""], [b"", b"a", b"b"], [b"\xff" * 10], [b"", b"{\"cmd\":\"ping\"}"]]))
            dealer.close()  # vanishes before its reply
            vanishing = _req(ctx, srv.endpoint)
            vanishing.send(b'{"cmd":"status"}')
            vanishing.close()
            good.send(json.dumps({"cmd": "ping", "id": round_}).encode())
            reply = json.loads(good.recv())
            assert reply["ok"] and reply["id"] == round_
    finally:
        good.close()
        srv.close()


# --- OSC -----------------------------------------------------------------------------------

def _osc(address: str, tags: str, *payload: bytes) -> bytes:
    return osc_encode.osc_string(address) + osc_encode.osc_string("," + tags) + b"".join(payload)


def hostile_datagrams(rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """(malformed: not control datagrams at all, well-formed but bad)."""
    malformed = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))) for _ in range(200)]
    malformed += [b"", b"/", b"#bundle\x00", b"#bundle\x00" + b"\x00" * 8 + b"\x7f\xff\xff\xff",
                  osc_encode.message("/other/thing", 1), osc_encode.message("/stepx", 1),
                  _osc("/stepx/prompt", "s", b"\xff\xfe\xfd\x00"),  # bad UTF-8 in a string
                  _osc("/stepx/seed", "i", b"\x00\x01")]  # a truncated argument
    good_but_bad = []
    for name in FIELD_NAMES:
        good_but_bad += [_osc(f"/stepx/{name}", "d", struct.pack(">d", v)) for v in (1e308, -1e308, float("inf"), float("nan"))]
        good_but_bad += [_osc(f"/stepx/{name}", "h", struct.pack(">q", v)) for v in (2**63 - 1, -(2**63))]
        good_but_bad += [osc_encode.message(f"/stepx/{name}", "x" * 1000), osc_encode.message(f"/stepx/{name}"),
                         _osc(f"/stepx/{name}", "T"), _osc(f"/stepx/{name}", "b", struct.pack(">i", 3) + b"abc\x00")]
    for obj in ({"cmd": "generate", "prompt": "a", "seed": HUGE}, {"cmd": "ping", "id": "\ud800"},
                {"cmd": "ping", "token": "\ud800"}, [[[[[]]]]]):
        good_but_bad.append(osc_encode.message("/stepx/control", json.dumps(obj)))
    good_but_bad.append(osc_encode.message("/stepx/control", "[" * 20_000 + "]" * 20_000))
    good_but_bad.append(osc_encode.message("/stepx/control", "{\"cmd\":\"generate\",\"prompt\":\"a\",\"seed\":" + "9" * 5000 + "}"))
    good_but_bad += [osc_encode.message("/stepx/start", 1), osc_encode.message("/stepx/nope"), osc_encode.message("/stepx/steps", 0)]
    return malformed, good_but_bad


class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = ("127.0.0.1", port)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def replies(self, quiet: float = 0.3, first: float | None = None) -> list[bytes]:
        """Every datagram that arrives until none has for ``quiet`` seconds; with ``first``, one
        is expected: wait up to that long for it (a loaded machine may take seconds to answer)."""
        out = []
        self.sock.settimeout(first if first is not None else quiet)
        while True:
            try:
                out.append(self.sock.recv(70_000))
            except socket.timeout:
                return out
            self.sock.settimeout(quiet)

    def close(self) -> None:
        self.sock.close()


def _reply_json(datagram: bytes) -> dict:
    from pythonosc.osc_packet import OscPacket

    msg = OscPacket(datagram).messages[0].message
    assert msg.address == "/stepx/reply"
    return json.loads(msg.params[0])


def test_osc_control_one_bounded_reply_per_datagram_and_keeps_answering(handler):
    rng = random.Random(SEED + 2)
    srv = ControlOscServer(handler, "127.0.0.1", 0)
    malformed, bad = hostile_datagrams(rng)
    stranger, amplifier, client = _Client(srv.port), _Client(srv.port), _Client(srv.port)
    try:
        for d in malformed:  # an unknown peer's garbage: silence (no reflection)
            stranger.send(d)
        assert stranger.replies() == []
        big = osc_encode.bundles([osc_encode.message("/stepx/ping")] * 3200, osc_encode.timetag(), 65_000)
        assert len(big) == 1 and len(big[0]) > 60_000
        amplifier.send(big[0])  # one 64 KB datagram of 3,200 messages: one reply, none of them run
        got = amplifier.replies(first=30)
        assert len(got) == 1 and len(got[0]) <= len(big[0])
        assert "at most" in _reply_json(got[0])["error"]
        fresh = [_Client(srv.port) for _ in bad]
        for c, d in zip(fresh, bad):  # each peer's first datagram: one reply at most, never larger than it
            c.send(d)
        for c, d in zip(fresh, bad):  # short waits: they bound replies (one, small); a late one is missed, never failed
            got = c.replies(0.5 if c is fresh[0] else 0.02)
            c.close()
            assert len(got) <= 1 and all(len(g) <= len(d) for g in got), (d[:60], got)
        client.send(osc_encode.message("/stepx/ping", "x" * 400))  # padded: room for the reply (a known peer after)
        client.replies(0.2, first=30)
        for k, d in enumerate(bad):  # a known peer: one full reply each, then the marker's
            client.send(d)
            client.send(osc_encode.message("/stepx/control", json.dumps({"cmd": "ping", "id": k})))
            got = []
            client.sock.settimeout(30.0)  # the marker's reply must come
            while True:
                reply = _reply_json(client.sock.recv(70_000))
                if reply.get("id") == k and reply.get("cmd") == "ping":
                    break
                got.append(reply)
            assert len(got) <= 1, (d[:60], got)
            for reply in got:
                assert reply["ok"] or not any(gap in reply["error"] for gap in GAPS), (d[:60], reply)
        client.send(osc_encode.message("/stepx/ping"))
        (pong,) = client.replies(first=30)
        assert _reply_json(pong)["ok"] and srv.alive
    finally:
        for c in (stranger, amplifier, client):
            c.close()
        srv.close()


def test_osc_staging_is_per_sender_with_reset(handler):
    seen = []
    srv = ControlOscServer(lambda req: seen.append(req) or {"queued": True}, "127.0.0.1", 0,
                           defaults=GenerateParams(prompt="", steps=9))
    a, b = _Client(srv.port), _Client(srv.port)

    def ask(c: _Client, *msg) -> dict:
        c.send(osc_encode.message(*msg))
        (r,) = c.replies(0.5, first=30)
        return _reply_json(r)

    try:
        for c in (a, b):  # become known (a padded ping)
            c.send(osc_encode.message("/stepx/ping", "x" * 400)); c.replies(0.2, first=30)
        assert ask(a, "/stepx/prompt", "a red circle")["ok"]
        assert ask(a, "/stepx/width", 256)["ok"] and ask(a, "/stepx/height", 128.0)["ok"]
        assert not ask(b, "/stepx/steps", 100000)["ok"]  # b's bad value ...
        assert ask(a, "/stepx/start")["ok"]  # ... does not touch a's staging
        p = seen[-1].params
        assert (p.prompt, p.width, p.height, p.steps) == ("a red circle", 256, 128, 9)  # steps: the server's default
        assert "prompt" in ask(b, "/stepx/start")["error"]  # b staged no prompt
        assert ask(a, "/stepx/reset")["ok"]
        assert "prompt" in ask(a, "/stepx/start")["error"]
    finally:
        a.close(); b.close(); srv.close()


def test_token_is_checked_on_bytes_and_a_lone_surrogate_is_refused(handler):
    srv = ControlZmqServer(handler, "tcp://127.0.0.1:*", token="s3cret")
    osc = ControlOscServer(handler, "127.0.0.1", 0, token="s3cret")
    ctx = zmq.Context.instance()
    req = _req(ctx, srv.endpoint)
    c = _Client(osc.port)
    try:
        for tok in ("\ud800", "s3cre\ud800", "", "s3cret" * 1000, "s3cret\x00"):
            req.send(json.dumps({"cmd": "ping", "token": tok}).encode())
            assert json.loads(req.recv())["error"] == "missing or wrong 'token'"
            c.send(osc_encode.osc_string("/stepx/ping") + osc_encode.osc_string(",s") +
                   tok.encode("utf-8", "surrogatepass") + b"\x00" * (4 - len(tok.encode("utf-8", "surrogatepass")) % 4))
        got = c.replies()  # silence, or refusals: a short wait can only miss a late reply, never fail on one
        assert all(not _reply_json(r)["ok"] for r in got), got
        req.send(b'{"cmd":"ping","token":"s3cret"}')
        assert json.loads(req.recv())["ok"] and srv.alive and osc.alive
    finally:
        req.close(); c.close(); srv.close(); osc.close()


def test_remote_bind_without_token_needs_the_flag_that_names_the_risk(handler):
    from bridge.transport.control import ControlError

    with pytest.raises(ControlError, match="without a token"):
        ControlZmqServer(handler, "tcp://0.0.0.0:*", allow_remote=True)
    with pytest.raises(ControlError, match="without a token"):
        ControlOscServer(handler, "0.0.0.0", 0, allow_remote=True)
    srv = ControlOscServer(handler, "0.0.0.0", 0, allow_remote=True, allow_unauthenticated=True)
    srv.close()
    srv = ControlZmqServer(handler, "tcp://0.0.0.0:*", allow_remote=True, token="t")
    srv.close()


def test_a_request_takes_serve_defaults_and_a_focus_word_missing_from_the_prompt_is_refused(handler):
    from bridge.transport.control import handle_json

    base = GenerateParams(prompt="", steps=7, guidance=3.0)
    seen = []

    def keep(req):
        seen.append(req)
        return handler(req)

    reply = json.loads(handle_json(b'{"cmd":"generate","prompt":"a red circle"}', keep, base=base))
    assert reply["ok"] and (seen[-1].params.steps, seen[-1].params.guidance) == (7, 3.0)
    reply = json.loads(handle_json(b'{"cmd":"generate","prompt":"a red circle","focus":["dog"]}', keep, base=base))
    assert not reply["ok"] and "'dog' is not a word of the prompt" in reply["error"]
    reply = json.loads(handle_json(b'{"cmd":"generate","prompt":"a red circle","steps":3}', keep, base=base))
    assert reply["ok"] and seen[-1].params.steps == 3


def test_control_thread_survives_a_raising_handler():
    def boom(req):
        raise RuntimeError("kaboom") if req.cmd == "ping" else SystemExit(3)

    srv = ControlZmqServer(boom, "tcp://127.0.0.1:*")
    ctx = zmq.Context.instance()
    req = _req(ctx, srv.endpoint)
    try:
        for cmd in ("ping", "status", "ping"):
            req.send(json.dumps({"cmd": cmd}).encode())
            assert f"{cmd} failed" in json.loads(req.recv())["error"]
        assert srv.alive
    finally:
        req.close(); srv.close()


def test_the_supervisor_restarts_a_loop_that_ends_anyway(handler):
    """The last line: if the loop itself ever ends (here: a fault injected below the per-message
    guards), it is started again on the same socket and the next client is answered."""
    srv = ControlZmqServer(handler, "tcp://127.0.0.1:*")
    answer, calls = srv.answer, []

    def faulty(frames):
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("injected")
        return answer(frames)

    srv.answer = faulty
    ctx = zmq.Context.instance()
    lost = _req(ctx, srv.endpoint)
    lost.setsockopt(zmq.RCVTIMEO, 500)  # short: it asserts a reply that never comes
    try:
        lost.send(b'{"cmd":"ping"}')
        with pytest.raises(zmq.Again):
            lost.recv()
        assert _ping(ctx, srv.endpoint)["ok"] and srv.restarts == 1 and srv.alive
    finally:
        lost.close(); srv.close()

