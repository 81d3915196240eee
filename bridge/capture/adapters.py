"""Pipeline adapters: what differs between model families, behind one small interface.

An adapter knows where a pipeline's denoiser and attention layers are, how to observe their
queries and keys without changing the layer output, and which tokenizer feeds the
cross-attention. The capture session (bookkeeping of runs and steps) is shared.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

from .errors import UnsupportedPipelineError
from .tokens import token_maps_for

if TYPE_CHECKING:
    from .config import CaptureConfig
    from .session import Capture
    from .tokens import TokenMap

_REGISTRY: dict[str, type["Adapter"]] = {}


class QKProjections(Protocol):
    """What a probe reads of an attention layer's module (diffusers' ``Attention`` and FLUX's
    ``FluxAttention`` alike): its query and key projections, ``[.., C] -> [.., heads·d]``."""

    to_q: torch.nn.Module
    to_k: torch.nn.Module


@dataclass
class Layer:
    """An attention layer of the denoiser: stable name, module, kind and head count."""

    name: str
    module: torch.nn.Module
    cross: bool
    heads: int


class Adapter:
    """Base class of a model family; subclasses set ``pipelines`` (class names) and implement the
    hooks that raise NotImplementedError. Every other hook the session calls is declared here
    with a no-op default, so a family overrides only what differs (see docs/CAPTURE.md,
    "Adding a model family")."""

    pipelines: tuple[str, ...] = ()
    family: str = ""
    #: The pipeline encodes the negative prompt in a second ``encode_prompt`` call (FLUX true
    #: CFG): only the first call of a run holds the prompt.
    first_encode_per_run: bool = False
    #: ``CaptureConfig.strict_prompt_length``: a prompt cut by the tokenizer raises instead of warning.
    strict: bool = False

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    # --- what the session asks -------------------------------------------------------------
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    def tokenizer(self) -> Any:
        raise NotImplementedError

    def layers(self) -> list[Layer]:
        raise NotImplementedError

    def check(self, layers: list[Layer]) -> None:
        """Raise if any chosen layer cannot be observed exactly."""

    def install_probes(self, session: "Capture", cross: list[Layer], self_layers: list[Layer]) -> list[Callable[[], None]]:
        """Install observation hooks; return callables that remove them exactly."""
        raise NotImplementedError

    def latent_hw(self, args: tuple, kwargs: dict) -> tuple[tuple[int, int], int]:
        """From the denoiser's call arguments: the latent ``(h, w)`` and the batch size."""
        raise NotImplementedError

    def map_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """The default canonical grid of a run whose denoiser sees ``latent_hw``: the finest grid
        among the model's cross-attention layers, its own attention resolution (by default the
        latent's: an adapter whose :meth:`latent_hw` is its token grid, as MM-DiT's, needs no more)."""
        return latent_hw

    def guidance(self) -> bool:
        """Whether this call runs classifier-free guidance (uncond rows first, cond rows second)."""
        return bool(getattr(self.pipe, "do_classifier_free_guidance", False))

    def sequence_length(self) -> int:
        return int(self.tokenizer().model_max_length)

    # --- optional hooks: no-op defaults ----------------------------------------------------------
    def configure(self, config: "CaptureConfig") -> None:
        """Take adapter options from ``config`` (``extra``, ``strict_prompt_length``; called once per
        Capture). Overrides set ``strict`` themselves or call this."""
        self.strict = bool(config.strict_prompt_length)

    def prompt_token_maps(self, arguments: dict[str, Any], repeats: int) -> "list[TokenMap] | None":
        """Token maps of the prompts in ``encode_prompt``'s bound ``arguments`` (defaults applied),
        ``repeats`` per prompt; None when the call has no prompt text. By default: the
        ``prompt`` argument through :meth:`tokenizer`."""
        prompt = arguments.get("prompt")
        if isinstance(prompt, str):
            prompt = [prompt]
        return token_maps_for(self.tokenizer(), prompt, repeats, self.sequence_length(), self.strict) if prompt else None

    def skip_evaluation(self, args: tuple, kwargs: dict) -> bool:
        """Whether this denoiser call is not one to observe (e.g. FLUX's separate uncond pass)."""
        return False

    def frame_latents(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """The pipeline's latents (or x0) as ``[batch, C, h, w]`` (e.g. FLUX unpacks its tokens)."""
        return x

    def token_map(self, prompt: str, **call_kwargs: Any) -> "TokenMap":
        """The word map capture will use for ``pipe(prompt, **call_kwargs)``: checks a request's
        words (focus) before any compute, with the same tokenizer and sequence as the run (FLUX:
        its T5 tokens)."""
        bound = inspect.signature(self.pipe.__call__).bind_partial(prompt=prompt, **call_kwargs)
        bound.apply_defaults()
        maps = self.prompt_token_maps(dict(bound.arguments), 1)
        if not maps:
            raise ValueError("the prompt is empty: it has no words to map")
        return maps[0]


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available for its pipeline class names."""
    for name in cls.pipelines:
        _REGISTRY[name] = cls
    return cls


def supported_pipelines() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def adapter_for(pipe: Any) -> Adapter:
    """The adapter for ``pipe``'s class (or a base class), or a clear error naming the supported ones."""
    _load_builtin()
    for klass in type(pipe).__mro__:
        if klass.__name__ in _REGISTRY:
            return _REGISTRY[klass.__name__](pipe)
    raise UnsupportedPipelineError(
        f"StepX capture does not support {type(pipe).__name__}; supported pipelines: {', '.join(supported_pipelines())}"
    )


def _load_builtin() -> None:
    from . import unet  # noqa: F401  (registers itself)

    try:
        from . import mmdit  # noqa: F401
    except ImportError:
        pass
