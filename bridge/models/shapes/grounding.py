"""Token grounding for training the shapes model: where each object word's cross-attention goes.

The world knows every object's mask, so training can ask the cross-attention of an object's
colour, shape and size words to fall on that object, and the background colour word on the
background (token-level supervision as in TokenCompose, Wang et al., CVPR 2024). Two terms per
grounded word and layer, both blind to the map's overall scale:

* **mass**: ``(1 - Σ_n A_n M_n / Σ_n A_n)²`` — the share of the word's attention that lies
  outside its region;
* **soft IoU** (Dice) of ``A / max A`` against ``M`` — the map should cover the region, not a
  single point inside it.

Only training uses this: ``install`` swaps the UNet's cross-attention processors for one that
computes the probabilities explicitly (the same maths as SDPA) and keeps their head mean. The
shipped pipeline keeps diffusers' default processors; the weights are what change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

#: grounded words per object (in ``World.caption_tokens`` order), then the background
OBJECT_WORDS = ("colour", "shape", "size")


class GroundingProcessor:
    """Cross-attention that also records ``softmax(q kᵀ/√d)`` averaged over heads, ``[B, N, T]`` float32."""

    def __init__(self, store: list[torch.Tensor]) -> None:
        self.store = store

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        if encoder_hidden_states is None or attention_mask is not None or attn.residual_connection or attn.norm_cross:
            raise NotImplementedError("GroundingProcessor handles plain text cross-attention only")
        b, n, _channels = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        h = attn.heads
        q, k, v = (x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2) for x in (q, k, v))  # [B, h, *, d]
        with torch.autocast(q.device.type, enabled=False):  # float32 logits: bf16 would round them
            probs = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(attn.scale).softmax(-1)  # [B, h, N, T]
        self.store.append(probs.mean(1))  # [B, N, T]
        out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(b, n, -1)  # [B, N, C]
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


class AttentionModel(Protocol):
    """What :func:`install` needs of a UNet: diffusers' attention-processor API. (diffusers types a
    processor as its ``AttentionProcessor`` union of its own classes; any callable with their
    signature works, as :class:`GroundingProcessor` does.)"""

    @property
    def attn_processors(self) -> Mapping[str, object]: ...

    def set_attn_processor(self, processor: Any) -> Any: ...


def install(unet: AttentionModel) -> list[torch.Tensor]:
    """Give every cross-attention layer of ``unet`` a GroundingProcessor; returns the shared store
    (clear it before each forward; one entry per layer afterwards)."""
    store: list[torch.Tensor] = []
    proc = GroundingProcessor(store)
    procs = {name: (proc if ".attn2." in name else p) for name, p in unet.attn_processors.items()}
    unet.set_attn_processor(procs)
    return store


def targets(masks: torch.Tensor, positions: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grounded words of a batch: token positions ``[B, K]``, regions ``[B, K, H, W]`` float and
    validity ``[B, K]`` (K = 3 objects × 3 words + background)."""
    b = masks.shape[0]
    objects = masks.float()  # [B, 3, H, W]
    background = 1.0 - objects.amax(1, keepdim=True)  # [B, 1, H, W]
    pos = torch.cat([positions[w] for w in OBJECT_WORDS] + [positions["background"][:, None]], 1)  # [B, 10]
    regions = torch.cat([objects] * len(OBJECT_WORDS) + [background], 1)  # [B, 10, H, W]
    return pos.clamp_min(0), regions, (pos >= 0).view(b, -1)


def grounding_loss(store: list[torch.Tensor], pos: torch.Tensor, regions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over layers and valid words of mass + soft-IoU losses (see the module docstring).

    store: per layer ``[B, N, T]``; pos ``[B, K]`` long; regions ``[B, K, H, W]`` in [0, 1];
    valid ``[B, K]`` bool. Returns a scalar (0 when nothing is valid).
    """
    total = regions.new_zeros(())
    weight = valid.float()
    count = weight.sum().clamp_min(1.0)
    for probs in store:
        b, n, t = probs.shape
        side = int(round(n**0.5))
        m = F.adaptive_avg_pool2d(regions, side).flatten(2)  # [B, K, N] soft region at this grid
        a = probs.gather(2, pos[:, None, :].expand(b, n, pos.shape[1])).transpose(1, 2)  # [B, K, N]
        mass = (a * m).sum(-1) / a.sum(-1).clamp_min(1e-12)
        an = a / a.amax(-1, keepdim=True).clamp_min(1e-12)
        dice = 2 * (an * m).sum(-1) / (an.sum(-1) + m.sum(-1)).clamp_min(1e-6)
        per_word = (1 - mass) ** 2 + (1 - dice)  # [B, K]
        total = total + (per_word * weight).sum() / count
    return total / max(1, len(store))
