"""Every TouchDesigner shader compiles with glslang under TouchDesigner's injected preamble, its
uniforms are exactly the ones the builder binds, and shared files are byte-identical copies."""

from __future__ import annotations

import unittest

import _td_common as C
import td_glsl as G
from stepx_td import piece as PC
from stepx_td.glsl import splice_includes

GLSL = C.TD_DIR / "glsl"


def pop_preamble() -> str:
    return G.pop_preamble([("P", "vec3")] + list(PC.POP_ATTRIBUTES), [(u.name, u.glsl_type) for u in PC.SIM_UNIFORMS],
                          [s.name for s in PC.SIM_SAMPLERS])


#: shader file -> (stage, preamble, uniforms it must declare, samplers it must declare)
SHADERS = {
    "stepx_particles_top.frag": ("frag", G.top_preamble(3), PC.SIM_UNIFORMS, PC.SIM_SAMPLERS),
    "stepx_seed.frag": ("frag", G.top_preamble(1), PC.SEED_UNIFORMS, ()),
    "stepx_trails.frag": ("frag", G.top_preamble(2), PC.TRAIL_UNIFORMS, ()),
    "stepx_show.frag": ("frag", G.top_preamble(2), PC.SHOW_UNIFORMS, ()),
    "stepx_render_mat.vert": ("vert", G.mat_preamble("vert"), PC.RENDER_UNIFORMS, PC.RENDER_SAMPLERS),
    "stepx_render_mat.frag": ("frag", G.mat_preamble("frag"), (), ()),
    "stepx_particles_pop.comp": ("comp", pop_preamble(), (), ()),  # TouchDesigner declares a POP's uniforms
}


class GlslangTest(unittest.TestCase):
    def setUp(self) -> None:
        if not G.have_glslang():
            self.fail("glslangValidator not found: install Debian's glslang-tools (bash scripts/system-deps.sh)")

    def test_every_td_shader_compiles_under_td_preamble(self) -> None:
        self.assertEqual(set(SHADERS), {p.name for p in GLSL.iterdir() if p.suffix in (".frag", ".vert", ".comp")})
        for name, (stage, pre, _, _) in SHADERS.items():
            with self.subTest(shader=name):
                ok, log = G.compile_glsl(pre + splice_includes(GLSL / name), stage)
                self.assertTrue(ok, f"{name}:\n{log}")

    def test_declared_uniforms_are_exactly_the_bound_ones(self) -> None:
        for name, (_, _, uniforms, samplers) in SHADERS.items():
            with self.subTest(shader=name):
                declared = G.declared_uniforms(splice_includes(GLSL / name))
                want = {u.name: u.glsl_type for u in uniforms} | {s.name: "sampler2D" for s in samplers}
                self.assertEqual(declared, want)

    def test_pop_uses_only_what_its_pages_declare(self) -> None:
        src = splice_includes(GLSL / "stepx_particles_pop.comp")
        self.assertEqual(G.declared_uniforms(src), {})
        for u in PC.SIM_UNIFORMS:
            self.assertIn(u.name, src)

    def test_redeclaring_an_injected_uniform_fails(self) -> None:
        bad_top = "uniform sampler2D sTD2DInputs[1];\nout vec4 c;\nvoid main() { c = texture(sTD2DInputs[0], vUV.st); }\n"
        ok, log = G.compile_glsl(G.top_preamble(1) + bad_top, "frag")
        self.assertFalse(ok)
        self.assertIn("sTD2DInputs' : redeclaration", log)
        bad_pop = "uniform float u_dt;\nvoid main() { P[TDIndex()] = TDIn_P() * u_dt; }\n"
        ok, log = G.compile_glsl(pop_preamble() + bad_pop, "comp")
        self.assertFalse(ok)
        self.assertIn("redefinition", log)
        ok, log = G.compile_glsl(pop_preamble() + bad_pop.split("\n", 1)[1], "comp")
        self.assertTrue(ok, log)

    def test_preview_shaders_compile(self) -> None:
        """The preview's own shaders (bridge/preview) share the look; they compile too."""
        shaders = C.ROOT / "shaders"
        stage = {".vert": "vert", ".frag": "frag", ".comp": "comp"}
        for path in sorted(shaders.iterdir()):
            if path.suffix in stage:
                with self.subTest(shader=path.name):
                    ok, log = G.compile_glsl(splice_includes(path), stage[path.suffix])
                    self.assertTrue(ok, f"{path.name}:\n{log}")

    def test_shared_files_are_byte_identical(self) -> None:
        for name in ("particles_common.glsl", "particles_look.glsl", "trails.glsl", "colormap.glsl"):
            with self.subTest(file=name):
                self.assertEqual((GLSL / name).read_bytes(), (C.ROOT / "shaders" / name).read_bytes(),
                                 f"copy shaders/{name} to td_components/glsl/")


if __name__ == "__main__":
    unittest.main()
