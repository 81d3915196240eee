"""Whether this Triton's interpreter can run the map kernels on this machine's numpy.

The kernels loop over heads with ``range(0, H)``, H a run-time argument. Triton 3.6's interpreter
(the device machine's) turns such an argument into a one-element array and reads it with
``int()``, which numpy ≥ 2.4 refuses ("only 0-dimensional arrays can be converted to Python
scalars"); Triton 3.9's reads it as a scalar. Compiled kernels are not affected. Tests that run a
kernel under the interpreter are marked :data:`needed` and skip, with that reason, where the
interpreter cannot run such a loop at all; any other interpreter error still fails them.
Import this module only where Triton is installed.
"""

from __future__ import annotations

import pytest
import torch
import triton.language as tl
from triton.runtime.errors import InterpreterError
from triton.runtime.interpreter import InterpretedFunction


def _count(X, N):
    acc = tl.load(X) * 0.0
    for _ in range(0, N):
        acc += 1.0
    tl.store(X, acc)


def loops_over_arguments() -> bool:
    x = torch.zeros(1)
    try:
        InterpretedFunction(_count)[(1,)](x, 3)
    except InterpreterError as exc:
        if "0-dimensional" in str(exc):
            return False
        raise
    assert float(x) == 3.0
    return True


class OnePercentOff:
    """A stand-in kernel whose maps are 1 % off: it runs ``kernel`` (indexed by its grid, as Triton
    kernels are) and scales its output, the positional argument ``out_arg``. The check of a fused
    kernel against the op-by-op maths must refuse it."""

    def __init__(self, kernel, out_arg: int) -> None:
        self.kernel, self.out_arg = kernel, out_arg

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.kernel[grid](*args, **kwargs)
            args[self.out_arg].mul_(1.01)

        return run


needed = pytest.mark.skipif(not loops_over_arguments(),
                            reason="this Triton's interpreter cannot loop over a run-time argument with this numpy (Triton 3.6 with numpy ≥ 2.4)")
