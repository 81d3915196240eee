"""The strict stand-in fails the pre-fix builder on each of issue 23's items 1-10.

``fixtures/build_network_v0.py`` (and the v0 POP shader / decoder next to it) are frozen copies
of the TouchDesigner side before the fix; the current side passes the same checks
(test_td_build.py, test_td_glsl.py, test_td_decoder.py).
"""

from __future__ import annotations

import importlib.util
import sys
import unittest
from types import SimpleNamespace
from typing import Any

import _td_common as C
import numpy as np
import tdstandin as S

FIX = C.ROOT / "tests" / "td" / "fixtures"


def load(name: str, path: Any) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


class PreFixBuilderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.td = S.make_td()
        S.install(cls.td)
        v0 = load("build_network_v0", FIX / "build_network_v0.py")
        T = {name: getattr(cls.td, name) for name in S.OP_TYPES}
        cls.root = cls.td.project1
        cls.made = v0.build(cls.root, str(C.TD_DIR), T)
        cls.warnings = cls.made["warnings"]
        cls.problems = S.check_network(cls.root, output=cls.root.op("stepx_particles"))

    @classmethod
    def tearDownClass(cls) -> None:
        S.uninstall()

    def problem(self, *words: str) -> list[str]:
        return [p for p in self.problems if all(w in p for w in words)]

    def test_item1_render_select_parameter_name(self) -> None:
        self.assertIn("/project1/stepx_state_b_out: no parameter 'colorbufferindex'", self.warnings)

    def test_item2_no_uniform_is_bound(self) -> None:
        self.assertTrue(self.problem("stepx_particles", "uniform u_dt is not bound"))
        self.assertTrue(self.problem("stepx_particles", "uniform u_phase is not bound"))

    def test_item3_pre2022_extension_parameters(self) -> None:
        self.assertIn("/project1/stepx_receiver: no parameter 'extension1'", self.warnings)
        self.assertIn("/project1/stepx_receiver: no parameter 'promoteextension1'", self.warnings)

    def test_item4_textport_entry_does_nothing(self) -> None:
        td = S.make_td()
        S.uninstall()
        S.install(td)
        try:
            g = S.textport_exec(str(FIX / "build_network_v0.py"), {"STEPX_TD_DIR": str(C.TD_DIR)})
            self.assertNotIn("STEPX_BUILD", g)
            self.assertEqual(td.project1.children, [])  # silently built nothing
        finally:
            S.uninstall()
            S.install(self.td)

    def test_item5_second_sampler_block_does_not_exist(self) -> None:
        self.assertIn("/project1/stepx_particles: no parameter 'sampler1name'", self.warnings)
        self.assertIn("/project1/stepx_particles: no parameter 'sampler1top'", self.warnings)
        self.assertTrue(self.problem("sampler u_image is not on the Samplers page"))

    def test_item6_mask_not_filterable_no_mipmaps(self) -> None:
        self.assertTrue(self.problem("sampler u_mask", "not Mipmap Linear"))
        # and were the filter set, the 32-bit float Script TOP could not be mip-mapped
        glsl = self.root.op("stepx_particles")
        glsl.par.sampler0filter = "mipmaplinear"
        try:
            again = S.check_network(self.root)
        finally:
            glsl.par.sampler0filter = None
        self.assertTrue([p for p in again if "32-bit float" in p and "u_mask" in p])

    def test_item7_pop_shader_redeclares_injected_uniforms(self) -> None:
        import td_glsl as G
        from stepx_td import piece as PC
        from stepx_td.glsl import splice_includes

        pre = G.pop_preamble([("P", "vec3")] + list(PC.POP_ATTRIBUTES), [(u.name, u.glsl_type) for u in PC.SIM_UNIFORMS],
                             [s.name for s in PC.SIM_SAMPLERS])
        ok, log = G.compile_glsl(pre + splice_includes(FIX / "stepx_particles_pop_v0.comp"), "comp")
        self.assertFalse(ok)
        self.assertIn("redefinition", log)

    def test_item8_float32_step_image_is_0_to_255(self) -> None:
        import stepx_td  # noqa: F401 - the v0 decoder imports its sibling wire module relatively
        old = load("stepx_td.decoder_v0", FIX / "decoder_v0.py")
        from stepx_td import decoder as new

        img = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
        got = {}
        for tag, mod in (("old", old), ("new", new)):
            rx = mod.StreamReceiver("127.0.0.1", 9, output="float32")  # never connects: data injected
            try:
                rx.latest["image"] = SimpleNamespace(arrays={"image": img}, header={})
                got[tag] = rx.step_image()
            finally:
                rx.close()
        self.assertGreater(float(got["old"].max()), 1.0)  # the bug: 0..255 floats
        self.assertLessEqual(float(got["new"].max()), 1.0)
        np.testing.assert_allclose(got["new"][::-1][..., :3], img / 255.0, rtol=0, atol=1e-7)
        self.assertEqual(float(got["new"][..., 3].min()), 1.0)

    def test_item9_one_monochrome_noise_seeds_every_buffer(self) -> None:
        self.assertTrue(self.problem("one noise seeds 3 state buffers"))
        self.assertTrue(self.problem("stepx_state_a", "monochrome noise"))

    def test_item10_custom_toggle_and_unpulled_render_selects(self) -> None:
        self.assertTrue(self.problem("stepx_control/pulse_exec", "'custom' is off"))
        self.assertTrue(self.problem("stepx_state_b_out", "never cooks"))
        self.assertTrue(self.problem("stepx_state_c_out", "never cooks"))


if __name__ == "__main__":
    unittest.main()
