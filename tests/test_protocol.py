"""bridge.protocol: the facts every side shares, the focus-word rule, and the decoder's version rule."""

from __future__ import annotations

import numpy as np
import pytest

from bridge import protocol
from bridge.protocol import Packet

WORDS = ["a", "cat", "and", "a", "dog"]


@pytest.mark.parametrize("word, index", [("a", 0), ("a#1", 0), ("a#2", 3), (" Cat ", 1), ("DOG", 4),
                                         ("a#3", None), ("a#0", None), ("bird", None), ("", None)])
def test_the_focus_word_rule(word, index):
    assert protocol.word_index(WORDS, word) == index


def test_the_rule_is_the_same_in_record_the_preview_and_touchdesigner():
    """``a#2`` names the second "a" wherever a focus word is read."""
    import sys
    from pathlib import Path

    from bridge.capture.tokens import TokenMap
    from bridge.preview.player import PreviewPlayer, UnknownWordError

    tm = TokenMap(prompt=" ".join(WORDS), length=6, tokens=tuple(WORDS), words=tuple(WORDS), word_tokens=tuple((i,) for i in range(5)), special=())
    assert tm.index("a#2") == 3
    player = PreviewPlayer(word="a#2")
    player.feed(Packet("run", {"run_id": "r", "words": WORDS}))
    assert player.focus == 3
    with pytest.raises(UnknownWordError, match="'a', 'cat'"):
        player.set_word("a#3")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "td_components"))
    try:
        from stepx_td.decoder import StreamReceiver
    finally:
        sys.path.pop(0)
    receiver = StreamReceiver.__new__(StreamReceiver)  # the rule only: no socket
    receiver.focus, receiver.latest, receiver.run = 0, {"step": Packet("step", {"words": WORDS})}, None
    assert receiver.focus_index("a#2") == 3
    with pytest.raises(ValueError, match="not in the prompt"):
        receiver.focus_index("a#3")


def _with_version(data: bytes, version: int) -> bytes:
    at = data.index(protocol.MAGIC)
    return data[:at + 4] + version.to_bytes(2, "little") + data[at + 6:]


def test_the_decoder_reads_every_version_up_to_its_own(monkeypatch):
    """A version bump must never turn stored traces into corrupt files: v1 still decodes."""
    pkt = Packet("step", {"run_id": "r", "step": 2}, {"textures": np.arange(8, dtype=np.float32).reshape(2, 2, 2)})
    v1 = protocol.encode(pkt)
    monkeypatch.setattr(protocol, "VERSION", 2)  # as after a bump
    v2 = protocol.encode(pkt)
    assert protocol.split(v2)[1]["version"] == 2 and protocol.split(v1)[1]["version"] == 1
    for data in (v1, v2):
        got = protocol.decode(data)
        assert type(got) is Packet and got.header == pkt.header
        np.testing.assert_array_equal(got.arrays["textures"], pkt.arrays["textures"])
    with pytest.raises(protocol.WireError, match="versions 1 to 2"):
        protocol.decode(_with_version(v1, 3))
    with pytest.raises(protocol.WireError, match="version 0"):
        protocol.decode(_with_version(v1, 0))


def test_one_packet_class_and_unknown_kinds_are_refused():
    assert protocol.decode(protocol.encode(Packet("status", {"state": "idle"}))).kind == "status"
    with pytest.raises(ValueError, match="unknown packet kind 'frame'"):
        Packet("frame", {})
    fake = type("Fake", (), {"kind": "frame", "header": {}, "arrays": {}})()
    with pytest.raises(protocol.WireError, match="unknown packet kind 'frame'"):
        protocol.decode(protocol.encode(fake))


def test_the_facts_are_stated_once():
    """Kinds split into kept and latest-wins; ports and endpoints agree; every consumer uses them."""
    from bridge.phases.morph import PHASE_NAMES
    from bridge.stream import sinks
    from bridge.transport import control, control_zmq, zmq_pub, zmq_sub

    assert set(protocol.KEEP_KINDS) | set(protocol.LATEST_KINDS) == set(protocol.KINDS)
    assert not set(protocol.KEEP_KINDS) & set(protocol.LATEST_KINDS)
    assert zmq_pub.DEFAULT_PUB_ENDPOINT == zmq_sub.DEFAULT_SUB_ENDPOINT == sinks.DEFAULT_ZMQ == protocol.DEFAULT_DATA_ENDPOINT
    assert control_zmq.DEFAULT_CONTROL_ENDPOINT == protocol.DEFAULT_CONTROL_ENDPOINT
    assert control.COMMANDS is protocol.COMMANDS and PHASE_NAMES is protocol.PHASE_NAMES
