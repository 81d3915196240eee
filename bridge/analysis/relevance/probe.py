"""Where the heads are: a probe that scores every cross-attention head during a generation.

``HeadProbe`` is the seam between the HRV maths (``hrv.py``) and a model family. The UNet probe
(SD 1.x/2.x, SDXL) reads each cross-attention layer's image queries from its ``to_q`` output
(conditional rows of classifier-free guidance only) and projects the concept words' text
embeddings through the same layer's ``to_k``: a *head* is one head of one ``attn2`` layer.
The pipeline's own attention computes the image, untouched; the probe only reads.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from bridge.capture.adapters import Layer, adapter_for

from .hrv import add_winners, head_winners



class CrossAttention(Protocol):
    """What the UNet probe reads of a diffusers ``Attention`` (``attn2``) layer. diffusers leaves
    its optional norms unannotated (mypy would read them as always None): they are stated here."""

    @property
    def to_q(self) -> torch.nn.Linear: ...

    @property
    def to_k(self) -> torch.nn.Linear: ...

    @property
    def scale(self) -> float: ...

    @property
    def norm_cross(self) -> torch.nn.Module | None: ...

    @property
    def norm_q(self) -> torch.nn.Module | None: ...

    @property
    def norm_k(self) -> torch.nn.Module | None: ...

    def norm_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor: ...


class HeadProbe(Protocol):
    """Scores heads of one pipeline against one sampled word per concept while it generates."""

    #: ``[(layer name, heads)]`` in a fixed order: the columns of the count matrix
    layout: list[tuple[str, int]]

    def prepare(self, prompt: str, words: Sequence[str]) -> tuple[str, Any]:
        """The prompt to generate and the probe's state for this draw (``words[c]``: concept c's word)."""
        ...

    def counting(self, state: Any, counts: torch.Tensor) -> contextlib.AbstractContextManager[None]:
        """While open, every denoising step adds each head's winning concept to ``counts [C, total_heads]``."""
        ...


class UNetHeadProbe:
    """HeadProbe for UNet pipelines: a head is a head of a cross-attention (``attn2``) layer."""

    def __init__(self, pipe: Any) -> None:
        self.adapter = adapter_for(pipe)
        if self.adapter.family != "unet":
            raise ValueError(f"UNetHeadProbe needs a UNet pipeline, got {type(pipe).__name__}")
        self.layers = [l for l in self.adapter.layers() if l.cross]
        if not self.layers:
            raise ValueError(f"{type(pipe).__name__} has no cross-attention layers to score")
        self.layout = [(l.name, l.heads) for l in self.layers]
        self._embeddings: dict[str, torch.Tensor] = {}

    def prepare(self, prompt: str, words: Sequence[str]) -> tuple[str, dict[str, torch.Tensor]]:
        """The prompt as given; the state is each layer's concept keys (the words encoded alone, as in HRV)."""
        from .collect import word_embeddings

        new = [w for w in words if w not in self._embeddings]
        if new:
            self._embeddings.update(word_embeddings(self.adapter.pipe, new))
        return prompt, self.concept_keys(torch.stack([self._embeddings[w] for w in words]))

    def concept_keys(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        with torch.no_grad():
            for layer in self.layers:
                attn = _attention(layer)
                e = embeddings.to(attn.to_k.weight.device, attn.to_k.weight.dtype)[None]  # [1, C, D]
                if attn.norm_cross is not None:
                    e = attn.norm_encoder_hidden_states(e)
                k = attn.to_k(e)[0]  # [C, heads·d]
                k = k.view(k.shape[0], layer.heads, -1).transpose(0, 1)  # [heads, C, d]
                if attn.norm_k is not None:
                    k = attn.norm_k(k)
                out[layer.name] = k
        return out

    @contextlib.contextmanager
    def counting(self, keys: dict[str, torch.Tensor], counts: torch.Tensor) -> Iterator[None]:
        handles = []
        offset = 0
        for layer in self.layers:
            handles.append(_attention(layer).to_q.register_forward_hook(self._hook(layer, keys[layer.name], counts, offset)))
            offset += layer.heads
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, layer: Layer, k: torch.Tensor, counts: torch.Tensor,
              offset: int) -> Callable[[torch.nn.Module, Any, torch.Tensor], None]:
        attn, heads = _attention(layer), layer.heads

        def hook(_module: torch.nn.Module, _inputs: Any, q: torch.Tensor) -> None:
            if self.adapter.guidance():
                q = q[q.shape[0] // 2 :]  # [uncond, cond]: the conditional rows
            b, n, _ = q.shape
            qh = q.view(b, n, heads, -1).transpose(1, 2)  # [B, heads, N, d]
            if attn.norm_q is not None:
                qh = attn.norm_q(qh)
            add_winners(counts, head_winners(qh, k, float(attn.scale)), offset)

        return hook


def _attention(layer: Layer) -> CrossAttention:
    """A UNet layer's module as the diffusers Attention it is (the UNet adapter finds only those)."""
    from diffusers.models.attention_processor import Attention

    if not isinstance(layer.module, Attention):
        raise TypeError(f"{layer.name} is a {type(layer.module).__name__}, not a diffusers Attention")
    return layer.module


def probe_for(pipe: Any) -> HeadProbe:
    """The HeadProbe of ``pipe``'s family; a clear error naming the supported ones."""
    family = adapter_for(pipe).family
    if family == "unet":
        return UNetHeadProbe(pipe)
    from .probe_mmdit import MMDiTHeadProbe

    return MMDiTHeadProbe(pipe)
