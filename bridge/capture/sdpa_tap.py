"""The model's own attention call, made to hand over its log-sum-exp as well.

A joint (MM-DiT) attention normalises every image query over image *and* text keys, so the maps
need that normaliser: ``lse_n = log Σ_m exp(q_n·k_m/√d)``. The fused attention kernels compute
it anyway (flash and memory-efficient attention keep it for the backward pass) and simply do not
return it from ``F.scaled_dot_product_attention``. Recomputing it with a second fused call per
layer cost SD3.5-medium 1.36× plain generation on an H200 (docs/BENCHMARKS.md).

So during a capture, a layer's processor calls a stand-in for ``F.scaled_dot_product_attention``
(installed in the processor module's namespace only, only while some capture needs it). When the
layer has *armed* it (a pre-hook, per thread), the stand-in runs the very op the dispatcher would
have picked (``torch._fused_sdp_choice``) asking it for the log-sum-exp too, gives
``(q, k, lse)`` to the layer's sink and returns the output. Unarmed calls pass straight through.

Processors that call diffusers' ``dispatch_attention_fn`` instead (FLUX's, diffusers ≥ 0.35; its
q, k, v are ``[B, S, heads, d]``) get a stand-in for that: with the native backend (the default,
``F.scaled_dot_product_attention`` on the heads-first views) it does the same; with another
backend the call is the backend's own and the sink gets ``lse=None`` (the capture then computes
the normaliser itself).

The image must stay exactly the model's. Each (device, backend, dtype, shapes, strides) is checked
once against ``F.scaled_dot_product_attention`` — bit for bit for the output, and the
log-sum-exp against a float32 one of the first rows — and a mismatch, or a backend that has no
log-sum-exp to give (math), falls back to the plain call with ``lse=None``: the capture then
computes the normaliser itself (``maps.joint_text_probabilities``).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import types
from typing import Any, Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: ``sink(q, k, lse)``: q ``[B, heads, S, d]``, k ``[B, heads, M, d]`` as the kernel got them,
#: lse ``[B, heads, S]`` float32 (natural log, of the scaled logits) or None.
Sink = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], None]

_FLASH, _EFFICIENT, _CUDNN = 1, 2, 3  # torch.nn.attention.SDPBackend values, as _fused_sdp_choice returns them
_sdpa = F.scaled_dot_product_attention
_local = threading.local()
_lock = threading.Lock()
_installed: dict[tuple[int, str], tuple[dict, Any, int]] = {}  # (id(globals), name) -> (globals, original, users)
_checked: dict[tuple, bool] = {}  # kernel key -> output bit-identical and lse right


# --- the maths: one fused call that returns the output and the log-sum-exp ---------------------------
def _flash_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)
    return out[0], out[1]


def _flash_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)
    return out[0], out[1]


def _efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False)
    return out[0], out[1][..., : q.shape[2]]  # its lse is padded to a multiple of 32 queries


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)
    return out[0], out[1].reshape(q.shape[:3])  # its lse is [B, heads, S, 1]


#: (device type, backend) -> the op ``F.scaled_dot_product_attention`` runs there, with the lse
_KERNELS: dict[tuple[str, int], Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    ("cuda", _FLASH): _flash_cuda,
    ("cpu", _FLASH): _flash_cpu,
    ("cuda", _EFFICIENT): _efficient,
    ("cuda", _CUDNN): _cudnn,
}


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``F.scaled_dot_product_attention(q, k, v)`` (no mask, no dropout, default scale), bit for
    bit, and its log-sum-exp ``[B, heads, S]`` float32 where the chosen kernel can give it (else None).

    q ``[B, heads, S, d]``, k and v ``[B, heads, M, d]``."""
    backend = int(torch._fused_sdp_choice(q, k, v, None, 0.0, False))
    kernel = _KERNELS.get((q.device.type, backend))
    if kernel is None or (q.is_cuda and backend == _FLASH and q.shape[-1] % 8):  # the dispatcher would pad d
        return _sdpa(q, k, v), None
    key = (q.device.type, backend, q.dtype, *(tuple(t.shape) + t.stride() for t in (q, k, v)))
    good = _checked.get(key)
    if good is False:
        return _sdpa(q, k, v), None
    if good is None:  # once per kernel and shape: a host sync, on the first step only
        reference = _sdpa(q, k, v)
        try:
            out, lse = kernel(q, k, v)
            good = bool(torch.equal(out, reference)) and _lse_agrees(q, k, lse)
        except (RuntimeError, NotImplementedError) as exc:  # this build has no such kernel for these inputs
            log.debug("attention kernel %s with its lse: %s", backend, exc)
            good = False
        _checked[key] = good
        if not good:
            log.warning("attention kernel %s on %s gives no exact output with its log-sum-exp; the capture computes "
                        "the normaliser itself for these shapes", backend, q.device)
            return reference, None
        return out, lse.float()
    out, lse = kernel(q, k, v)
    return out, lse.float()


def _lse_agrees(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, rows: int = 64) -> bool:
    """Whether a kernel's lse is ``log Σ exp(q·k/√d)`` of the first ``rows`` queries (float32)."""
    n = min(rows, q.shape[2])
    ref = torch.logsumexp(q[:, :, :n].float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return tuple(lse.shape) == tuple(q.shape[:3]) and bool(torch.allclose(lse[:, :, :n].float(), ref, rtol=0, atol=2e-2))


# --- the stand-in and its arming -------------------------------------------------------------------
def arm(sink: Sink) -> None:
    """The next tapped attention call on this thread goes to ``sink`` (a layer's pre-hook)."""
    _local.sink = sink


def disarm() -> bool:
    """Forget this thread's sink; returns whether one was still waiting (the call never came)."""
    waiting = getattr(_local, "sink", None) is not None
    _local.sink = None
    return waiting


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, whose armed calls also feed the layer's sink."""
    sink = getattr(_local, "sink", None)
    plain = not args and all(kwargs.get(name, default) == default for name, default in (("dropout_p", 0.0), ("is_causal", False)))
    if sink is None or not plain or set(kwargs) - {"dropout_p", "is_causal"} or query.requires_grad:
        return _sdpa(query, key, value, *args, **kwargs)
    _local.sink = None  # one call per arming
    out, lse = attention_with_lse(query, key, value)
    sink(query, key, lse)
    return out


def dispatch_attention_fn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                          dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
                          attention_kwargs: dict | None = None, *, backend: Any = None, parallel_config: Any = None) -> torch.Tensor:
    """diffusers' ``dispatch_attention_fn`` (q, k, v ``[B, S, heads, d]``), whose armed calls also
    feed the layer's sink with heads-first views ``[B, heads, S, d]``."""
    original = _diffusers_dispatch()[0]
    sink = getattr(_local, "sink", None)
    plain = attn_mask is None and not dropout_p and not is_causal and scale is None and not enable_gqa and not attention_kwargs
    if sink is None or not plain or query.requires_grad:
        return original(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs,
                        backend=backend, parallel_config=parallel_config)
    _local.sink = None  # one call per arming
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))  # [B, heads, S, d], as the native backend passes them
    if backend is None and parallel_config is None and _native_backend():
        out, lse = attention_with_lse(q, k, v)
        sink(q, k, lse)
        return out.permute(0, 2, 1, 3)
    out = original(query, key, value, backend=backend, parallel_config=parallel_config)  # another backend's own kernel
    sink(q, k, None)
    return out


@functools.cache
def _diffusers_dispatch() -> tuple[Callable[..., torch.Tensor], Any, Any]:
    """diffusers' own ``dispatch_attention_fn``, its backend registry and the native backend's name
    (looked up once: the stand-in runs for every joint layer of every evaluation)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, dispatch_attention_fn

    return dispatch_attention_fn, _AttentionBackendRegistry, AttentionBackendName.NATIVE


def _native_backend() -> bool:
    """Whether diffusers' active attention backend is its native one (``F.scaled_dot_product_attention``)."""
    _, registry, native = _diffusers_dispatch()
    try:
        return registry.get_active_backend()[0] == native
    except (AttributeError, KeyError):  # a diffusers whose registry differs: take no chances
        return False


class _Functional(types.ModuleType):
    """``torch.nn.functional`` with the stand-in for ``scaled_dot_product_attention``."""

    scaled_dot_product_attention = staticmethod(scaled_dot_product_attention)

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)


_functional = _Functional("torch.nn.functional")


def _target(processor: Any) -> tuple[dict, str, Any] | None:
    """``(module globals, name, stand-in)`` of the attention call ``processor`` makes, if tappable."""
    call = getattr(type(processor), "__call__", None)  # noqa: B004 (the function object, not a callability test)
    code = getattr(call, "__code__", None)
    globs = getattr(call, "__globals__", {})
    if code is None:
        return None
    fn = globs.get("dispatch_attention_fn")
    if "dispatch_attention_fn" in code.co_names and callable(fn) and getattr(fn, "__name__", "") == "dispatch_attention_fn":
        return globs, "dispatch_attention_fn", dispatch_attention_fn
    if "scaled_dot_product_attention" in code.co_names and globs.get("F") in (F, _functional):
        return globs, "F", _functional
    return None


def tappable(processor: Any) -> bool:
    """Whether ``processor`` calls ``F.scaled_dot_product_attention`` through its module's ``F``,
    or diffusers' ``dispatch_attention_fn``."""
    return _target(processor) is not None


def install(processor: Any) -> Callable[[], None]:
    """Put the stand-in into the namespace of ``processor``'s module (counted: the last remover of
    all the captures using it puts the original back). Check :func:`tappable` first."""
    target = _target(processor)
    if target is None:
        raise ValueError(f"{type(processor).__name__} makes no attention call StepX can tap")
    globs, name, stand_in = target
    key = (id(globs), name)
    with _lock:
        entry = _installed.get(key)
        if entry is None:
            entry = (globs, globs[name], 0)
            globs[name] = stand_in
        _installed[key] = (entry[0], entry[1], entry[2] + 1)
    done = False

    def remove() -> None:
        nonlocal done
        if done:
            return
        done = True
        disarm()  # a layer that raised before its call must not leave a sink behind
        with _lock:
            g, original, users = _installed[key]
            if users > 1:
                _installed[key] = (g, original, users - 1)
                return
            del _installed[key]
            g[name] = original

    return remove
