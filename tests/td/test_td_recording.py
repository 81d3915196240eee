"""Recorder health on the TD side: status objects and real OSC messages -> RecordingHealth."""

from __future__ import annotations

import struct
import unittest
from typing import Any

import _td_common as C  # noqa: F401  (puts td_components on sys.path)
from bridge import protocol as bridge_wire
from bridge.transport import osc_encode
from stepx_td import recording as R
from stepx_td.protocol import RECORDING_STATES


def osc_decode(data: bytes) -> tuple[str, list[Any]]:
    """A plain OSC 1.0 message -> (address, args): int32 ``i``, float32 ``f`` and string ``s``, what the
    recording addresses use (what TouchDesigner's OSC In DAT hands its callback)."""
    def string(at: int) -> tuple[str, int]:
        end = data.index(b"\0", at)
        return data[at:end].decode("utf-8"), (end + 4) & ~3
    address, at = string(0)
    tags, at = string(at)
    args: list[Any] = []
    for tag in tags[1:]:
        if tag in "if":
            args.append(struct.unpack(">" + tag, data[at:at + 4])[0])
            at += 4
        elif tag == "s":
            text, at = string(at)
            args.append(text)
        else:
            raise AssertionError(f"unexpected OSC tag {tag!r}")
    return address, args


RECORDING = {"state": "recording", "path": "/shows/night.stepx.partial", "files": 3, "runs": 2, "bytes": 12_345_678,
             "error": ""}


class FromStatusTest(unittest.TestCase):
    def test_recording_round_trips_through_the_wire(self) -> None:
        sent = C.packet("status", {"state": "generating", "state_code": 2, "recording": RECORDING})
        header = bridge_wire.decode(bridge_wire.encode(sent, "float16")).header
        h = R.from_status(header)
        self.assertEqual((h.state, h.path, h.files, h.runs, h.bytes, h.error),
                         ("recording", "/shows/night.stepx.partial", 3, 2, 12_345_678, ""))
        self.assertFalse(h.failed)
        self.assertEqual(h.code, 1)
        self.assertEqual(h.summary(), "REC 3 files, 2 runs, 12.3 MB")

    def test_failed_and_off(self) -> None:
        h = R.from_status({"recording": {**RECORDING, "state": "failed", "error": "disk full:\n/shows"}})
        self.assertTrue(h.failed)
        self.assertEqual(h.summary(), "RECORDING FAILED: disk full: /shows")  # one line
        off = R.from_status({"recording": {"state": "off"}})
        self.assertEqual((off.summary(), off.code, off.files), ("REC off", 0, 0))
        self.assertEqual(R.RecordingHealth("recording", files=1, runs=1, bytes=999).summary(), "REC 1 file, 1 run, 999 B")
        self.assertIsNone(R.from_status({"state": "idle"}))  # a daemon older than the field

    def test_malformed_is_one_clear_error(self) -> None:
        for bad, words in (({"state": "paused"}, "unknown recording state 'paused'"), ([1], "must be an object"),
                           ({"state": "recording", "files": -1}, "recording.files"),
                           ({"state": "recording", "bytes": True}, "recording.bytes"),
                           ({"state": "failed", "error": 3}, "must be strings")):
            with self.assertRaises(ValueError) as cm:
                R.from_status({"recording": bad})
            self.assertIn(words, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))


class FromOscTest(unittest.TestCase):
    def test_state_then_error_as_the_daemon_sends_them(self) -> None:
        # the daemon's messages (bridge.transport.osc_out.recording_messages) built by its own encoder
        code = RECORDING_STATES.index("failed")
        msgs = [osc_decode(osc_encode.message("/stepx/recording", code, 4)),
                osc_decode(osc_encode.message("/stepx/recording/error", "No space left on device"))]
        h = None
        for address, args in msgs:
            h = R.from_osc(address, args, h)
        self.assertEqual((h.state, h.files, h.error), ("failed", 4, "No space left on device"))
        self.assertEqual(h.summary(), "RECORDING FAILED: No space left on device")
        # the next second: still failed -> the error is kept until its own message repeats it
        h = R.from_osc(*osc_decode(osc_encode.message("/stepx/recording", code, 4)), h)
        self.assertEqual(h.error, "No space left on device")
        # recovered (a new session): the error goes
        h = R.from_osc(*osc_decode(osc_encode.message("/stepx/recording", 1, 1)), h)
        self.assertEqual((h.state, h.files, h.error), ("recording", 1, ""))

    def test_other_addresses_and_bad_args(self) -> None:
        self.assertIsNone(R.from_osc("/stepx/progress", [0.5]))
        for address, args in (("/stepx/recording", [7, 1]), ("/stepx/recording", [1]),
                              ("/stepx/recording", [1.0, 2]), ("/stepx/recording/error", [3])):
            with self.assertRaises(ValueError):
                R.from_osc(address, args)


if __name__ == "__main__":
    unittest.main()
