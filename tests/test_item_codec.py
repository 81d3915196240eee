"""The sink process's items cross without pickle: Packets and allow-listed recipes, exactly."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from bridge.daemon import replayed
from bridge.item_codec import decode_item, encode_item, join_frames, split_frames
from bridge.protocol import Packet
from bridge.phases import PhaseConfig
from bridge.stream.recipes import host_step_packet, prepare_run, timeline_packet


def test_packets_and_recipes_round_trip_exactly():
    p = Packet("step", {"run_id": "r", "step": 3, "x": [1, 2.5]}, {"textures": np.arange(12, dtype=np.float32).reshape(3, 2, 2)})
    got = decode_item(encode_item(p))
    assert got.kind == "step" and got.header == p.header and np.array_equal(got.arrays["textures"], p.arrays["textures"])
    maps = np.random.default_rng(0).random((2, 4, 4), dtype=np.float32)
    cfg = PhaseConfig(boundaries=(0.3, 0.7))
    recipe = partial(replayed, partial(host_step_packet, "r1", ["cat", "table"], cfg, maps, 0, 4, [1], float("inf")))
    back = decode_item(encode_item(recipe))
    inner = back.args[0]
    assert back.func is replayed and inner.func is host_step_packet
    assert inner.args[2] == cfg and isinstance(inner.args[2].boundaries, tuple)
    assert np.array_equal(inner.args[3], maps) and inner.args[3].dtype == np.float32 and inner.args[7] == float("inf")
    built, expected = back(), recipe()  # the same packet either side
    assert built.header == expected.header and built.header["replay"] is True
    assert all(np.array_equal(built.arrays[k], expected.arrays[k]) for k in expected.arrays)


def test_the_run_preparation_crosses_and_sends_nothing():
    recipe = partial(prepare_run, "r9", ["cat", "table"], PhaseConfig(boundaries=(0.3, 0.7)), 4, 6)
    back = decode_item(encode_item(recipe))
    assert back.func is prepare_run and back.args == recipe.args
    assert back() is None


def test_only_allow_listed_functions_cross():
    import os

    with pytest.raises(ValueError, match="not a recipe the sink process runs"):
        encode_item(partial(os.system, "echo owned"))
    with pytest.raises(TypeError, match="cannot cross"):
        encode_item(partial(timeline_packet, object()))
    forged = json.dumps({"recipe": {"fn": "os:system", "args": ["echo owned"], "kwargs": {}}, "arrays": []}).encode()
    with pytest.raises(ValueError, match="not on the allow-list"):
        decode_item([forged])
    for junk in ([b"\x80\x04K\x01."], [b'{"arrays": [{"dtype": "O", "shape": [1]}]}', b"x" * 8], [b"{}"]):
        with pytest.raises(ValueError, match="not a sink-process item"):  # a pickle, an object array, nothing
            decode_item(junk)


def test_a_step_recipe_crosses_as_a_fixed_header_and_comes_back_exactly():
    """The step recipe (every step of every run) goes as a binary header, its run-constant JSON
    and the maps; it comes back as the same partial, argument types included."""
    maps = np.random.default_rng(1).random((3, 4, 4), dtype=np.float32)
    cfg = PhaseConfig(normalisation="share")
    for ended in (1.7e9 + 0.25, None):
        recipe = partial(host_step_packet, "r2", ["a", "b", "c"], cfg, maps, 2, 5, [0, 2], 981.5, ended)
        frames = encode_item(recipe)
        assert len(frames) == 3 and bytes(frames[0][:4]) == b"HSP1" and len(bytes(frames[0])) == 28
        back = decode_item([bytes(f) for f in frames])
        assert back.func is host_step_packet and not back.keywords
        for got, want in zip(back.args, recipe.args):
            assert type(got) is type(want)
            assert np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want
    json_only = partial(host_step_packet, "r2", ["a"], cfg, maps[:1], 0, 5, [], 981, None)  # an int timestep keeps its type: JSON
    assert bytes(encode_item(json_only)[0][:1]) == b"{" and decode_item(encode_item(json_only)).args[7] == 981


def test_forged_step_frames_are_refused():
    maps = np.zeros((1, 2, 2), np.float32)
    head, static, data = (bytes(f) for f in encode_item(partial(host_step_packet, "r", ["a"], PhaseConfig(), maps, 0, 2, [], 1.0, None)))
    body = json.loads(static)
    cases = [
        [head[:20], static, data],  # a short header
        [head, static],  # no maps
        [head, json.dumps({**body, "fn": "os:system"}).encode(), data],  # another function
        [head, json.dumps({**body, "dtype": "|O"}).encode(), data],  # object arrays
        [head, static, data[:-4]],  # maps shorter than their shape
        [head, b"\x80\x04K\x01.", data],  # a pickle where the JSON goes
    ]
    for frames in cases:
        with pytest.raises(ValueError, match="not a sink-process item"):
            decode_item(frames)


def test_an_item_crosses_as_one_message_and_comes_back_as_views():
    """The channel's one message per item: the frames come back byte for byte, as views of the
    message (the maps are not copied again), empty frames included; a step recipe decodes from them."""
    maps = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    frames = [b"R", *encode_item(partial(host_step_packet, "r", ["a", "b", "c"], PhaseConfig(), maps, 1, 4, [2], 7.0, None)), b""]
    message = join_frames(frames)
    back = split_frames(message)
    assert [bytes(f) for f in back] == [bytes(f) for f in frames]
    assert all(isinstance(f, memoryview) and f.obj is message for f in back)
    recipe = decode_item(back[1:-1])
    np.testing.assert_array_equal(recipe.args[3], maps)
    assert split_frames(join_frames([])) == []


@pytest.mark.parametrize("message, says", [
    (b"", "no frame count"),
    (b"\x01\x00", "no frame count"),
    (b"\x02\x00\x00\x00" + (1).to_bytes(8, "little"), "cannot hold 2 frames"),  # the lengths table cut short
    (b"\xff\xff\xff\xff", "cannot hold"),  # a count far past any item's
    (b"\x01\x00\x00\x00" + (5).to_bytes(8, "little") + b"abc", "runs past the end"),
    (b"\x01\x00\x00\x00" + (2).to_bytes(8, "little") + b"abc", "1 bytes after the last frame"),
    (b"\x01\x00\x00\x00" + (2**64 - 1).to_bytes(8, "little") + b"abc", "runs past the end"),
])
def test_a_message_that_is_not_one_is_refused(message, says):
    with pytest.raises(ValueError, match=says):
        split_frames(message)
