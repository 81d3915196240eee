"""Wire format v1: round trips, encodings, layout, and clear errors on bad bytes."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bridge.protocol import Packet
from bridge import protocol as wire


def step_packet(words=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return Packet("step", {"run_id": "r1", "step": 4, "total_steps": 30, "phase": 1,
                           "progress": 0.13, "phase_weights": [0.1, 0.8, 0.1], "words": [f"w{i}" for i in range(words)]},
                  {"textures": rng.random((words + 1, size, size), dtype=np.float32),
                   "image": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)})


@pytest.mark.parametrize("encoding,tol", [("float32", 0.0), ("float16", 1e-3), ("uint8", 0.5 / 255 + 1e-6)])
def test_round_trip_each_encoding(encoding, tol):
    p = step_packet()
    q = wire.decode(wire.encode(p, encoding), dequantize=True)
    assert q.kind == "step" and q.header == p.header
    assert q.arrays["textures"].shape == (4, 8, 8)
    assert np.abs(q.arrays["textures"].astype(np.float32) - p.arrays["textures"]).max() <= tol
    np.testing.assert_array_equal(q.arrays["image"], p.arrays["image"])  # uint8 image unchanged


def test_uint8_is_round_clip_times_255():
    x = np.array([-1.0, 0.0, 0.5, 0.2, 1.0, 3.0, np.nan], np.float32)
    q = wire.decode(wire.encode(Packet("timeline", {}, {"x": x}), "uint8"))
    assert q.arrays["x"].dtype == np.uint8
    assert q.arrays["x"].tolist() == [0, 0, 128, 51, 255, 255, 0]


def test_layout_topic_preamble_alignment():
    data = wire.encode(step_packet(), "float16")
    assert data.startswith(b"stepx/step\x00")
    pre = 16  # topic + NUL = 11 bytes, padded to 16
    magic, ver, flags, hlen, dlen = struct.unpack_from("<4sHHII", data, pre)
    assert (magic, ver, flags) == (b"STPX", 1, 0)
    head = json.loads(data[pre + 16: pre + 16 + hlen])
    data_at = (pre + 16 + hlen + 7) & ~7
    assert len(data) == data_at + dlen and data_at % 8 == 0
    for spec in head["arrays"]:
        assert spec["offset"] % 8 == 0
    tex = head["arrays"][0]
    assert tex["dtype"] == "<f2" and tex["shape"] == [4, 8, 8]
    arr = np.frombuffer(data, "<f2", count=4 * 64, offset=data_at + tex["offset"]).reshape(4, 8, 8)
    np.testing.assert_allclose(arr, step_packet().arrays["textures"], atol=1e-3)
    assert head["step"] == 4 and head["words"] == ["w0", "w1", "w2"] and head["encoding"] == "float16"


def test_header_nan_becomes_null_and_numpy_scalars_work():
    q = wire.decode(wire.encode(Packet("status", {"fps": np.float32(2.5), "x": float("inf")})))
    assert q.header == {"fps": 2.5, "x": None}


def test_every_truncation_is_a_clear_error():
    data = wire.encode(step_packet(words=1, size=4))
    for n in range(len(data)):
        with pytest.raises(wire.WireError):
            wire.decode(data[:n])


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d[:16] + b"XXXX" + d[20:], "magic"),
    (lambda d: d[:20] + b"\x09\x00" + d[22:], "version"),
    (lambda d: d[:32] + b"}" + d[33:], "JSON"),
    (lambda d: b"x" * 300, "terminator"),
])
def test_corrupt_input_names_the_problem(mutate, match):
    with pytest.raises(wire.WireError, match=match):
        wire.decode(mutate(wire.encode(step_packet())))


def test_bad_encoding_rejected():
    with pytest.raises(wire.WireError, match="float16"):
        wire.encode(step_packet(), "bfloat16")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_only_raise_wire_error(blob):
    for data in (blob, wire.encode(step_packet(words=1, size=2))[:40] + blob):
        try:
            wire.decode(data)
        except wire.WireError:
            pass


def test_wire_decodes_with_numpy_json_stdlib_only():
    """A TouchDesigner receiver copies protocol.py alone: no torch, no other bridge modules."""
    data = wire.encode(step_packet(), "float16")
    code = ("import sys, importlib.util; sys.modules['bridge'] = None;"  # as in TouchDesigner: no bridge package
            "spec = importlib.util.spec_from_file_location('wire', sys.argv[1]);"
            "m = importlib.util.module_from_spec(spec); sys.modules['wire'] = m; spec.loader.exec_module(m);"
            "p = m.decode(sys.stdin.buffer.read()); assert type(p).__name__ == 'Packet';"
            "assert 'torch' not in sys.modules and not any(k.startswith('bridge') and sys.modules[k] for k in sys.modules);"
            "print(p.kind, p.arrays['textures'].shape)")
    out = subprocess.run([sys.executable, "-c", code, wire.__file__], input=data, capture_output=True, timeout=60,
                         cwd="/")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "step (4, 8, 8)"


def _float16_cases():
    rng = np.random.default_rng(7)
    every = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)  # all classes of float
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 2.98e-8, 2.9802322e-08, 6.1e-5, 1e30] * 100, np.float32)
    maps = rng.random((14, 64, 64, 4), dtype=np.float32)
    read_only = maps.copy()
    read_only.flags.writeable = False
    return {"bit patterns": every, "edges": edges, "strided": maps[:, ::2, 1:], "reversed": maps[::-1], "read-only": read_only,
            "small": maps[0, 0]}


@pytest.mark.parametrize("case", list(_float16_cases()))
def test_float16_encoding_rounds_as_numpy(case):
    """float16 goes through torch's cast where torch is loaded: the same bits as numpy's astype
    for every value but NaN's payload (a NaN stays a NaN)."""
    pytest.importorskip("torch")  # loaded, so the fast path is the one under test
    x = _float16_cases()[case]
    got = wire.decode(wire.encode(Packet("step", {}, {"x": x}), "float16")).arrays["x"]
    ref = x.astype("<f2")
    assert got.dtype == np.float16 and got.shape == x.shape
    nan = np.isnan(x)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])


def test_float16_encoding_same_bytes_without_torch():
    """The numpy-only receiver side (TouchDesigner) encodes the very bytes the producer does."""
    x = np.random.default_rng(3).random((6, 64, 64), dtype=np.float32)
    data = wire.encode(Packet("step", {"run_id": "r"}, {"x": x}), "float16")
    code = ("import sys, importlib.util, numpy as np; sys.modules['bridge'] = None;"
            "spec = importlib.util.spec_from_file_location('wire', sys.argv[1]);"
            "m = importlib.util.module_from_spec(spec); sys.modules['wire'] = m; spec.loader.exec_module(m);"
            "x = m.decode(sys.stdin.buffer.read()).arrays['x'].astype(np.float32);"
            "assert 'torch' not in sys.modules;"
            "sys.stdout.buffer.write(m.encode(m.Packet('step', {'run_id': 'r'}, {'x': x}), 'float16'))")
    out = subprocess.run([sys.executable, "-c", code, wire.__file__], input=wire.encode(Packet("step", {"run_id": "r"}, {"x": x}), "float32"),
                         capture_output=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == data
