"""StreamReceiver against a LIVE project publisher (ZmqPublisher on 127.0.0.1), per encoding.

Textures must equal bit-for-bit what went on the wire, after the documented row flip.
"""

from __future__ import annotations

import time
import unittest

import numpy as np

import _td_common as C
from bridge import protocol as bridge_wire
from bridge.transport.zmq_pub import ZmqPublisher
from stepx_td import decoder


def sent_arrays(pkt, encoding):
    """What the publisher put on the wire for ``pkt``, decoded by the project's own wire module."""
    data = bridge_wire.encode(pkt, encoding)
    return bridge_wire.decode(data).arrays


class LiveDecoderTest(unittest.TestCase):
    def setUp(self) -> None:
        self.pub = ZmqPublisher("tcp://127.0.0.1:*", encoding="float32")
        self.port = int(self.pub.endpoint.rsplit(":", 1)[1])
        self.rx = decoder.StreamReceiver("127.0.0.1", self.port)

    def tearDown(self) -> None:
        self.rx.close()
        self.pub.close()

    def _deliver(self, encoding: str, *packets) -> None:
        def send() -> None:
            for p in packets:
                self.pub.send_bytes(bridge_wire.encode(p, encoding))
        got: set[str] = set()
        ok = C.pump(send, lambda: bool(got.update(self.rx.poll().kinds)) or {p.kind for p in packets} <= got)
        self.assertTrue(ok, f"nothing received from {self.pub.endpoint}")

    def _fence(self, tag: str) -> None:
        """Send a status packet and read up to it: one connection delivers in order, so every
        packet sent before it has been read once it is (no repeat of _deliver's still on its way)."""
        self.pub.send_bytes(bridge_wire.encode(C.packet("status", {"state": tag}), "float32"))
        self.assertTrue(C.pump(lambda: None, lambda: self.rx.poll() is not None and self._status() == tag), tag)

    def _status(self) -> str | None:
        got = self.rx.latest.get("status")
        return None if got is None else got.header.get("state")

    def check_encoding(self, encoding: str) -> None:
        step, image = C.step_packet(), C.image_packet()
        self._deliver(encoding, C.run_packet(), step, image)
        self.assertEqual(self.rx.encoding, encoding)
        sent, sent_img = sent_arrays(step, encoding), sent_arrays(image, encoding)["image"]
        want_dtype = np.uint8 if encoding == "uint8" else np.float32
        for focus, idx in (("fox", 1), (0, 0), ("global", 3), (-1, 3), ("2", 2)):
            word = self.rx.word_texture(focus)
            self.assertEqual(word.shape, (8, 6, 4))
            self.assertEqual(word.dtype, want_dtype)
            self.assertTrue(word.flags.c_contiguous)
            expect = sent["textures"][idx][::-1].astype(want_dtype)  # float16 -> float32 is exact
            np.testing.assert_array_equal(word[..., 0], expect)
            np.testing.assert_array_equal(word[..., 1], expect)
            self.assertTrue(np.all(word[..., 3] == (255 if encoding == "uint8" else 1.0)))
            masks = self.rx.masks_rgba(focus)
            self.assertEqual((masks.shape, masks.dtype), ((8, 6, 4), np.dtype(want_dtype)))
            self.assertTrue(masks.flags.c_contiguous)
            np.testing.assert_array_equal(masks, sent["rgba"][idx][::-1].astype(want_dtype))
        # the flip is a real flip: TD row 0 = bottom row of the image
        np.testing.assert_array_equal(self.rx.word_texture(0)[-1, :, 0], sent["textures"][0][0].astype(want_dtype))
        img = self.rx.step_image()
        self.assertEqual((img.shape, img.dtype), ((16, 12, 4), np.dtype(np.uint8)))
        np.testing.assert_array_equal(img[..., :3], sent_img[::-1])
        self.assertTrue(np.all(img[..., 3] == 255))

    def test_float32_bit_exact(self) -> None:
        self.check_encoding("float32")

    def test_float16_bit_exact(self) -> None:
        self.check_encoding("float16")

    def test_uint8_bit_exact(self) -> None:
        self.check_encoding("uint8")

    def test_output_format_conversions(self) -> None:
        step = C.step_packet()
        self._deliver("uint8", C.run_packet(), step)
        sent = sent_arrays(step, "uint8")["textures"]
        self.rx.output = "float32"
        word = self.rx.word_texture(1)
        self.assertEqual(word.dtype, np.float32)
        np.testing.assert_array_equal(word[..., 0], sent[1][::-1].astype(np.float32) * np.float32(1 / 255))
        self.rx.output = "uint8"
        self.assertEqual(self.rx.word_texture(1).dtype, np.uint8)

    def test_poll_returns_at_once_when_no_data(self) -> None:
        self.rx.sock = C.NeverWaits(self.rx.sock)  # any socket call that could wait fails at once
        for _ in range(200):  # (not a stopwatch: a busy machine may stall a poll, never make it wait)
            upd = self.rx.poll()
            self.assertFalse(upd)
            self.assertEqual(upd.received, 0)
        self.assertGreaterEqual(self.rx.sock.calls, 200)  # every poll asked the socket, without waiting
        self.assertIsNone(self.rx.word_texture())
        self.assertEqual(self.rx.phase_channels(), {})

    def test_drains_to_latest_step_and_keeps_run(self) -> None:
        self._deliver("float32", C.run_packet(), C.step_packet(step=0))
        deadline = time.monotonic() + C.ARRIVAL_S
        for first in range(1, 10**6, 3):  # one poll must drain several queued steps; a busy machine
            self._fence(f"before {first}")  # that has not queued all three yet gets another try
            for s in range(first, first + 3):  # several steps queued before the next poll
                self.pub.send_bytes(bridge_wire.encode(C.step_packet(step=s), "float32"))
            time.sleep(0.2)  # a pause, not a claim: too short only means one more try
            upd = self.rx.poll()
            if upd.received == 3:
                break
            self.assertLess(time.monotonic(), deadline, "never three steps queued for one poll")
        self.assertEqual(self.rx.latest["step"].header["step"], first + 2)
        self.assertEqual(self.rx.run["run_id"], "r1")

    def test_repeated_run_is_noop_and_new_run_resets(self) -> None:
        self._deliver("float32", C.run_packet("r1"), C.step_packet())
        new_runs: list[bool] = []
        self.pub.send_bytes(bridge_wire.encode(C.run_packet("r1"), "float32"))
        self.pub.send_bytes(bridge_wire.encode(C.packet("status", {"state": "after r1"}), "float32"))
        self.assertTrue(C.pump(lambda: None, lambda: new_runs.append(self.rx.poll().new_run) is None and self._status() == "after r1"))
        self.assertFalse(any(new_runs))  # the repeated run (read before the status behind it) was a no-op
        self.assertIsNotNone(self.rx.latest.get("step"))
        self.pub.send_bytes(bridge_wire.encode(C.run_packet("r2"), "float32"))
        self.assertTrue(C.pump(lambda: None, lambda: self.rx.poll().new_run), "the new run never came")
        self.assertIsNone(self.rx.latest.get("step"))

    def test_a_step_before_its_runs_packet_is_kept(self) -> None:
        """A subscription that lands inside a step's send gets that step before the run packet the
        publisher re-sends to it: the run must not drop its own step (only an older run's)."""
        self._deliver("float32", C.packet("status", {"state": "idle"}))  # subscribed
        for p in (C.step_packet(run_id="r5"), C.run_packet("r5")):
            self.pub.send_bytes(bridge_wire.encode(p, "float32"))
        self.assertTrue(C.pump(lambda: None, lambda: self.rx.poll() is not None and (self.rx.run or {}).get("run_id") == "r5"))
        self.assertEqual(self.rx.latest["step"].header["run_id"], "r5")
        self.assertIsNotNone(self.rx.word_texture("fox"))

    def test_focus_word_not_in_prompt_lists_words(self) -> None:
        self._deliver("float16", C.run_packet(), C.step_packet())
        with self.assertRaises(ValueError) as cm:
            self.rx.word_texture("cat")
        self.assertIn("red, fox, snow", str(cm.exception))
        with self.assertRaises(ValueError):
            self.rx.word_texture(9)

    def test_chop_channels(self) -> None:
        self._deliver("float16", C.run_packet(), C.step_packet(step=3), C.timeline_packet())
        ph = self.rx.phase_channels()
        self.assertEqual(ph["step"].tolist(), [3.0])
        np.testing.assert_allclose([ph["w_noise"][0], ph["w_structure"][0], ph["w_detail"][0]], [0.2, 0.7, 0.1], rtol=1e-6)
        self.assertEqual(ph["wind"].dtype, np.float32)
        words = self.rx.word_channels()
        self.assertAlmostEqual(float(words["mass_fox"][0]), 0.5)
        self.assertTrue(np.isnan(words["entropy_snow"][0]))
        self.assertAlmostEqual(float(words["centroid_y_red"][0]), 0.75)  # TD-up: 1 - 0.25
        tl = self.rx.timeline_channels("mass")
        self.assertEqual(sorted(tl), ["fox", "red", "snow"])
        self.assertEqual(tl["fox"].shape, (10,))
        sent = sent_arrays(C.timeline_packet(), "float16")["mass"]
        np.testing.assert_array_equal(tl["fox"], sent[:, 1].astype(np.float32))


class HelpersTest(unittest.TestCase):
    def test_chan_name(self) -> None:
        self.assertEqual(decoder.chan_name("new york"), "new_york")
        self.assertEqual(decoder.chan_name("3d"), "_3d")

    def test_to_output_rounding_matches_wire(self) -> None:
        x = np.array([-0.5, 0.0, 0.5, 1.0, 2.0, np.nan], dtype=np.float32)
        np.testing.assert_array_equal(decoder.to_output(x, False, "uint8"), [0, 0, 128, 255, 255, 0])

    def test_corrupt_message_is_reported_not_raised(self) -> None:
        pub = ZmqPublisher("tcp://127.0.0.1:*")
        rx = decoder.StreamReceiver("127.0.0.1", int(pub.endpoint.rsplit(":", 1)[1]))
        try:
            errors: list[str] = []
            C.pump(lambda: pub.send_bytes(b"stepx/step\x00\x00\x00\x00\x00\x00XXXX" + b"\x00" * 16),
                   lambda: bool(errors.extend(rx.poll().errors)) or bool(errors))
            self.assertIn("bad magic", errors[0])
        finally:
            rx.close()
            pub.close()


if __name__ == "__main__":
    unittest.main()
