"""build_network.py exec'd the way the textport does, against a small fake op/COMP API."""

from __future__ import annotations

import unittest
from typing import Any

import _td_common as C


class FakePar:
    def __init__(self) -> None:
        self.val: Any = None
        self.default: Any = None
        self.menuNames: list = []
        self.menuLabels: list = []


class FakePars:
    """Accepts any parameter except the names in ``missing`` (to test the warning path)."""

    missing = {"numcolorbufs"}

    def __getattr__(self, name: str) -> Any:
        if name in FakePars.missing:
            return None
        if name[:1].isupper():  # custom parameters exist only once appended
            raise AttributeError(name)
        return FakePar()  # any built-in (lowercase) parameter exists


class Connector:
    def __init__(self, owner: "FakeOp", index: int, log: list) -> None:
        self.owner, self.index, self.log = owner, index, log

    def connect(self, target: Any) -> None:
        dst = target.owner.name if isinstance(target, Connector) else target.name
        idx = target.index if isinstance(target, Connector) else 0
        self.log.append((self.owner.name, dst, idx))


class FakePage:
    def __init__(self, comp: "FakeOp", name: str) -> None:
        self.comp, self.name = comp, name

    def __getattr__(self, attr: str) -> Any:
        if not attr.startswith("append"):
            raise AttributeError(attr)

        def append(name: str, label: str = "") -> list:
            par = FakePar()
            setattr(self.comp.par, name, par)
            self.comp.custom[name] = (attr[6:], label, par)
            return [par]
        return append


class FakeOp:
    def __init__(self, type_name: str, name: str, parent: "FakeOp | None", log: list) -> None:
        self.type, self.name, self.log = type_name, name, log
        self.path = (parent.path if parent else "") + "/" + name
        self.par = FakePars()
        self.children: dict[str, FakeOp] = {}
        self.custom: dict[str, tuple] = {}
        self.text = ""
        self.outputConnectors = [Connector(self, 0, log)]
        self.inputConnectors = [Connector(self, i, log) for i in range(4)]

    def create(self, type_name: str, name: str) -> "FakeOp":
        self.children[name] = FakeOp(type_name, name, self, self.log)
        return self.children[name]

    def op(self, name: str) -> "FakeOp | None":
        return self.children.get(name)

    def appendCustomPage(self, name: str) -> FakePage:
        return FakePage(self, name)

    def pars(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self.par).items()}


TYPES = ["baseCOMP", "textDAT", "executeDAT", "parameterexecuteDAT", "scriptTOP", "scriptCHOP", "outTOP",
         "outCHOP", "noiseTOP", "feedbackTOP", "glslTOP", "renderselectTOP"]


class BuildTest(unittest.TestCase):
    def setUp(self) -> None:
        self.log: list = []
        self.root = FakeOp("containerCOMP", "project1", None, self.log)
        ns: dict[str, Any] = {t: t for t in TYPES}
        ns.update(op=lambda path: self.root, STEPX_TD_DIR=str(C.TD_DIR), __name__="__main__")
        code = (C.TD_DIR / "build_network.py").read_text(encoding="utf-8")
        exec(compile(code, "build_network.py", "exec"), ns)  # what the textport's exec() does
        self.result = ns["STEPX_BUILD"]

    def test_receiver_component(self) -> None:
        rx = self.root.op("stepx_receiver")
        self.assertEqual(rx.type, "baseCOMP")
        kinds = {n: o.type for n, o in rx.children.items()}
        for n in ("word_tex", "masks_rgba", "step_image"):
            self.assertEqual(kinds[n], "scriptTOP")
            self.assertIs(rx.op(n).pars()["modoutsidecook"], True)
            self.assertIn((n, "out_" + n, 0), self.log)
        for n in ("phase", "words", "timeline"):
            self.assertEqual(kinds[f"{n}_chop"], "scriptCHOP")
            self.assertIn(f"CookChop(scriptOp, '{n}')", rx.op(f"{n}_chop_callbacks").text)
            self.assertIn((f"{n}_chop", f"out_{n}", 0), self.log)
        ex = rx.op("frame_exec")
        self.assertEqual((ex.type, ex.pars()["framestart"]), ("executeDAT", True))
        self.assertIn("def onFrameStart(frame)", ex.text)
        compile(ex.text, "frame_exec", "exec")
        self.assertEqual(rx.pars()["extension1"], "op('./StepXReceiverExt').module.StepXReceiverExt(me)")
        self.assertTrue(rx.pars()["promoteextension1"])
        self.assertIn("class StepXReceiverExt", rx.op("StepXReceiverExt").text)
        self.assertEqual(set(rx.custom), {"Address", "Port", "Focusword", "Encoding", "Active", "Libpath"})
        self.assertEqual(rx.custom["Port"][2].val, 5560)
        self.assertEqual(rx.custom["Encoding"][2].menuNames, ["auto", "float32", "uint8"])

    def test_control_component(self) -> None:
        ctl = self.root.op("stepx_control")
        self.assertEqual(ctl.pars()["extension1"], "op('./StepXControlExt').module.StepXControlExt(me)")
        self.assertEqual(ctl.custom["Generate"][0], "Pulse")
        pe = ctl.op("pulse_exec")
        self.assertEqual(pe.pars()["pars"], "Generate Cancel Status")
        compile(pe.text, "pulse_exec", "exec")

    def test_particles_and_warnings(self) -> None:
        glsl = self.root.op("stepx_particles")
        src = self.root.op("stepx_particles_pixel").text
        self.assertNotIn('#include "', src)
        self.assertIn("void particle_step(inout vec4 a, inout vec4 b, inout vec4 c)", src)
        self.assertEqual(glsl.pars()["pixeldat"], "/project1/stepx_particles_pixel")
        self.assertEqual(glsl.pars()["sampler0top"], "/project1/stepx_receiver/masks_rgba")
        self.assertIn(("stepx_state_a", "stepx_particles", 0), self.log)
        self.assertIn(("stepx_state_b", "stepx_particles", 1), self.log)
        self.assertIn(("stepx_state_c", "stepx_particles", 2), self.log)
        self.assertEqual(self.root.op("stepx_state_c").pars()["top"], "/project1/stepx_state_c_out")
        self.assertEqual(self.result["warnings"], ["/project1/stepx_particles: no parameter 'numcolorbufs'"])

    def test_rebuild_reuses_operators(self) -> None:
        ns: dict[str, Any] = {t: t for t in TYPES}
        ns.update(op=lambda path: self.root, STEPX_TD_DIR=str(C.TD_DIR))
        before = set(self.root.op("stepx_receiver").children)
        exec((C.TD_DIR / "build_network.py").read_text(encoding="utf-8"), ns)
        self.assertEqual(set(self.root.op("stepx_receiver").children), before)


if __name__ == "__main__":
    unittest.main()
