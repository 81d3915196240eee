"""Capture for UNet pipelines (SD 1.x/2.x, SDXL and their img2img variants).

The layer output is left entirely to the pipeline's own attention processor (SDPA, xformers,
…): the capture only observes the outputs of each layer's ``to_q`` and ``to_k`` projections
(through their shadowed ``forward``) and computes probabilities for the rows it needs from them. No
projection is recomputed and the image is bit-for-bit the same as without capture.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, cast

import torch

from .adapters import Adapter, Layer, QKProjections, register
from .errors import UnsupportedProcessorError
from .maps import halved
from .steps import patch_method

if TYPE_CHECKING:
    from .session import Capture

#: each UNet's attention layers, as found by UNetAdapter.layers()
_LAYERS: "weakref.WeakKeyDictionary[torch.nn.Module, list[Layer]]" = weakref.WeakKeyDictionary()


def _submodule(root: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


#: Processors that compute q = to_q(x), k = to_k(context) and softmax(q kᵀ/√d) over exactly
#: those keys (for IP-Adapter: the text part of its decoupled attention).
OBSERVABLE_PROCESSORS = (
    "AttnProcessor",
    "AttnProcessor2_0",
    "XFormersAttnProcessor",
    "SlicedAttnProcessor",
    "AttnProcessorNPU",
    "IPAdapterAttnProcessor",
    "IPAdapterAttnProcessor2_0",
)


@register
class UNetAdapter(Adapter):
    pipelines = (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
    )
    family = "unet"

    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    def tokenizer(self) -> Any:
        return self.pipe.tokenizer if getattr(self.pipe, "tokenizer", None) is not None else self.pipe.tokenizer_2

    def layers(self) -> list[Layer]:
        """The UNet's attention layers, found by walking its ~1,700 modules once per UNet (a fixed
        cost of every run, since each run installs a new capture); walked again if one of the
        layers found was replaced since."""
        from diffusers.models.attention_processor import Attention

        unet = self.pipe.unet
        known = _LAYERS.get(unet)
        if known is not None and all(_submodule(unet, l.name) is l.module for l in known):
            return list(known)
        found = [
            Layer(name, m, bool(m.is_cross_attention), int(m.heads))
            for name, m in unet.named_modules()
            if isinstance(m, Attention) and (name.endswith("attn1") or name.endswith("attn2"))
        ]
        _LAYERS[unet] = found
        return list(found)

    def check(self, layers: list[Layer]) -> None:
        for layer in layers:
            kind = type(layer.module.processor).__name__
            if kind not in OBSERVABLE_PROCESSORS or not hasattr(layer.module, "to_k"):
                raise UnsupportedProcessorError(
                    f"layer {layer.name} uses {kind}, whose attention StepX cannot observe exactly; "
                    f"supported processors: {', '.join(OBSERVABLE_PROCESSORS)}. "
                    "Call pipe.unet.set_default_attn_processor() (or unfuse QKV projections) before capturing, "
                    "or leave this layer out with CaptureConfig(layers=...)."
                )

    def map_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """The grid of the UNet's shallowest cross-attention layer, whichever layers a capture
        takes (so head-weighted and layer-filtered maps keep one size): SD 1.x/2.x have
        attention at the latent's own grid, SDXL only from its second block on (64×64 of a
        128×128 latent). Each down block but the last halves the grid (:func:`~.maps.halved`), and the up
        blocks climb back (``up_blocks.j`` at the depth of ``down_blocks.{n-1-j}``)."""
        unet = self.pipe.unet
        depths = [d for d in (_depth(l.name, len(unet.down_blocks), len(unet.up_blocks)) for l in self.layers() if l.cross)
                  if d is not None]
        grid = latent_hw
        for _ in range(min(depths, default=0)):
            grid = halved(grid)
        return grid

    def latent_hw(self, args: tuple, kwargs: dict) -> tuple[tuple[int, int], int]:
        sample = args[0] if args else kwargs["sample"]  # [B, C, h, w]
        return (int(sample.shape[-2]), int(sample.shape[-1])), int(sample.shape[0])

    def install_probes(self, session: "Capture", cross: list[Layer], self_layers: list[Layer]) -> list[Callable[[], None]]:
        removers: list[Callable[[], None]] = []
        for layer in cross + self_layers:
            removers += _probe(session, layer)
        return removers


def _depth(name: str, downs: int, ups: int) -> int | None:
    """How many times the latent's grid is halved where the layer ``name`` runs (``down_blocks.i``:
    i; ``mid_block``: downs - 1; ``up_blocks.j``: ups - 1 - j); None for a name of another form."""
    block, _, rest = name.partition(".")
    if block == "mid_block":
        return downs - 1
    index = rest.partition(".")[0]
    if block in ("down_blocks", "up_blocks") and index.isdigit():
        return int(index) if block == "down_blocks" else ups - 1 - int(index)
    return None


def _probe(session: "Capture", layer: Layer) -> list[Callable[[], None]]:
    """Observe ``to_q``/``to_k`` of one layer: keep q, then hand (q, k) to the session.

    The projections' ``forward`` is shadowed on the instance rather than hooked: a module with
    forward hooks takes ``Module.__call__``'s slow path (a closure, hook-dict walks, tracing
    checks: microseconds per call, 32 calls per SD 1.5 evaluation), a shadowed ``forward`` keeps
    the fast path and adds one Python call. The computation is the module's own, untouched.
    """
    attn = cast(QKProjections, layer.module)
    slot: dict[str, torch.Tensor] = {}
    to_q, to_k = attn.to_q, attn.to_k
    q_forward, k_forward = to_q.forward, to_k.forward

    def forward_q(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = q_forward(*args, **kwargs)
        if session.active:
            slot["q"] = out
        return out

    def forward_k(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = k_forward(*args, **kwargs)
        q = slot.pop("q", None)
        if q is not None:
            session.observe(layer, q, out)
        return out

    return [patch_method(to_q, "forward", forward_q), patch_method(to_k, "forward", forward_k)]
