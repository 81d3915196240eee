"""The built network runs: frame-start Execute DAT -> promoted extension -> Script TOP/CHOP
callbacks -> copyNumpyArray / channels, fed by a live ZeroMQ publisher (stand-in ``td``)."""

from __future__ import annotations

import itertools
import unittest

import _td_common as C
import numpy as np
import tdstandin as S

from bridge import protocol as bridge_wire
from bridge.transport.zmq_pub import ZmqPublisher


class LiveNetworkTest(unittest.TestCase):
    def setUp(self) -> None:
        self.td = S.make_td()
        S.install(self.td)
        S.textport_exec(str(C.TD_DIR / "build_network.py"), {"STEPX_TD_DIR": str(C.TD_DIR)})
        self.piece = self.td.op("/project1/stepx")
        self.rx = self.piece.op("stepx_receiver")
        self.pub = ZmqPublisher("tcp://127.0.0.1:*")
        self.rx.par.Port = int(self.pub.endpoint.rsplit(":", 1)[1])
        self.rx.par.Focusword = "fox"
        self.frame = 0

    def tearDown(self) -> None:
        for ext in self.rx.extensions:
            ext.onDestroyTD()
        self.pub.close()
        S.uninstall()

    def tick(self) -> bool:
        self.frame += 1
        S.frame_start(self.piece, self.frame)
        return self.rx.op("word_tex").array is not None and self.rx.op("step_image").array is not None

    def test_stream_reaches_the_script_tops_and_chops(self) -> None:
        self.tick()  # before any data: the receiver connects, nothing is pushed
        self.assertIsNone(self.rx.op("masks_rgba").array)
        step = C.step_packet()
        packets = (C.run_packet(), step, C.image_packet())
        send = lambda: [self.pub.send_bytes(bridge_wire.encode(p, "float16")) for p in packets]
        self.assertTrue(C.pump(send, self.tick), "the network never drew the step and the image")
        sent = bridge_wire.decode(bridge_wire.encode(step, "float16")).arrays["textures"]
        word = self.rx.op("word_tex").array
        np.testing.assert_array_equal(word[..., 0], sent[1][::-1].astype(np.float32))  # "fox", flipped for TD
        image = self.rx.op("step_image").array
        self.assertEqual(image.dtype, np.uint8)
        chop = self.rx.op("phase_chop")
        self.assertAlmostEqual(chop["w_structure"].vals[0], 0.7, places=6)
        self.assertEqual(chop["has_image"].vals[0], 1.0)
        self.assertIn("step 3", self.rx.Status)  # the promoted extension member, read on the COMP
        self.check_bindings_evaluate(chop)

    def check_bindings_evaluate(self, chop) -> None:
        """Every uniform expression resolves in place (paths relative to its operator) to a number."""
        import math

        for name in ("stepx_seed", "stepx_sim", "stepx_mat", "stepx_trails", "stepx_show", "stepx_pop_sim"):
            node = self.piece.op(name)
            for i in range(node.seq.vec.numBlocks):
                for c in "xyzw":
                    par = node.par[f"vec{i}value{c}"]
                    if par is not None and par.expr:
                        v = float(par.eval())
                        self.assertTrue(math.isfinite(v), f"{name} {node.par[f'vec{i}name'].val}.{c} = {v}")
        sim = self.piece.op("stepx_sim")
        phase = [float(sim.par[f"vec1value{c}"].eval()) for c in "xyz"]
        self.assertEqual(sim.par.vec1name.val, "u_phase")
        self.assertEqual(phase, [chop[n].vals[0] for n in ("w_noise", "w_structure", "w_detail")])
        size = [float(sim.par[f"vec11value{c}"].eval()) for c in "xy"]
        self.assertEqual(sim.par.vec11name.val, "u_mask_size")
        h, w = self.rx.op("masks_rgba").array.shape[:2]
        self.assertEqual(size, [w, h])

    def test_recorder_health_is_shown_on_the_component(self) -> None:
        rec = {"state": "recording", "path": "/shows/night.stepx.partial", "files": 2, "runs": 5, "bytes": 2_500_000,
               "error": ""}
        status = lambda r: C.packet("status", {"state": "generating", "state_code": 2, "recording": r})
        self.assertEqual(self.rx.par.Recording.val, "no report yet")
        send = lambda: self.pub.send_bytes(bridge_wire.encode(status(rec), "float16"))
        self.assertTrue(C.pump(send, lambda: self.tick() or self.rx.par.Recstate.val == "recording"))
        par = self.rx.par
        self.assertEqual((par.Recording.val, par.Recfiles.val, par.Recruns.val, par.Recsize.val, par.Recpath.val),
                         ("REC 2 files, 5 runs, 2.5 MB", 2, 5, "2.5 MB", "/shows/night.stepx.partial"))
        chop = self.rx.op("phase_chop")
        self.assertEqual((chop["rec_state"].vals[0], chop["rec_failed"].vals[0]), (1.0, 0.0))
        # the disk fills: the failure is in the parameters, the CHOP and the Status line, and stays
        # there while steps keep coming (the show goes on unrecorded)
        failed = {**rec, "state": "failed", "error": "[Errno 28] No space left on device"}
        packets = (status(failed), C.run_packet(), C.step_packet())
        send = lambda: [self.pub.send_bytes(bridge_wire.encode(p, "float16")) for p in packets]
        self.assertTrue(C.pump(send, lambda: self.tick() or "step 3" in self.rx.Status and par.Recstate.val == "failed"))
        self.assertEqual(par.Recerror.val, "[Errno 28] No space left on device")
        self.assertEqual(par.Recording.val, "RECORDING FAILED: [Errno 28] No space left on device")
        self.assertIn("RECORDING FAILED", self.rx.Status)
        self.assertEqual((chop["rec_state"].vals[0], chop["rec_failed"].vals[0]), (2.0, 1.0))
        # a malformed object: one clear line in Status, the last good reading stays
        self.pub.send_bytes(bridge_wire.encode(status({"state": "paused"}), "float16"))
        self.assertTrue(C.pump(lambda: None, lambda: self.tick() or "paused" in self.rx.Status))
        self.assertEqual(par.Recstate.val, "failed")

    def test_recorder_health_from_osc(self) -> None:
        from bridge.transport import osc_encode
        from test_td_recording import osc_decode

        ext = self.rx.extensions[0]
        self.assertFalse(ext.OnOsc(*osc_decode(osc_encode.message("/stepx/progress", 0.5))))
        self.assertTrue(ext.OnOsc(*osc_decode(osc_encode.message("/stepx/recording", 2, 3))))
        self.assertTrue(ext.OnOsc(*osc_decode(osc_encode.message("/stepx/recording/error", "folder removed"))))
        self.assertEqual((self.rx.par.Recstate.val, self.rx.par.Recfiles.val), ("failed", 3))
        self.assertEqual(self.rx.par.Recording.val, "RECORDING FAILED: folder removed")
        self.assertEqual(self.rx.op("phase_chop")["rec_failed"].vals[0], 1.0)
        self.assertFalse(ext.OnOsc("/stepx/recording", [9, 1]))  # bad args: reported, nothing changes
        self.assertIn("/stepx/recording", self.rx.Status)
        self.assertEqual(self.rx.par.Recstate.val, "failed")

    def test_phase_weights_morph_over_frames(self) -> None:
        ext = self.rx.extensions[0]
        ext.morph.set_target([1.0, 0.0, 0.0])
        ext.morph.advance(0.0, 0.6)
        ext.morph.set_target([0.0, 1.0, 0.0])
        seen = []
        for i in range(5):
            ext.OnFrameStart(i, dt=0.1)
            seen.append(self.rx.op("phase_chop")["w_structure"].vals[0])
        self.assertTrue(all(0.0 < a < b < 1.0 for a, b in itertools.pairwise(seen)), seen)  # eased, no cut


if __name__ == "__main__":
    unittest.main()
