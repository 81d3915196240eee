"""Packing of the per-step maps into one RGBA texture, dtype conversion, and the single
device -> host copy."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: Channel layout of the ``rgba`` array (see docs/PHASES.md).
RGBA_CHANNELS = ("stability", "chaos", "settled", "accumulated")
DTYPES = ("float32", "float16", "uint8")


def pack_rgba(textures: Tensor, settled: Tensor, accumulated: Tensor) -> Tensor:
    """R = StabilityMask (the texture), G = ChaosMask (1 - texture), B = settled, A = the
    phase-accumulated morph map. Inputs ``[N, H, W]`` -> ``[N, H, W, 4]`` contiguous.

    Each channel is written straight into its strided view of the output: on the CPU, where the
    sink process builds every step's packet, that is far cheaper than ``torch.stack(dim=-1)``'s
    interleaving gather, and numpy's strided stores are cheaper again than torch's (≈ 2.5× for
    SD 1.5's 14 × 64² maps; the clamp written straight into its channel saves a temporary map);
    the values are the same operations (a clamp to [0, 1], then 1 - x)."""
    if textures.device.type == "cpu" and textures.dtype != torch.bfloat16:  # numpy has no bfloat16
        tex = textures.detach().numpy()
        rgba = np.empty((*tex.shape, 4), dtype=tex.dtype)  # [N, H, W, 4]
        st = np.clip(tex, 0.0, 1.0, out=rgba[..., 0])  # straight into its channel: no temporary
        np.subtract(np.asarray(1.0, dtype=rgba.dtype), st, out=rgba[..., 1])
        rgba[..., 2] = settled.detach().numpy()
        rgba[..., 3] = accumulated.detach().numpy()
        return torch.from_numpy(rgba)
    out = torch.empty((*textures.shape, 4), dtype=textures.dtype, device=textures.device)  # [N, H, W, 4]
    stability = torch.clamp(textures, 0.0, 1.0)  # [N, H, W]
    out[..., 0] = stability
    torch.sub(1.0, stability, out=out[..., 1])
    out[..., 2] = settled
    out[..., 3] = accumulated
    return out


def convert(values: Tensor, dtype: str) -> Tensor:
    """Cast [0, 1] values for the wire: float32, float16, or uint8 = round(x * 255)."""
    if dtype == "float32":
        return values.to(torch.float32)
    if dtype == "float16":
        return values.to(torch.float16)
    if dtype == "uint8":
        return (values.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")


def to_host(tensors: dict[str, Tensor], dtype: str) -> dict[str, np.ndarray]:
    """Host numpy arrays of ``tensors`` converted to ``dtype``, of the original shapes.

    On a device: flatten, convert and concatenate there, copy to the host ONCE, then split (views
    of the one host buffer). On the CPU (the sink process, the packet worker) there is nothing to
    copy: each converted tensor's own memory is shared (a float32 one is the tensor itself), as
    a concatenation would only add a pass over every byte. Packets are read, never written, by
    their sinks (bridge.stream.fanout), so sharing with the phases' state is safe."""
    names = list(tensors)
    if all(t.device.type == "cpu" for t in tensors.values()):
        return {k: convert(tensors[k], dtype).contiguous().numpy() for k in names}
    flat = torch.cat([convert(tensors[k].reshape(-1), dtype) for k in names])  # [sum of sizes]
    host = flat.cpu().numpy()  # the one device -> host copy
    out: dict[str, np.ndarray] = {}
    offset = 0
    for k in names:
        shape = tuple(tensors[k].shape)
        size = int(np.prod(shape, dtype=np.int64))
        out[k] = host[offset : offset + size].reshape(shape)
        offset += size
    return out
