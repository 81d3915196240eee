"""The step ring: slots in a file both processes map, claimed by the model's thread, read by the sink process."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import stat
import time

import numpy as np
import pytest
import torch

from bridge.item_codec import decode_staged, encode_staged
from bridge.phases import PhaseConfig
from bridge.stream.ring import PAGE, POLL, POLL_FINE, POLL_MAX, STAMPS, Ring, RingError, Slot, StagedImage, StagedStep, poll_pause, remove_folder, ring_folder


@pytest.fixture
def ring():
    folder = ring_folder()
    r = Ring.create(folder, slots=2, slot_bytes=PAGE)
    yield r
    r.close()
    remove_folder(folder)


def test_the_file_is_private_and_sized_for_its_slots(ring) -> None:
    folder = os.path.dirname(ring.path)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and stat.S_IMODE(os.stat(ring.path).st_mode) == 0o600
    assert os.path.getsize(ring.path) == PAGE + 2 * PAGE == ring.size


def test_a_slot_is_claimed_again_only_once_its_values_were_read(ring) -> None:
    a = ring.claim(16)
    b = ring.claim(PAGE)  # a whole slot fits
    assert (a.index, a.seq, b.index, b.seq) == (0, 1, 1, 2)
    assert ring.claim(4) is None  # both in flight: the caller takes the old path
    values = torch.arange(4, dtype=torch.float32)
    assert ring.land(a, values) == 16
    assert ring.wait(a.index, a.seq, timeout=0.0)
    got = ring.read(a.index, a.seq, 16, np.dtype(np.float32))
    assert got.tolist() == [0.0, 1.0, 2.0, 3.0] and got.flags.writeable
    again = ring.claim(4)
    assert again is not None and (again.index, again.seq) == (0, 3)
    ring.land(again, torch.full((1,), 7.0))
    assert got.tolist() == [0.0, 1.0, 2.0, 3.0]  # the reader's copy is its own
    assert ring.claim(PAGE + 1) is None  # too big for any slot


def test_stamps_wrap_and_a_slot_never_sees_its_last_stamp_as_new(ring) -> None:
    """A stamp is the sequence number modulo STAMPS; past the wrap a slot's new stamp still differs
    from its previous one, so the reader never takes old values for new."""
    for k in range(STAMPS + 3):
        slot = ring.claim(4)
        assert slot is not None and int(ring.landed[slot.index]) != slot.seq % STAMPS  # not yet landed
        ring.land(slot, torch.tensor([float(k)]))
        assert ring.wait(slot.index, slot.seq, timeout=0.0)
        assert ring.read(slot.index, slot.seq, 4, np.dtype(np.float32))[0] == k


def test_the_stamp_is_polled_finely_while_values_are_due_then_less_often() -> None:
    """Every POLL for the first POLL_FINE (the values of a GPU that keeps pace land then), never
    less often than POLL_MAX after, the pauses never shrinking."""
    pauses = [poll_pause(k * 1e-4) for k in range(400)]  # 0 to 40 ms into a wait
    assert pauses[: int(POLL_FINE / 1e-4)] == [POLL] * int(POLL_FINE / 1e-4)
    assert all(a <= b for a, b in zip(pauses, pauses[1:])) and pauses[-1] == POLL_MAX == max(pauses)
    assert POLL < POLL_MAX and poll_pause(60.0) == POLL_MAX


def test_a_stamp_that_never_comes_times_out_and_the_slot_can_be_given_up(ring) -> None:
    slot = ring.claim(8)
    t = time.monotonic()
    assert not ring.wait(slot.index, slot.seq, timeout=0.05)
    assert time.monotonic() - t < 5  # polled, not blocked forever
    ring.release(slot.index, slot.seq)
    ring.claim(8)  # the other slot
    assert ring.claim(8) is not None  # the released one is free again
    with pytest.raises(ValueError, match="slot 5 of a 2-slot ring"):
        ring.wait(5, 1, 0.0)
    with pytest.raises(ValueError, match="bytes of slot"):
        ring.read(0, 1, PAGE + 4, np.dtype(np.uint8))


def test_bad_shapes_and_missing_files_are_refused_in_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        Ring(str(tmp_path / "r"), 1, 1000, 0, create=True)
    with pytest.raises(ValueError, match="1 to 256 slots"):
        Ring(str(tmp_path / "r"), 257, PAGE, 0, create=True)  # the header would run into slot 0
    big = Ring(str(tmp_path / "big"), 256, PAGE, 0, create=True)
    for k in range(256):  # every slot's stamp and done in the header page, none in a slot
        slot = big.claim(4)
        big.land(slot, torch.tensor([float(k)]))
        assert big.wait(slot.index, slot.seq, 0.0) and big.read(slot.index, slot.seq, 4, np.dtype(np.float32))[0] == k
    big.close()
    with pytest.raises(RingError, match="cannot open the ring file"):
        Ring(str(tmp_path / "missing"), 1, PAGE, 0, create=False)
    Ring(str(tmp_path / "r"), 1, PAGE, 0, create=True).close()
    with pytest.raises(RingError, match="is 8192 bytes, not 12288"):
        Ring(str(tmp_path / "r"), 2, PAGE, 0, create=False)


def _child_reads(path: str, index: int, seq: int, out: mp.Queue) -> None:
    r = Ring(path, 2, PAGE, 0, create=False)
    ok = r.wait(index, seq, timeout=30)
    out.put((ok, r.read(index, seq, 12, np.dtype(np.float32)).tolist() if ok else None))
    r.close()


def test_another_process_sees_the_values_once_their_stamp_has_landed(ring) -> None:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    slot = ring.claim(12)
    child = ctx.Process(target=_child_reads, args=(ring.path, slot.index, slot.seq, out))
    child.start()  # it waits for the stamp: the values are not there yet
    time.sleep(0.2)
    ring.land(slot, torch.tensor([1.5, -2.0, 3.25]))
    ok, values = out.get(timeout=60)
    child.join(30)
    assert ok and values == [1.5, -2.0, 3.25]
    assert int(ring.done[slot.index]) == slot.seq  # the reader marked it done: the parent may claim it again
    ring.claim(4)
    assert ring.claim(4) is not None


def _staged(**changes: object) -> StagedStep:
    base = dict(slot=Slot(3, 1, 42), nbytes=4 * 2 * 4 * 4 + 4, run_id="r1", words=["red", "circle"], cfg=PhaseConfig(),
                shape=(2, 4, 4), step=5, total=20, focus=[1], timestep=None, ended=1.5e9)
    base.update(changes)
    return StagedStep(**base)  # type: ignore[arg-type]


def test_a_staged_notice_crosses_the_channel_whole() -> None:
    image = StagedImage(Slot(2, 0, 7), 64 * 48 * 3, "run-é", 3, (64, 48, 3))
    for staged in (_staged(), _staged(timestep=981.0, nbytes=128, ended=None), image):
        assert decode_staged(encode_staged(staged)) == staged
    with pytest.raises(ValueError, match="not a staged step: 100 bytes for a uint8 image of 64×48×3"):
        decode_staged(encode_staged(StagedImage(Slot(2, 0, 7), 100, "r", 3, (64, 48, 3))))


def test_a_forged_or_inconsistent_notice_is_refused() -> None:
    head, static = encode_staged(_staged())
    with pytest.raises(ValueError, match="not a staged step: 136 bytes for float32 maps"):
        decode_staged(encode_staged(_staged(nbytes=136)))  # one value more than the maps and the timestep
    with pytest.raises(ValueError, match="not a staged step: magic"):
        decode_staged([b"XXXX" + bytes(head[4:]), static])
    with pytest.raises(ValueError, match="not a staged step: a staged step is 2 frames"):
        decode_staged([head])
    with pytest.raises(ValueError, match="not a staged step"):
        decode_staged([head, b"{not json"])
    assert math.isnan(float(np.frombuffer(bytes(head[-16:-8]), "<f8")[0]))  # the timestep travels in the payload


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_copy_is_asynchronous_and_its_stamp_lands_after_the_values() -> None:
    """The mapping is page-locked, so a copy of SD 1.5's maps (128 KiB) is queued behind the GPU's
    work (its stamp is not there while a long kernel runs) and the stamp, copied after the values,
    finds them whole. As bench/ring_copy.py, which showed this on an H100 (runs 19 and 20). The
    values' own allocation comes before the GPU is kept busy: made after, it waited for the GPU
    (runs 20-22 failed here so, the copy having "landed at once")."""
    folder = ring_folder()
    ring = Ring.create(folder, slots=4)
    remove_folder(folder)
    try:
        assert ring.pinned
        values = torch.randn(32768, device="cuda")  # 128 KiB
        for k in range(40):
            slot = ring.claim(values.numel() * 4)
            # made before the GPU is kept busy: a new block from CUDA's allocator waits for the
            # device's queue (cudaMalloc), which made the first copy look synchronous (h100_run22)
            shifted = values + k
            if k == 0:
                torch.cuda.synchronize()
            torch.cuda._sleep(20_000_000 if k == 0 else 10_000)  # the first copy queued behind ~10 ms of GPU time
            began = time.perf_counter()
            ring.land(slot, shifted)
            took = time.perf_counter() - began
            if k == 0:  # still queued: the host did not wait
                assert not ring.wait(slot.index, slot.seq, timeout=0.0), \
                    f"landed at once: stamp {int(ring.landed[slot.index])} of seq {slot.seq}, land took {1e3 * took:.2f} ms"
            assert ring.wait(slot.index, slot.seq, timeout=30)
            got = ring.read(slot.index, slot.seq, values.numel() * 4, np.dtype(np.float32))
            np.testing.assert_array_equal(got, (values + k).cpu().numpy())
    finally:
        ring.close()
