"""The TD extensions with a fake ``td`` seam and fake operators, against a live publisher."""

from __future__ import annotations

import importlib.util
import unittest
from typing import Any

import numpy as np

import _td_common as C
from bridge import protocol as bridge_wire
from bridge.transport.zmq_pub import ZmqPublisher
from stepx_td import tdseam


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, C.TD_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Par:
    def __init__(self, val: Any) -> None:
        self.val = val

    def eval(self) -> Any:
        return self.val


class Pars:
    def __init__(self, **vals: Any) -> None:
        for k, v in vals.items():
            setattr(self, k, Par(v))


class FakeTOP:
    """A Script TOP: ``cook()`` runs its onCook, which calls the extension's ``CookTop``."""

    def __init__(self, which: str = "", ext: Any = None) -> None:
        self.arrays: list[np.ndarray] = []
        self.which, self.ext = which, ext

    def cook(self, force: bool = False) -> None:
        self.ext.CookTop(self, self.which)

    def copyNumpyArray(self, arr: np.ndarray) -> None:
        assert arr.dtype in (np.float32, np.uint8) and arr.flags.c_contiguous and arr.ndim == 3 and arr.shape[2] == 4
        self.arrays.append(arr.copy())


class FakeChan:
    vals: list


class FakeScriptCHOP:
    def __init__(self) -> None:
        self.chans: dict[str, FakeChan] = {}
        self.numSamples = 1
        self.cooks = 0

    def clear(self) -> None:
        self.chans = {}

    def appendChan(self, name: str) -> FakeChan:
        self.chans[name] = FakeChan()
        return self.chans[name]

    def cook(self, force: bool = False) -> None:
        self.cooks += 1


class FakeComp:
    def __init__(self, **pars: Any) -> None:
        self.par = Pars(**pars)
        self.ops: dict[str, Any] = {}

    def op(self, name: str) -> Any:
        return self.ops.get(name)


class ReceiverExtTest(unittest.TestCase):
    def setUp(self) -> None:
        tdseam.install(object())
        self.pub = ZmqPublisher("tcp://127.0.0.1:*")
        port = int(self.pub.endpoint.rsplit(":", 1)[1])
        self.mod = load("StepXReceiverExt")
        self.comp = FakeComp(Address="127.0.0.1", Port=port, Focusword="fox", Encoding="auto",
                             Libpath=str(C.TD_DIR), Active=True)
        for name in self.mod.CHOPS.values():
            self.comp.ops[name] = FakeScriptCHOP()
        self.ext = self.mod.StepXReceiverExt(self.comp)
        for which, name in self.mod.TOPS.items():
            self.comp.ops[name] = FakeTOP(which, self.ext)

    def tearDown(self) -> None:
        self.ext.onDestroyTD()
        self.pub.close()
        tdseam.install(None)

    def test_frames_feed_tops_and_chops(self) -> None:
        self.assertFalse(self.ext.OnFrameStart(1))  # nothing yet: returns at once
        step = C.step_packet()
        send = lambda: [self.pub.send_bytes(bridge_wire.encode(p, "float16")) for p in (C.run_packet(), step, C.image_packet())]
        # wait for both the image and the step to have been drawn (they may land in different polls)
        self.assertTrue(C.pump(send, lambda: self.ext.OnFrameStart(2) and self.comp.ops["step_image"].arrays != []
                               and self.comp.ops["word_tex"].arrays != []))
        word = self.comp.ops["word_tex"].arrays[-1]
        sent = bridge_wire.decode(bridge_wire.encode(step, "float16")).arrays["textures"]
        np.testing.assert_array_equal(word[..., 0], sent[1][::-1].astype(np.float32))  # focus "fox" = 1
        chop = self.comp.ops["phase_chop"]
        self.assertGreater(chop.cooks, 0)
        self.ext.CookChop(chop, "phase")
        self.assertEqual(chop.numSamples, 1)
        self.assertAlmostEqual(chop.chans["w_structure"].vals[0], 0.7, places=6)  # the first step: taken as is
        self.assertEqual(chop.chans["has_image"].vals[0], 1.0)
        self.assertAlmostEqual(chop.chans["wind"].vals[0], 1.5, places=6)
        self.assertIn("step 3", self.ext.Status)
        # focus change re-pushes without new data; an unknown word reports the prompt's words
        self.comp.par.Focusword.val = "cat"
        n = len(self.comp.ops["word_tex"].arrays)
        self.ext.OnFrameStart(3)
        self.assertIn("red, fox, snow", self.ext.Status)
        self.assertEqual(len(self.comp.ops["word_tex"].arrays), n)

    def test_the_first_step_is_taken_as_is_after_an_image_alone(self) -> None:
        """Packets may land in different polls: an image drawn before the run's first step must not
        start the morph from the defaults (CI once saw w_structure 0.0 for 0.7 that way)."""
        def drawn(top: str, frame: int) -> bool:  # one frame, then: has ``top`` been drawn?
            self.ext.OnFrameStart(frame)
            return self.comp.ops[top].arrays != []

        image = lambda: [self.pub.send_bytes(bridge_wire.encode(p, "float16")) for p in (C.run_packet(), C.image_packet())]
        self.assertTrue(C.pump(image, lambda: drawn("step_image", 2)))
        self.assertEqual(self.comp.ops["word_tex"].arrays, [])  # no step yet
        step = lambda: self.pub.send_bytes(bridge_wire.encode(C.step_packet(), "float16"))
        self.assertTrue(C.pump(step, lambda: drawn("word_tex", 3)))
        chop = self.comp.ops["phase_chop"]
        self.ext.CookChop(chop, "phase")
        self.assertAlmostEqual(chop.chans["w_structure"].vals[0], 0.7, places=6)

    def test_phase_chop_has_defaults_before_any_step(self) -> None:
        chop = self.comp.ops["phase_chop"]
        self.ext.CookChop(chop, "phase")
        vals = {k: c.vals[0] for k, c in chop.chans.items()}
        self.assertEqual(vals, {"w_noise": 1.0, "w_structure": 0.0, "w_detail": 0.0, "wind": 1.0, "attraction": 1.0,
                                "has_image": 0.0, "rec_state": -1.0, "rec_failed": 0.0})  # -1: no report yet

    def test_inactive_does_nothing(self) -> None:
        self.comp.par.Active.val = False
        self.assertFalse(self.ext.OnFrameStart(1))
        self.assertIsNone(self.ext.receiver)


class ControlExtTest(unittest.TestCase):
    def test_generate_via_osc_and_bad_prompt(self) -> None:
        import socket
        mod = load("StepXControlExt")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(C.ARRIVAL_S)  # the datagram must come
            comp = FakeComp(Address="127.0.0.1", Oscport=s.getsockname()[1], Transport="osc", Prompt="a fox",
                            Seed=3, Steps=12, Guidance=5.0, Focuswords="fox", Token="", Lastreply="",
                            Libpath=str(C.TD_DIR))
            ext = mod.StepXControlExt(comp)
            ext.Generate()
            data, _ = s.recvfrom(4096)
            self.assertTrue(data.startswith(b"/stepx/control\x00"))
            self.assertIn(b'"prompt":"a fox"', data)
            self.assertIn(b'"focus":["fox"]', data)
            comp.par.Prompt.val = ""
            ext.Generate()
            self.assertIn("prompt", comp.par.Lastreply.val)


if __name__ == "__main__":
    unittest.main()
