"""Control sender against the project's live ControlZmqServer; OSC bytes; never blocking."""

from __future__ import annotations

import json
import socket
import threading
import time
import unittest

import _td_common as C
from bridge.transport.control import handle_json
from bridge.transport.control_zmq import ControlZmqServer
from stepx_td import control


class ControlTest(unittest.TestCase):
    def test_round_trip_with_live_server(self) -> None:
        seen, answered, gate = [], [], threading.Event()

        def handler(req):  # holds the first request until the test opens the gate
            seen.append(req)
            gate.wait(C.ARRIVAL_S)
            answered.append(req.cmd)
            return {"queued": req.cmd}

        server = ControlZmqServer(handler, "tcp://127.0.0.1:*")
        port = int(server.endpoint.rsplit(":", 1)[1])
        client = control.ControlClient("127.0.0.1", port)
        try:
            rid = client.send(control.generate_request("a red fox", seed=7, steps=25, guidance=6.0, focus="fox, snow"))
            client.send(control.simple_request("cancel"))
            self.assertEqual(answered, [])  # both sends returned while the server held the first: no wait for a reply
            gate.set()
            replies: list = []
            C.pump(lambda: replies.extend(client.poll()), lambda: len(replies) >= 2)
            self.assertEqual([r["ok"] for r in replies], [True, True])
            self.assertEqual(replies[0]["id"], rid)
            self.assertEqual(seen[0].params.focus, ["fox", "snow"])
            self.assertEqual((seen[0].params.seed, seen[0].params.steps), (7, 25))
            self.assertEqual(seen[1].cmd, "cancel")
            client.send({"cmd": "generate", "prompt": "x", "steps": 9999})
            bad: list = []
            C.pump(lambda: bad.extend(client.poll()), lambda: bool(bad))
            self.assertFalse(bad[0]["ok"])
            self.assertIn("steps", bad[0]["error"])
        finally:
            client.close()
            server.close()

    def test_no_server_times_out_without_blocking(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = control.ControlClient("127.0.0.1", port, timeout_s=0.2)
        try:
            t0 = time.monotonic()
            client.send(control.simple_request("ping"))
            client.sock = C.NeverWaits(client.sock)  # a poll that could wait fails at once (no stopwatch)
            r: list = []
            self.assertTrue(C.pump(lambda: r.extend(client.poll()), lambda: bool(r)), "no timeout reply")
            self.assertGreaterEqual(time.monotonic() - t0, 0.2)  # not before its timeout (a busy machine only adds)
            self.assertEqual(len(r), 1)
            self.assertFalse(r[0]["ok"])
            self.assertIn("no reply", r[0]["error"])
            self.assertFalse(client.busy)
            client.send(control.simple_request("ping"))  # the re-created REQ socket can send again
            self.assertTrue(client.busy)
        finally:
            client.close()

    def test_generate_request_fields(self) -> None:
        req = control.generate_request("p", seed=-1, steps=10)
        self.assertNotIn("seed", req)
        with self.assertRaises(ValueError):
            control.generate_request("  ")
        # the daemon's own rules, checked in TD before sending (stepx_td.request, the same schema)
        for bad in ({"steps": 100000}, {"width": 100}, {"guidance": float("nan")}, {"seed": 2**40}, {"colour": 1}):
            with self.assertRaises(ValueError):
                control.generate_request("p", **bad)
        req = control.generate_request("p", steps=None, guidance=None, width=0, height=256, focus="")
        self.assertEqual(req, {"cmd": "generate", "prompt": "p", "height": 256})
        self.assertEqual(json.loads(handle_json(json.dumps({**req, "id": 1}).encode(), lambda r: None))["ok"], True)

    def test_osc_message_bytes(self) -> None:
        msg = control.osc_message("/stepx/seed", 7)
        self.assertEqual(msg, b"/stepx/seed\x00,i\x00\x00\x00\x00\x00\x07")
        full = control.osc_control_message({"cmd": "ping"})
        self.assertEqual(len(full) % 4, 0)
        self.assertIn(b'{"cmd":"ping"}', full)


if __name__ == "__main__":
    unittest.main()
