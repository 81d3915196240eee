"""Vendored copies cannot drift, and the TD-side modules import only numpy, zmq and stdlib."""

from __future__ import annotations

import ast
import sys
import unittest

import _td_common as C
from stepx_td.glsl import splice_includes

ALLOWED = {"numpy", "zmq", "stepx_td", "protocol", "__future__", "request", "recording"}  # siblings: loose-module fallbacks


class SourcesTest(unittest.TestCase):
    def test_wire_is_byte_identical(self) -> None:
        self.assertEqual((C.TD_DIR / "stepx_td" / "protocol.py").read_bytes(),
                         (C.ROOT / "bridge" / "protocol.py").read_bytes(),
                         "copy bridge/protocol.py to td_components/stepx_td/protocol.py")

    def test_request_schema_is_byte_identical(self) -> None:
        self.assertEqual((C.TD_DIR / "stepx_td" / "request.py").read_bytes(),
                         (C.ROOT / "bridge" / "request.py").read_bytes(),
                         "copy bridge/request.py to td_components/stepx_td/request.py")

    def test_force_model_is_byte_identical(self) -> None:
        self.assertEqual((C.TD_DIR / "glsl" / "particles_common.glsl").read_bytes(),
                         (C.ROOT / "shaders" / "particles_common.glsl").read_bytes(),
                         "copy shaders/particles_common.glsl to td_components/glsl/")

    def test_shaders_splice(self) -> None:
        for name in ("stepx_particles_top.frag", "stepx_particles_pop.comp"):
            src = splice_includes(C.TD_DIR / "glsl" / name)
            self.assertNotIn('#include "', src)
            self.assertIn("particle_step(a, b, c);", src)
            self.assertEqual(src.count("void particle_step("), 1)

    def test_imports_are_td_safe(self) -> None:
        stdlib = set(sys.stdlib_module_names)
        files = list((C.TD_DIR / "stepx_td").glob("*.py")) + list(C.TD_DIR.glob("StepX*Ext.py"))
        self.assertGreaterEqual(len(files), 7)
        for f in files:
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for n in names:
                    top = n.split(".")[0]
                    if top == "td":
                        continue  # only inside tdseam.get_td(), guarded by ImportError
                    self.assertTrue(top in stdlib or top in ALLOWED, f"{f.name} imports {n}")


if __name__ == "__main__":
    unittest.main()
