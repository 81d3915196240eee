"""build_network.py run the way the textport runs it, against the strict ``td`` stand-in."""

from __future__ import annotations

import math
import tempfile
import unittest
from types import SimpleNamespace
from typing import Any

import _td_common as C
import tdstandin as S
from stepx_td import piece as PC
from stepx_td.morph import PHASE_DEFAULTS

BUILD = C.TD_DIR / "build_network.py"


def build(**extra: Any) -> tuple[Any, dict[str, Any]]:
    td = S.make_td()
    S.install(td)
    g = S.textport_exec(str(BUILD), {"STEPX_TD_DIR": str(C.TD_DIR), **extra})
    return td, g


class BuildTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tox = tempfile.mkdtemp() + "/stepx.tox"
        self.td, self.g = build(STEPX_SAVE_TOX=self.tox)
        self.piece = self.td.op("/project1/stepx")

    def tearDown(self) -> None:
        S.uninstall()

    def test_td_names_come_from_builtins_not_globals(self) -> None:
        self.assertNotIn("op", self.g)  # the textport gives them as builtins only
        self.assertNotIn("baseCOMP", self.g)
        self.assertIsNotNone(self.piece)
        self.assertIs(self.g["STEPX_BUILD"]["piece"], self.piece)

    def test_network_has_no_problems(self) -> None:
        out = self.piece.op("out_piece")
        self.assertEqual(S.check_network(self.piece, output=out), [])

    def test_receiver_component(self) -> None:
        rx = self.piece.op("stepx_receiver")
        kinds = {o.name: o.OPType for o in rx.children}
        for n in ("word_tex", "masks_rgba", "step_image"):
            self.assertEqual(kinds[n], "scriptTOP")
            cb = rx.op(n).par.callbacks.val
            self.assertIn("parent().CookTop(scriptOp,", cb.text)
            self.assertEqual(rx.op("out_" + n).inputs, [rx.op(n)])
        for n in ("phase", "words", "timeline"):
            self.assertIn(f"CookChop(scriptOp, '{n}')", rx.op(f"{n}_chop").par.callbacks.val.text)
            self.assertEqual(rx.op(f"out_{n}").inputs, [rx.op(f"{n}_chop")])
        ex = rx.op("frame_exec")
        self.assertTrue(ex.par.framestart.val)
        compile(ex.text, "frame_exec", "exec")
        self.assertEqual(rx.par.ext0object.val, "op('./StepXReceiverExt').module.StepXReceiverExt(me)")
        self.assertTrue(rx.par.ext0promote.val)
        import importlib.util
        spec = importlib.util.spec_from_file_location("rx_ext", C.TD_DIR / "StepXReceiverExt.py")
        ext = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ext)
        self.assertIn("class StepXReceiverExt", rx.op("StepXReceiverExt").text)
        self.assertEqual({p.name for p in rx.customPars},  # the recorder's: the names the extension writes
                         {"Address", "Port", "Focusword", "Encoding", "Morph", "Active", "Libpath", *ext.RECORDING_PARS})
        self.assertEqual(rx.par.Recording.val, "no report yet")
        self.assertEqual(rx.par.Port.val, 5560)
        self.assertEqual(rx.par.Encoding.menuNames, ["auto", "float32", "uint8"])

    def test_control_component(self) -> None:
        ctl = self.piece.op("stepx_control")
        self.assertEqual(ctl.par.ext0object.val, "op('./StepXControlExt').module.StepXControlExt(me)")
        self.assertEqual(ctl.par.Generate.style, "Pulse")
        pe = ctl.op("pulse_exec")
        self.assertEqual((pe.par.pars.val, pe.par.op.val), ("Generate Cancel Status", ctl))
        self.assertTrue(pe.par.custom.val and pe.par.onpulse.val)
        compile(pe.text, "pulse_exec", "exec")

    def test_simulation_binds_every_uniform(self) -> None:
        sim = self.piece.op("stepx_sim")
        self.assertEqual(sim.seq.vec.numBlocks, len(PC.SIM_UNIFORMS))
        for i, u in enumerate(PC.SIM_UNIFORMS):
            self.assertEqual(sim.par[f"vec{i}name"].val, u.name)
            for c, e in zip("xyzw", u.exprs):
                self.assertEqual(sim.par[f"vec{i}value{c}"].expr, e)
        self.assertEqual([sim.par[f"sampler{i}name"].val for i in range(2)], ["u_mask", "u_image"])
        self.assertEqual(sim.par.sampler0filter.val, "mipmaplinear")
        self.assertEqual(sim.par.sampler0top.val.par.format.val, "rgba16float")  # filterable
        self.assertEqual(sim.par.numcolorbufs.val, 3)
        self.assertEqual([o.name for o in sim.inputs], ["stepx_state_a", "stepx_state_b", "stepx_state_c"])
        self.assertEqual([self.piece.op(f"stepx_sim_{t}").par.colorbufindex.val for t in "bc"], [1, 2])
        seeds = [self.piece.op(f"stepx_state_{t}").inputs[0].name for t in "abc"]
        self.assertEqual(seeds, ["stepx_seed", "stepx_seed_b", "stepx_seed_c"])  # three independent buffers
        self.assertNotIn('#include "', self.piece.op("stepx_sim_pixel").text)

    def test_render_stage_and_trails(self) -> None:
        p = self.piece
        geo, mat, rend = p.op("stepx_geo"), p.op("stepx_mat"), p.op("stepx_render")
        self.assertTrue(geo.par.instancing.val)
        self.assertEqual(geo.par.numinstances.expr, "parent().par.Grid * parent().par.Grid")
        self.assertIs(geo.par.material.val, mat)
        self.assertEqual([c.name for c in geo.children], ["sprite"])
        self.assertTrue(geo.op("sprite").render)
        self.assertEqual([mat.par[f"sampler{i}top"].val.name for i in range(3)], ["stepx_sim", "stepx_sim_b", "stepx_sim_c"])
        self.assertEqual((rend.par.camera.val, rend.par.geometry.val), (p.op("stepx_camera"), geo))
        trails, fb, show = p.op("stepx_trails"), p.op("stepx_trails_fb"), p.op("stepx_show")
        self.assertEqual(trails.inputs, [rend, fb])
        self.assertIs(fb.par.top.val, trails)
        self.assertEqual(show.inputs, [trails, p.op("stepx_image")])
        self.assertEqual(p.op("out_piece").inputs, [show])
        pulled = S.pulled_by(p.op("out_piece"))
        for name in ("stepx_sim_b", "stepx_sim_c", "stepx_sim", "stepx_state_a"):
            self.assertIn(p.op(name), pulled, name)

    def test_pop_variant(self) -> None:
        sim = self.piece.op("stepx_pop_sim")
        self.assertEqual(sim.OPType, "glslPOP")
        src = sim.par.computedat.val.text
        self.assertIn("#define STEPX_HOST_DECLARES_UNIFORMS", src)
        self.assertEqual([sim.par[f"attr{i}name"].val for i in range(3)], [a for a, _ in PC.POP_ATTRIBUTES])
        self.assertEqual(self.piece.op("stepx_pop_fb").par.pop.val, sim)
        self.assertEqual(self.piece.op("stepx_pop_out").inputs[0].name, "stepx_pop_trail")

    def test_saves_a_tox(self) -> None:
        self.assertEqual(self.piece.saved, [self.tox])
        self.assertEqual(self.g["STEPX_BUILD"]["tox"], self.tox)

    def test_rebuild_reuses_operators(self) -> None:
        before = {o.path for o in S.walk(self.piece)}
        g = S.textport_exec(str(BUILD), {"STEPX_TD_DIR": str(C.TD_DIR)})
        self.assertEqual({o.path for o in S.walk(self.piece)}, before)
        self.assertIs(g["STEPX_BUILD"]["piece"], self.piece)

    def test_expressions_evaluate_with_defaults(self) -> None:
        """Every binding is a valid expression that gives a finite number before any step."""
        pars = {p.name: p.default for p in PC.PIECE_PARAMS}
        par_ns = SimpleNamespace(**{k: v for k, v in pars.items() if k != "Colormap"},
                                 Colormap=SimpleNamespace(menuIndex=0))
        ops = {PC.PHASE_CHOP: dict(PHASE_DEFAULTS), PC.MASKS: SimpleNamespace(width=64, height=48)}
        ns = {"op": ops.__getitem__, "parent": lambda: SimpleNamespace(par=par_ns), "math": math,
              "absTime": SimpleNamespace(seconds=1.5), "me": SimpleNamespace(time=SimpleNamespace(rate=60.0))}
        for group in (PC.SIM_UNIFORMS, PC.RENDER_UNIFORMS, PC.TRAIL_UNIFORMS, PC.SHOW_UNIFORMS, PC.SEED_UNIFORMS):
            for u in group:
                for e in u.exprs:
                    v = eval(e, dict(ns))
                    self.assertTrue(math.isfinite(float(v)), f"{u.name}: {e} -> {v}")


class StrictnessTest(unittest.TestCase):
    """The builder fails loudly, naming the parameter, where a TouchDesigner lacks one."""

    def tearDown(self) -> None:
        S.uninstall()

    def test_unknown_parameter_is_a_build_error(self) -> None:
        saved = S.PARS["renderselectTOP"]["pars"]
        S.PARS["renderselectTOP"]["pars"] = tuple(p for p in saved if p != "colorbufindex")
        try:
            with self.assertRaises(Exception) as cm:
                build()
        finally:
            S.PARS["renderselectTOP"]["pars"] = saved
        self.assertEqual(type(cm.exception).__name__, "BuildError")
        self.assertIn("'colorbufindex'", str(cm.exception))

    def test_standin_raises_like_td(self) -> None:
        td = S.make_td()
        glsl = td.project1.create(td.glslTOP, "g")
        with self.assertRaises(S.tdAttributeError):
            glsl.par.colorbufferindex = 1
        with self.assertRaises(AttributeError):
            _ = glsl.par.vec1name  # one block until the sequence grows
        self.assertIsNone(glsl.par["vec1name"])
        glsl.seq.vec.numBlocks = 2
        glsl.par.vec1name = "u_x"
        with self.assertRaises(S.tdError):
            glsl.appendCustomPage("P").appendFloat("bad_name")
        mat = td.project1.create(td.glslMAT, "m")
        with self.assertRaises(S.tdError):  # the MAT Common page's menu says 'omsa'
            mat.par.destblend = "oneminussrca"
        mat.par.destblend = "omsa"


if __name__ == "__main__":
    unittest.main()
