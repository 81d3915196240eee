"""docs/TOUCHDESIGNER.md documents every custom parameter of the piece (stepx_td/piece.py)."""

from __future__ import annotations

import unittest

import _td_common as C
from stepx_td import piece as PC


class DocsTest(unittest.TestCase):
    def test_every_piece_parameter_is_documented(self) -> None:
        doc = (C.ROOT / "docs" / "TOUCHDESIGNER.md").read_text(encoding="utf-8")
        for p in PC.PIECE_PARAMS:
            self.assertIn(f"`{p.name}`", doc, f"docs/TOUCHDESIGNER.md: document the {p.name} parameter")
        self.assertIn("images/piece_phases.png", doc)
        self.assertTrue((C.ROOT / "docs" / "images" / "piece_phases.png").is_file())


if __name__ == "__main__":
    unittest.main()
