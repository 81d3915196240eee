"""The phase morph (stepx_td/morph.py): eases, never cuts, and the first step is taken as is."""

from __future__ import annotations

import math
import unittest

import _td_common  # noqa: F401 - puts td_components on sys.path
from stepx_td.morph import PhaseMorph


class PhaseMorphTest(unittest.TestCase):
    def test_first_target_is_taken_then_eased(self) -> None:
        m = PhaseMorph()
        m.set_target([1, 0, 0])
        self.assertEqual(m.advance(0.1, 0.6), [1.0, 0.0, 0.0])
        m.set_target([0, 1, 0])
        w = m.advance(0.1, 0.6)
        k = 1 - math.exp(-0.1 / 0.6)
        self.assertAlmostEqual(w[1], k, places=12)
        self.assertAlmostEqual(sum(w), 1.0, places=12)  # a blend of the phases, never a gap
        for _ in range(600):  # 10 s = 17 time constants
            w = m.advance(1 / 60, 0.6)
        self.assertTrue(m.settled)
        self.assertAlmostEqual(w[1], 1.0, places=4)

    def test_bad_weights_and_zero_tau(self) -> None:
        m = PhaseMorph()
        m.set_target([float("nan"), -1, None])
        self.assertEqual(m.target, [1.0, 0.0, 0.0])
        m.set_target([0, 0, 2])
        self.assertEqual(m.advance(0.01, 0.0), [0.0, 0.0, 1.0])


if __name__ == "__main__":
    unittest.main()
