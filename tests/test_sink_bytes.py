"""The bytes a subscriber receives stay what they were while the sink's work is made cheaper.

Three guards (issue 24): a committed golden file of a few fixed runs' wire bytes, made by the code
before the sink process was optimised (compared byte for byte on a CPU of the same torch kernel
level: torch's vectorised sums round differently at another SIMD width); a reference encoder
written from docs/PROTOCOL.md's layout alone, against which the step packets of the sink's
path and fuzzed packets must match on any machine; and a run through a real sink process and
ZeroMQ, received by a subscriber in this process.
"""

from __future__ import annotations

import json
import struct
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge import protocol as wire
from bridge.item_codec import decode_item, encode_item
from bridge.phases import PhaseConfig, PhaseEngine
from bridge.protocol import Packet
from bridge.stream.recipes import host_step_packet, timeline_packet

GOLDEN = Path(__file__).parent / "data" / "sink_golden.npz"
#: (words, map side, steps, normalisation, global view) of the golden runs
CASES = ((3, 8, 4, "running_max", "max"), (4, 12, 3, "share", "mean"), (2, 6, 3, "minmax", "max"))
ENCODINGS = ("float16", "float32", "uint8")


def fixed_maps(case: int, words: int, side: int, step: int) -> np.ndarray:
    """Deterministic maps ``[words, side, side]`` from integer hashing (no RNG, no libm): the same
    float32 values on every machine; word 1 of case 1 is all zero at step 1."""
    i = np.arange(words * side * side, dtype=np.int64) + 7919 * (step + 1) + 104729 * case
    values = ((i * 2654435761) % 1000003).astype(np.float64) / 1000003.0
    maps = (values**3).astype(np.float32).reshape(words, side, side)
    if case == 1 and step == 1:
        maps[1] = 0.0
    return maps


def recipe(case: int, step: int) -> partial:
    words, side, steps, norm, view = CASES[case]
    cfg = PhaseConfig(normalisation=norm, global_view=view)
    return partial(host_step_packet, f"golden{case}", [f"w{i}" for i in range(words)], cfg,
                   fixed_maps(case, words, side, step), step, steps, [0], 981.0 - step, 1.7e9 + step / 8)


def sent_at(step: int) -> float:
    return 1.7e9 + step / 8 + 0.003


def sink_bytes() -> dict[str, bytes]:
    """Every golden run as the sink process turns it into wire bytes: the recipe crosses the item
    codec, runs, is stamped as the FanOut stamps it and encoded in each encoding."""
    out: dict[str, bytes] = {}
    for case, (_w, _s, steps, _n, _v) in enumerate(CASES):
        for step in range(steps):
            frames = [bytes(f) for f in encode_item(recipe(case, step))]
            packet = decode_item(frames)()
            stamped = Packet(packet.kind, {**packet.header, "sent": sent_at(step)}, packet.arrays)
            for enc in ENCODINGS:
                out[f"{case}/{step}/{enc}"] = wire.encode(stamped, enc)
        out[f"{case}/timeline"] = wire.encode(timeline_packet(f"golden{case}"), "float16")
    return out


def reference_encode(packet: Packet, encoding: str) -> bytes:
    """Wire v1 from docs/PROTOCOL.md's layout alone (numpy casts, one array after another)."""
    specs, data = [], bytearray()
    for name, arr in packet.arrays.items():
        a, extra = np.atleast_1d(arr), {}  # a 0-d array goes as shape [1], as it always has
        if a.dtype.kind == "f":
            if encoding == "uint8":
                a = np.rint(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0).astype("|u1")
                extra = {"quantized": "unorm8", "scale": 1.0 / 255.0}
            else:
                a = a.astype("<f4" if encoding == "float32" else "<f2")
        else:
            a = a.astype(a.dtype.newbyteorder("<"))
        data += bytes(-len(data) % 8)
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": len(data), "nbytes": a.nbytes, **extra})
        data += np.ascontiguousarray(a).tobytes()
    h = packet.header
    head = {"kind": packet.kind, "version": 1, "encoding": encoding, **{k: h.get(k) for k in ("run_id", "step", "total_steps", "phase", "words")},
            "header": h, "arrays": specs}
    hjson = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()
    topic = f"stepx/{packet.kind}".encode() + b"\x00"
    lead = topic + bytes(-len(topic) % 8) + struct.pack("<4sHHII", b"STPX", 1, 0, len(hjson), len(data)) + hjson
    return lead + bytes(-len(lead) % 8) + bytes(data)


def reference_step(case: int, step: int, engine: PhaseEngine) -> Packet:
    """A golden run's step packet composed from the PhaseFrame's tensors directly."""
    r = recipe(case, step)
    run_id, _words, _cfg, maps, step, total, focus, timestep, ended = r.args
    pf = engine.update(torch.from_numpy(maps.copy()), step, total)
    tensors = {"textures": pf.textures, "settled": pf.settled, "accumulated": pf.accumulated,
               "rgba": torch.stack([pf.textures.clamp(0, 1), 1 - pf.textures.clamp(0, 1), pf.settled, pf.accumulated], dim=-1),
               "phase_maps": pf.phase_maps}
    header = {"run_id": run_id, **pf.scalars(), "focus": focus, "timestep": timestep, "step_end": ended, "sent": sent_at(step)}
    return Packet("step", header, {k: t.numpy().copy() for k, t in tensors.items()})


@pytest.mark.skipif(not GOLDEN.exists(), reason="no golden file")
def test_the_sink_sends_the_bytes_it_sent_before() -> None:
    golden = np.load(GOLDEN)
    made_on = str(golden["cpu_capability"])
    if made_on != torch.backends.cpu.get_cpu_capability():
        pytest.skip(f"golden made with torch's {made_on} kernels; this CPU runs {torch.backends.cpu.get_cpu_capability()}")
    now = sink_bytes()
    assert sorted(now) == sorted(k for k in golden.files if k != "cpu_capability")
    for key, data in now.items():
        assert data == golden[key].tobytes(), key


def test_step_packets_match_an_encoder_written_from_the_spec() -> None:
    now = sink_bytes()
    for case, (words, _s, steps, norm, view) in enumerate(CASES):
        engine = PhaseEngine([f"w{i}" for i in range(words)], PhaseConfig(normalisation=norm, global_view=view), device="cpu")
        for step in range(steps):
            ref = reference_step(case, step, engine)
            for enc in ENCODINGS:
                assert now[f"{case}/{step}/{enc}"] == reference_encode(ref, enc), (case, step, enc)


def test_encode_matches_the_spec_on_fuzzed_packets() -> None:
    rng = np.random.default_rng(24)
    dtypes = ("<f4", "<f8", "<f2", "|u1", "<i4", "<u2", "|b1", ">f4", ">i2")
    for trial in range(300):
        arrays = {}
        for a in range(int(rng.integers(0, 5))):
            shape = tuple(int(n) for n in rng.integers(0, 5 if trial % 3 else 40, size=int(rng.integers(0, 4))))
            dtype = np.dtype(dtypes[int(rng.integers(len(dtypes)))])
            values = (rng.random(shape) * 3 - 1).astype(dtype) if dtype.kind != "b" else rng.random(shape) > 0.5
            if dtype.kind == "f" and values.size and values.size < 1024 and trial % 4 == 0:
                values.reshape(-1)[0] = np.nan  # NaN where numpy casts (torch's NaN bits differ; neither is a map value)
            if values.ndim >= 2 and trial % 5 == 0:
                values = values.T  # not C-ordered
            arrays[f"a{a}"] = values
        header = {"run_id": f"r{trial}", "step": trial, "words": ["a", "é"], "x": [1.5, None, {"y": True}]}
        packet = Packet(wire.KINDS[trial % len(wire.KINDS)], header, arrays)
        for enc in ENCODINGS:
            assert wire.encode(packet, enc) == reference_encode(packet, enc), (trial, enc)


def test_a_sink_process_sends_the_reference_bytes(tmp_path) -> None:
    """A golden run through a real PacketProcess publishing float16 on ZeroMQ: every step a
    subscriber receives equals the reference encoding of that step (with the send time it carries)."""
    from bridge.bench import _zmq_sinks
    from bridge.stream.process import PacketProcess
    from bridge.transport.zmq_sub import ZmqSubscriber

    endpoint = f"ipc://{tmp_path}/pub.sock"
    sub = ZmqSubscriber(endpoint, topics=("stepx/step",), conflate=False)
    case, (words, _s, steps, norm, view) = 0, CASES[0]
    received: dict[int, bytes] = {}
    with PacketProcess(partial(_zmq_sinks, endpoint)) as pp:
        deadline = time.monotonic() + 30
        while len(received) < steps and time.monotonic() < deadline:  # a run again until every step came (joining is asynchronous)
            for step in range(steps):
                pp.publish_recipe(recipe(case, step))
            pp.flush()
            while (data := sub.recv_bytes(timeout=0.3)) is not None:
                received[wire.split(data)[1]["step"]] = data
    sub.close()
    assert sorted(received) == list(range(steps))
    engine = PhaseEngine([f"w{i}" for i in range(words)], PhaseConfig(normalisation=norm, global_view=view), device="cpu")
    for step in range(steps):
        ref = reference_step(case, step, engine)
        ref.header["sent"] = wire.split(received[step])[1]["header"]["sent"]
        assert received[step] == reference_encode(ref, "float16"), step
