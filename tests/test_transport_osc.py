"""OSC out against a real peer: liblo's oscdump receives and decodes what we send."""

import shutil
import socket

import numpy as np
import pytest

from bridge.protocol import Packet
from bridge.transport import osc_encode
from bridge.phases.measures import word_measures
from bridge.transport.osc_out import OscSender, packet_messages
from oscdump import OscDump


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(words=77, size=16):
    tex = np.zeros((words + 1, size, size), np.float32)
    tex[:, 0, 0] = 1.0  # all mass in the top-left pixel
    return Packet("step", {"run_id": "r", "step": 5, "total_steps": 30, "progress": 0.2, "phase": 1,
                           "phase_progress": 0.5, "phase_weights": [0.25, 0.5, 0.25],
                           "words": [f"w{i}" for i in range(words)]}, {"textures": tex})


def test_bundles_never_exceed_1400_bytes_and_keep_every_message():
    msgs = packet_messages(step(words=77))
    bundles = osc_encode.bundles(msgs, osc_encode.timetag())
    assert len(bundles) > 1
    assert all(len(b) <= 1400 and b.startswith(b"#bundle\x00") for b in bundles)
    assert sum(b.count(b"/stepx/") for b in bundles) == len(msgs)


def test_word_measures():
    m = np.zeros((2, 4, 4), np.float32)
    m[0, 0, 3] = 1.0  # top-right
    m[1] = 0.5  # flat
    r = word_measures(m)
    np.testing.assert_allclose(r["cx"], [0.875, 0.5]); np.testing.assert_allclose(r["cy"], [0.125, 0.5])
    np.testing.assert_allclose(r["entropy"], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(r["mass"], [1 / 16, 0.5])


@pytest.mark.skipif(shutil.which("oscdump") is None, reason="needs liblo-tools (apt-get install liblo-tools)")
def test_oscdump_receives_bundles_and_heartbeat():
    want = ["/stepx/run/start iiiii 30 7 77 512 512", "/stepx/step i 5", "/stepx/progress f 0.200000",
            "/stepx/phase/weights fff 0.250000 0.500000 0.250000", "/stepx/word/76/centroid ff",
            "/stepx/word/0/mass f 0.003906",  # 1 pixel of 16*16
            "/stepx/global/entropy f ", "/stepx/run/end i 0"]

    def complete(lines: list[str]) -> bool:  # every message, and two heartbeats
        text = "\n".join(lines)
        return all(w in text for w in want) and sum("/stepx/status ifif" in ln for ln in lines) >= 2

    with OscDump() as dump:  # listening: nothing sent below is lost to an unbound port
        sender = OscSender("127.0.0.1", dump.port, heartbeat=0.3)
        try:
            sender.send(Packet("run", {"run_id": "r", "words": ["a"] * 77, "total_steps": 30, "seed": 7,
                                       "width": 512, "height": 512}))
            sender.send(step(words=77))
            sender.send(Packet("end", {"run_id": "r", "status": "done"}))
            dump.wait_for(complete, "every message and two heartbeats at oscdump")
        finally:
            sender.close()
    lines = dump.lines
    text = "\n".join(lines)
    for w in want:
        assert w in text, w
    assert sum("/stepx/status ifif" in ln for ln in lines) >= 2  # heartbeat
    # every bundle carries a real timetag (oscdump prints it as hex seconds.fraction)
    assert all(not ln.startswith("00000000.00000001") for ln in lines)


def test_a_patch_hears_when_a_word_stabilises():
    """Real engine frames -> OSC over real UDP, decoded with python-osc: the word mass is the
    timeline's raw mass, and /stepx/word/<i>/stabilised arrives at the step the run's summary
    reports as its stabilisation step."""
    import torch
    from pythonosc.osc_packet import OscPacket

    from bridge.phases import PhaseEngine

    engine = PhaseEngine(["red", "car"])
    g = torch.Generator().manual_seed(0)
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recv.bind(("127.0.0.1", 0))
    recv.settimeout(2.0)
    sender = OscSender("127.0.0.1", recv.getsockname()[1], heartbeat=None)
    n_steps, heard, masses = 10, [], {}
    base = torch.rand(2, 8, 8, generator=g)
    try:
        for s in range(n_steps):
            raw = base + (0.5 if s < 4 else 0.0) * torch.rand(2, 8, 8, generator=g)
            frame = engine.update(raw, s, n_steps)
            sender.send(Packet("step", {"run_id": "r", **frame.scalars()}, {"textures": frame.textures.numpy()}))
            masses[s] = frame.scalars()["mass"]
            while True:
                try:
                    data = recv.recv(65536)
                except socket.timeout:
                    break
                for m in OscPacket(data).messages:
                    msg = m.message
                    if msg.address.endswith("/stabilised"):
                        heard.append((s, int(msg.address.split("/")[3]), msg.params[0]))
                    if msg.address == "/stepx/word/0/mass":
                        assert msg.params[0] == pytest.approx(masses[s][0], rel=1e-6)
                if s == n_steps - 1 or len(data) < 1400:
                    recv.settimeout(0.2)
    finally:
        sender.close()
        recv.close()
    summary = engine.summary()
    final = summary.stabilisation_step.tolist()
    assert final == [5, 5]  # the maps are fixed from step 4, so step 5 is the first with no change
    assert sorted(heard) == [(5, 0, 5), (5, 1, 5)]


def test_a_huge_word_never_drops_the_run_identity():
    """A 1,440-character word (the prompt limit allows 2,000) used to drop the whole run-start
    bundle: now its name is cut with a marker and every datagram still fits."""
    from pythonosc.osc_packet import OscPacket

    from bridge.transport.osc_out import MAX_NAME_BYTES, TRUNCATED

    long_word = "x" * 1440
    run = Packet("run", {"run_id": "r9", "total_steps": 20, "seed": 1, "words": ["a", long_word, "é" * 300],
                         "width": 128, "height": 128})
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(30.0)  # every datagram counted below must come
    sender = OscSender("127.0.0.1", rx.getsockname()[1], heartbeat=None)
    try:
        sender.send(run)
        got = {}
        for _ in range(sender.datagrams_sent):
            data = rx.recv(65536)
            assert len(data) <= osc_encode.MAX_DATAGRAM
            for m in OscPacket(data).messages:
                got[m.message.address] = list(m.message.params)
    finally:
        sender.close()
        rx.close()
    assert got["/stepx/run/start"] == [20, 1, 3, 128, 128] and got["/stepx/run/id"] == ["r9"]
    name1, name2 = got["/stepx/word/1/name"][0], got["/stepx/word/2/name"][0]
    assert name1.endswith(TRUNCATED) and long_word.startswith(name1[:-1]) and len(name1.encode()) <= MAX_NAME_BYTES
    assert name2.endswith(TRUNCATED) and len(name2.encode()) <= MAX_NAME_BYTES  # cut on a UTF-8 boundary
    assert got["/stepx/word/0/name"] == ["a"]
