"""A *local* CLIP text encoder: each token's output depends only on itself and its neighbours.

Why: a text encoder trained from scratch on captions of one fixed grammar lets every token carry
the whole caption (causal attention over learned absolute positions), so "the first object" is
what a token's key says and the UNet never needs localised cross-attention (docs/SHAPES.md, the
position-attending first ungrounded model). Restricting self-attention to a band of
``±local_window`` tokens and zeroing (and freezing) the absolute position embeddings leaves each
token with its word and its immediate neighbours ("red" in "a red circle" sees "a", "red",
"circle"): binding stays learnable, a whole-caption summary is impossible.

The model stays a standard ``transformers.CLIPTextModel`` (so diffusers and users' tools load
the pipeline unchanged); the window is stored in its config as ``local_window`` and enforced
by a forward pre-hook on the encoder that replaces the causal mask with the band mask. The
project installs the hook wherever it loads a pipeline (``localise``); a tool that ignores the
config gets causal attention over the same weights, i.e. not the model that was trained.
"""

from __future__ import annotations

from typing import Any

import torch

#: the config key naming the half-width of the attention band (absent: an ordinary CLIP encoder)
WINDOW_KEY = "local_window"


def band_mask(length: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[length, length] bool, True where token i may attend to token j: |i - j| <= window."""
    i = torch.arange(length, device=device)
    return (i[:, None] - i[None, :]).abs() <= window


def window_of(text_encoder: Any) -> int | None:
    """The encoder's attention half-width, or None for an ordinary (causal, global) encoder."""
    w = getattr(text_encoder.config, WINDOW_KEY, None)  # an optional config field: absent on ordinary CLIP configs
    return int(w) if w is not None else None


# ``text_encoder`` below is a transformers ``CLIPTextModel``, typed ``Any``: 4.x nests the encoder in
# ``text_model`` and 5.x does not, and torch's ``Module.__getattr__`` types every submodule as
# ``Tensor | Module``, so a precise annotation would only move the casts into the bodies.


def _encoder(text_encoder: Any) -> Any:
    # transformers >= 5 flattens CLIPTextModel (encoder at the top); 4.x nests it in text_model
    inner = text_encoder.text_model if hasattr(text_encoder, "text_model") else text_encoder
    return inner.encoder


def _install_hook(text_encoder: Any, window: int) -> None:
    enc = _encoder(text_encoder)
    if getattr(enc, "_stepx_local_window", None) == window:
        return
    eager = getattr(text_encoder.config, "_attn_implementation", "sdpa") == "eager"

    def hook(module, args, kwargs):
        x = kwargs["inputs_embeds"] if "inputs_embeds" in kwargs else args[0]  # [B, S, D]
        band = band_mask(x.shape[1], window, x.device)[None, None]  # [1, 1, S, S]
        mask = torch.zeros(band.shape, dtype=x.dtype, device=x.device).masked_fill(~band, torch.finfo(x.dtype).min) if eager else band
        args = args[:1]
        kwargs = {k: v for k, v in kwargs.items() if k not in ("attention_mask", "causal_attention_mask", "is_causal")}
        kwargs["attention_mask"] = mask
        return args, kwargs

    enc.register_forward_pre_hook(hook, with_kwargs=True)
    enc._stepx_local_window = window


def make_local(text_encoder: Any, window: int) -> None:
    """Turn a freshly built CLIPTextModel into a local one (for training): record the window in
    its config, zero and freeze the absolute position embeddings, install the band mask."""
    if window < 1:
        raise ValueError(f"local text encoder window must be >= 1 token, got {window}")
    text_encoder.config.update({WINDOW_KEY: window})
    inner = text_encoder.text_model if hasattr(text_encoder, "text_model") else text_encoder
    pos = inner.embeddings.position_embedding.weight
    with torch.no_grad():
        pos.zero_()
    pos.requires_grad_(False)
    _install_hook(text_encoder, window)


def localise(pipe: Any) -> None:
    """Install the band mask on a loaded pipeline's text encoder if its config asks for one."""
    te = getattr(pipe, "text_encoder", None)  # a pipeline component; MM-DiT pipelines may have none
    w = window_of(te) if te is not None else None
    if w is not None:
        _install_hook(te, w)
