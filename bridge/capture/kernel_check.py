"""What the fused Triton map kernels (``cross_kernel``, ``joint_kernel``) share: the kernel under
Triton's interpreter for tests, the compiled kernel where it runs, and the once-per-shape check of
a kernel against the op-by-op maths it replaces, with the fallback's one warning."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # the check: max |fused − op-by-op| ≤ TOLERANCE · max |op-by-op|


def wanted(config: Any) -> bool:
    """Whether a capture takes the fused kernels where they run: ``CaptureConfig.extra["fused_maps"]``
    (default True; False keeps every family's op-by-op maths, to compare on the same card)."""
    return bool((config.extra or {}).get("fused_maps", True))


def interpreted(fn: Any) -> Any:
    """``fn`` (a kernel's undecorated source) under Triton's interpreter (numpy, on CPU tensors):
    for tests. None without Triton."""
    if fn is None:
        return None
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415 (only where Triton is)

    return InterpretedFunction(fn)


def on_device(compiled: Any, device: torch.device) -> Any:
    """The compiled kernel where it runs (CUDA with Triton), else None: the op-by-op maths."""
    return compiled if compiled is not None and device.type == "cuda" else None


def agrees(checked: dict[tuple, bool], key: tuple, reference: Callable[[], torch.Tensor],
           launch: Callable[[torch.Tensor, bool], None], what: str, where: str) -> bool:
    """Whether the kernel behind ``launch(out, accumulate)`` gives ``reference()``, overwriting and
    then adding into ``out``; decided once per ``key`` (one host wait) and kept in ``checked``.
    A compile or driver error counts as a disagreement. Warns once per key that is refused."""
    good = checked.get(key)
    if good is None:
        try:
            ref = reference()
            got = torch.empty_like(ref)
            launch(got, False)
            good = bool((got - ref).abs().max() <= TOLERANCE * ref.abs().max())
            launch(got, True)  # both variants compiled here, not in the model's step
            good = good and bool((got - 2 * ref).abs().max() <= 2 * TOLERANCE * ref.abs().max())
        except Exception as exc:  # noqa: BLE001 — a compiler or driver error: the op-by-op maths still work
            log.debug("fused %s: %s", what, exc)
            good = False
        checked[key] = good
        if not good:
            log.warning("the fused kernel for %s does not run or disagrees on %s; computing those maps op by op", what, where)
    return good
