"""Capture for MM-DiT pipelines: SD3 / SD3.5 (joint attention) and FLUX (double- and single-stream).

In an MM-DiT block, image and text tokens share one attention: every query attends to the
concatenation of image and text keys, under one softmax. The probability an image query ``n``
gives to text token ``t`` is therefore

    P[n, t] = exp(q_n·k_t/√d) / Σ_{m ∈ image ∪ text} exp(q_n·k_m/√d)

and that (not a softmax over the text keys alone) is what the capture reports. The normaliser
is a log-sum-exp; the ``(N_img+N_txt)²`` matrix is never built. Rows of ``frame.cross``
therefore sum to the image query's total mass on text (< 1), not to 1.

As for UNets, the layer output is the pipeline's own processor's. Its own attention call
(SD3: ``F.scaled_dot_product_attention``; FLUX: diffusers' ``dispatch_attention_fn``) hands over
the joint q and k, after the q/k norms and RoPE, and, from the same fused kernel, the log-sum-exp
(``sdpa_tap``; checked once per shape to leave the output bit-identical), so only the ``N×T``
text logits are computed here: on CUDA by one fused kernel per layer that adds the head-weighted
maps into the step's sum (``joint_kernel``), elsewhere op by op (``maps.joint_text_probabilities``,
which also computes the normaliser where no kernel gave it). A FLUX processor whose call cannot
be tapped is observed at its ``to_q``/``to_k``/``add_k_proj`` outputs instead, with the same q/k
norms and RoPE applied in the same order. Probabilities are float32, for the conditional rows only.

Sequence order differs: SD3 concatenates ``[image, text]``, FLUX ``[text, image]`` (double
blocks concatenate the projections, single blocks run on the already concatenated stream).
See docs/CAPTURE_MMDIT.md.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

import torch

from .adapters import Adapter, Layer, QKProjections, register
from .errors import UnsupportedProcessorError
from . import joint_kernel, kernel_check, sdpa_tap
from .maps import fused_logsumexp, joint_text_probabilities
from .steps import patch_method
from .tokens import TokenMap, empty_token_map, build_offset_token_map, build_token_map, combine_token_maps

if TYPE_CHECKING:
    from .config import CaptureConfig
    from .session import Capture

log = logging.getLogger(__name__)

#: Processors whose attention is exactly ``softmax(q kᵀ/√d)`` over the joint sequence built
#: from the observed projections (and, for FLUX, RoPE from ``image_rotary_emb``).
SD3_PROCESSORS = ("JointAttnProcessor2_0",)
FLUX_PROCESSORS = ("FluxAttnProcessor",)  # FluxAttnProcessor2_0() constructs a FluxAttnProcessor
TEXT_ENCODER_CHOICES = ("both", "clip", "t5")
DEFAULT_BUDGET = 1 << 25  # logits per block of the normaliser pass (128 MiB in float32)


class _FluxAttention(QKProjections, Protocol):
    """What FluxAdapter._probe reads of a FLUX attention module: its projections (``add_k_proj``:
    the text keys of a double-stream block) and the per-head norms it applies as the processor does."""

    head_dim: int
    add_k_proj: torch.nn.Module
    norm_q: Callable[[torch.Tensor], torch.Tensor] | None
    norm_k: Callable[[torch.Tensor], torch.Tensor] | None
    norm_added_k: Callable[[torch.Tensor], torch.Tensor] | None


def _as_list(prompt: Any) -> list[str] | None:
    if prompt is None:
        return None
    return [prompt] if isinstance(prompt, str) else list(prompt)


# --- the adapters ------------------------------------------------------------------------------------
class _MMDiTAdapter(Adapter):
    processors: tuple[str, ...] = ()
    default_text_encoder = "t5"
    text_choices: tuple[str, ...] = ("t5",)

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self.text_encoder = self.default_text_encoder
        self.budget = DEFAULT_BUDGET
        self.strict = False
        self.fused = True
        self._warned: set[str] = set()

    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def configure(self, config: "CaptureConfig") -> None:
        """Options from ``CaptureConfig.extra``: ``text_encoder`` (SD3: "both" | "clip" | "t5"),
        ``joint_budget`` (logits per block of the normaliser pass), ``fused_maps`` (default True:
        the fused kernel where it runs, ``joint_kernel``; False: op by op, for comparison)."""
        extra = config.extra or {}
        choice = extra.get("text_encoder", self.default_text_encoder)
        if choice not in self.text_choices:
            raise ValueError(
                f"text_encoder={choice!r} is not available for {type(self.pipe).__name__}; choose one of "
                f"{', '.join(repr(c) for c in self.text_choices)}"
            )
        self.text_encoder = choice
        self.budget = int(extra.get("joint_budget", DEFAULT_BUDGET))
        if self.budget < 1:
            raise ValueError(f"joint_budget must be a positive number of logits, got {self.budget}")
        self.strict = bool(config.strict_prompt_length)
        self.fused = kernel_check.wanted(config)
        if config.queries and not any(not l.cross for l in self.layers()):
            raise ValueError(
                f"{type(self.pipe).__name__} has no image-only self-attention layer, so self-attention queries "
                "(CaptureConfig.queries) cannot be captured; only SD3.5 models with dual attention (attn2) have them"
            )

    def check(self, layers: list[Layer]) -> None:
        for layer in layers:
            kind = type(layer.module.processor).__name__
            fused = bool(getattr(layer.module, "fused_projections", False))
            if kind not in self.processors or fused:
                why = "fused QKV projections" if fused and kind in self.processors else kind
                raise UnsupportedProcessorError(
                    f"layer {layer.name} uses {why}, whose attention StepX cannot observe exactly; supported processors: "
                    f"{', '.join(self.processors)} with separate to_q/to_k projections. Call "
                    "pipe.transformer.unfuse_qkv_projections() or pipe.transformer.set_default_attn_processor() before "
                    "capturing, or leave this layer out with CaptureConfig(layers=...)."
                )

    def guidance(self) -> bool:
        return bool(getattr(self.pipe, "do_classifier_free_guidance", False))

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def _joint_layout(self, args: tuple, kwargs: dict) -> tuple[slice, slice] | None:
        """``(image queries, text keys)``: their positions in the joint sequence of this layer call
        (None: leave the call out)."""
        raise NotImplementedError

    def _joint_probe(self, session: "Capture", layer: Layer) -> list[Callable[[], None]]:
        """Arm the attention tap for the layer's call: the processor's own attention kernel hands
        over the joint q and k (after the q/k norms and RoPE: exactly what it attends with) and
        its normaliser; the maps take the conditional rows' image queries.

        The layer's ``forward`` is shadowed on the instance rather than hooked (as for UNets,
        ``unet._probe``): a module with hooks takes ``Module.__call__``'s slow path, microseconds a
        call, 57 calls a step on FLUX.1, whose 512² generation waits on the host."""
        attn = layer.module
        original = attn.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            sdpa_tap.disarm()
            if session.active:
                if kwargs.get("attention_mask", args[2] if len(args) > 2 else None) is not None:
                    self._warn_once(f"mask:{layer.name}", f"{layer.name} was called with an attention mask; it is left out of the maps")
                elif (layout := self._joint_layout(args, kwargs)) is not None:
                    sdpa_tap.arm(lambda q, k, lse: on_attention(*layout, q, k, lse))
            out = original(*args, **kwargs)
            if sdpa_tap.disarm():
                self._warn_once(f"untapped:{layer.name}", f"{layer.name}'s attention made no call StepX could tap "
                                "(F.scaled_dot_product_attention, dispatch_attention_fn); it is left out of the maps")
            return out

        def on_attention(image: slice, text: slice, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None) -> None:
            rows = session.cond_rows(q.shape[0])
            if rows is None:
                return
            if rows.start:  # CFG: the conditional rows (without CFG all rows are: no indexing ops)
                q, k, lse = q[rows], k[rows], None if lse is None else lse[rows]
            self._emit(session, layer, q[:, :, image], k, text, None if lse is None else lse[:, :, image])

        return [sdpa_tap.install(attn.processor), patch_method(attn, "forward", forward)]

    # the maths shared by the probes: conditional rows, head weights, detail
    def _emit(self, session: "Capture", layer: Layer, q: torch.Tensor, k: torch.Tensor, text: slice,
              lse: torch.Tensor | None = None) -> None:
        """q: ``[B, heads, N, d]`` image queries, k: ``[B, heads, M, d]`` joint keys, conditional rows
        only; lse ``[B, heads, N]``: their normaliser from the model's own kernel, if it gave one."""
        w = session.head_weights(layer, q.device)
        kernel = joint_kernel.kernel_for(q.device) if self.fused else None
        if kernel is not None and lse is None:  # no lse tapped (another backend): one fused call gives it, where there is one
            lse = fused_logsumexp(q, k, 1.0 / math.sqrt(q.shape[-1]))
        if lse is not None and layer.name not in session.detail and self._add_fused(session, layer, kernel, q, k[:, :, text], lse, w):
            return
        if layer.name in session.detail:
            per_head = joint_text_probabilities(q, k, text, None, self.budget, lse)  # [B, heads, T, N]
            maps = torch.einsum("bhtn,h->btn", per_head, w)
        else:
            per_head = None
            maps = joint_text_probabilities(q, k, text, w, self.budget, lse)  # [B, T, N]
        session.add_cross(layer, maps, per_head)


    @staticmethod
    def _add_fused(session: "Capture", layer: Layer, kernel: Any, q: torch.Tensor, kt: torch.Tensor, lse: torch.Tensor,
                   w: torch.Tensor) -> bool:
        """Add the layer's head-weighted maps into the step's sum with one launch of the fused kernel
        (the per-head maps never exist); False where the kernel is not usable for these inputs."""
        if not joint_kernel.usable(kernel, q, kt, lse, w):
            return False
        target = session.cross_sum(layer, q.shape[0], kt.shape[2], q.shape[2], q.device)
        if target is None:
            return True
        out, accumulate = target  # [B, T, N]
        try:
            joint_kernel.launch(kernel, q, kt, lse, w, out, accumulate)
        except Exception as exc:  # noqa: BLE001 — failed after its check: this shape goes op by op from now on
            joint_kernel.refuse(kernel, q, kt, lse, exc)
            maps = joint_text_probabilities(q, kt, slice(None), w, lse=lse)  # [B, T, N]
            if accumulate:
                out.add_(maps)
            else:
                out.copy_(maps)
        return True


@register
class SD3Adapter(_MMDiTAdapter):
    """StableDiffusion3Pipeline (SD3, SD3.5 large/medium/turbo).

    Joint sequence: ``[image (N), text (77 CLIP + max_sequence_length T5)]``. Cross layers are
    every block's ``attn``; SD3.5's image-only ``attn2`` layers serve self-attention queries.
    """

    pipelines = ("StableDiffusion3Pipeline",)
    family = "sd3"
    processors = SD3_PROCESSORS
    default_text_encoder = "both"
    text_choices = TEXT_ENCODER_CHOICES

    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    def sequence_length(self) -> int:
        return int(getattr(self.pipe, "tokenizer_max_length", 77))

    def layers(self) -> list[Layer]:
        out = []
        for i, block in enumerate(self.pipe.transformer.transformer_blocks):
            out.append(Layer(f"transformer_blocks.{i}.attn", block.attn, True, int(block.attn.heads)))
            if getattr(block, "attn2", None) is not None:
                out.append(Layer(f"transformer_blocks.{i}.attn2", block.attn2, False, int(block.attn2.heads)))
        return out

    def latent_hw(self, args: tuple, kwargs: dict) -> tuple[tuple[int, int], int]:
        x = args[0] if args else kwargs["hidden_states"]  # [B, C, h, w]
        p = int(self.pipe.transformer.config.patch_size)
        return (int(x.shape[-2]) // p, int(x.shape[-1]) // p), int(x.shape[0])

    def _joint_layout(self, args: tuple, kwargs: dict) -> tuple[slice, slice] | None:
        """SD3's joint sequence: ``[image (N), text]``."""
        if kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None) is None:
            return None
        n = int((args[0] if args else kwargs["hidden_states"]).shape[1])  # [B, N, C]
        return slice(0, n), slice(n, None)

    def prompt_token_maps(self, arguments: dict, repeats: int) -> list[TokenMap] | None:
        prompts = _as_list(arguments.get("prompt"))
        if not prompts:
            return None
        t5_prompts = _as_list(arguments.get("prompt_3")) or prompts
        t5_len = int(arguments.get("max_sequence_length") or 256)
        clip_len = self.sequence_length()
        tok3 = getattr(self.pipe, "tokenizer_3", None)
        has_t5 = tok3 is not None and getattr(self.pipe, "text_encoder_3", None) is not None
        use_clip = self.text_encoder in ("clip", "both")
        use_t5 = self.text_encoder in ("t5", "both")
        if not has_t5 and self.text_encoder == "t5":
            self._warn_once("no-t5", "this SD3 pipeline has no T5 encoder (its T5 positions are zeros); word maps use the CLIP tokens")
            use_clip = True
        maps = []
        for prompt, prompt3 in zip(prompts, t5_prompts):
            clip = build_token_map(self.pipe.tokenizer, prompt, clip_len, self.strict and use_clip)
            t5 = build_offset_token_map(tok3, prompt3, t5_len, self.strict and use_t5) if has_t5 else empty_token_map(prompt3, t5_len)
            maps.append(combine_token_maps([(clip, use_clip), (t5, use_t5 and has_t5)], prompt))
        return [m for m in maps for _ in range(repeats)]

    def check(self, layers: list[Layer]) -> None:
        super().check(layers)
        for layer in layers:
            if layer.cross and not sdpa_tap.tappable(layer.module.processor):
                raise UnsupportedProcessorError(
                    f"layer {layer.name}: this diffusers' {type(layer.module.processor).__name__} does not call "
                    "F.scaled_dot_product_attention, where StepX takes each joint attention's normaliser from; "
                    "supported: diffusers 0.30–0.42's JointAttnProcessor2_0"
                )

    def install_probes(self, session: "Capture", cross: list[Layer], self_layers: list[Layer]) -> list[Callable[[], None]]:
        from .unet import _probe  # image-only attention: plain q/k observation

        removers: list[Callable[[], None]] = []
        for layer in cross:
            removers += self._joint_probe(session, layer)
        for layer in self_layers:
            removers += _probe(session, layer)
        return removers


@register
class FluxAdapter(_MMDiTAdapter):
    """FluxPipeline (FLUX.1 dev / schnell).

    Joint sequence: ``[text (max_sequence_length T5), image (N)]`` with RoPE over both. Cross
    layers: ``transformer_blocks.*.attn`` (double-stream) and ``single_transformer_blocks.*.attn``
    (single-stream). CLIP enters only as a pooled vector, so words map to T5 tokens.
    """

    pipelines = ("FluxPipeline",)
    family = "flux"
    processors = FLUX_PROCESSORS
    default_text_encoder = "t5"
    text_choices = ("t5",)
    first_encode_per_run = True  # true CFG encodes the negative prompt in a second encode_prompt call

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self._uncond = False
        self._txt_len = 0
        self._grid: tuple[int, int] | None = None
        self._ids_key: Any = None
        self._built_ids: dict[tuple, tuple[int, int]] = {}  # (data_ptr, shape) of the ids the pipeline last built -> (h, w)
        self._sig = inspect.signature(pipe.transformer.forward)

    def tokenizer(self) -> Any:
        return self.pipe.tokenizer_2

    def sequence_length(self) -> int:
        return 512

    def guidance(self) -> bool:
        return False  # guidance-distilled; true CFG runs the negative prompt as a separate, skipped call

    def layers(self) -> list[Layer]:
        t = self.pipe.transformer
        out = [Layer(f"transformer_blocks.{i}.attn", b.attn, True, int(b.attn.heads)) for i, b in enumerate(t.transformer_blocks)]
        out += [Layer(f"single_transformer_blocks.{i}.attn", b.attn, True, int(b.attn.heads)) for i, b in enumerate(t.single_transformer_blocks)]
        return out

    def _bind(self, args: tuple, kwargs: dict) -> dict:
        return self._sig.bind_partial(*args, **kwargs).arguments

    def latent_hw(self, args: tuple, kwargs: dict) -> tuple[tuple[int, int], int]:
        a = self._bind(args, kwargs)
        x, ids = a["hidden_states"], a.get("img_ids")  # [B, N, C·4], [N, 3] (row, col in columns 1, 2)
        n = int(x.shape[1])
        if ids is None:
            raise ValueError("FluxTransformer2DModel was called without img_ids; StepX needs them to place image tokens on a grid")
        key = (ids.data_ptr(), tuple(ids.shape), n)
        if key != self._ids_key:
            known = self._built_ids.get(key[:2])
            if known is not None:  # the pipeline built these ids for this grid: nothing to read back
                h, w = known
            else:  # ids from elsewhere: read them (a host sync, once per run)
                flat = ids.reshape(-1, ids.shape[-1])[-n:]
                h, w = int(flat[:, 1].max()) + 1, int(flat[:, 2].max()) + 1
            if h * w != n:
                raise ValueError(f"FLUX img_ids describe a {h}×{w} grid but the transformer has {n} image tokens")
            self._grid, self._ids_key = (h, w), key
        assert self._grid is not None
        return self._grid, int(x.shape[0])

    def skip_evaluation(self, args: tuple, kwargs: dict) -> bool:
        return self._uncond

    def frame_latents(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Packed ``[B, N, C·4]`` → ``[B, C, 2h, 2w]`` (as FluxPipeline._unpack_latents)."""
        if x is None or x.ndim != 3 or self._grid is None:
            return x
        b, n, c = x.shape
        h, w = self._grid
        if h * w != n or c % 4:
            return x
        return x.view(b, h, w, c // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c // 4, 2 * h, 2 * w)

    def prompt_token_maps(self, arguments: dict, repeats: int) -> list[TokenMap] | None:
        prompts = _as_list(arguments.get("prompt_2")) or _as_list(arguments.get("prompt"))
        if not prompts:
            return None
        length = int(arguments.get("max_sequence_length") or 512)
        maps = [build_offset_token_map(self.pipe.tokenizer_2, p, length, self.strict) for p in prompts]
        return [m for m in maps for _ in range(repeats)]

    def install_probes(self, session: "Capture", cross: list[Layer], self_layers: list[Layer]) -> list[Callable[[], None]]:
        t = self.pipe.transformer
        removers: list[Callable[[], None]] = []

        def before(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            ctx = self._bind(args, kwargs).get("encoder_hidden_states")
            self._txt_len = int(ctx.shape[1]) if ctx is not None else 0

        removers.append(t.register_forward_pre_hook(before, with_kwargs=True).remove)
        original = t.cache_context

        @contextlib.contextmanager
        def cache_context(name: str, **kw: Any):  # FluxPipeline runs true CFG's negative pass as "uncond"
            before_flag = self._uncond
            self._uncond = name == "uncond"
            try:
                with original(name, **kw):
                    yield
            finally:
                self._uncond = before_flag

        removers.append(patch_method(t, "cache_context", cache_context))
        removers += self._record_image_ids()
        single = {id(b.attn) for b in t.single_transformer_blocks}
        for layer in cross:
            if sdpa_tap.tappable(layer.module.processor):
                removers += self._joint_probe(session, layer)
            else:
                removers += self._probe(session, layer, id(layer.module) in single)
        return removers

    def _record_image_ids(self) -> list[Callable[[], None]]:
        """Note the grid of the image ids the pipeline builds (``_prepare_latent_image_ids(batch,
        height, width, device, dtype)``, from host ints), so that :meth:`latent_hw` need not read
        the device tensor back: that read would make the host wait for the text encoders."""
        original = getattr(self.pipe, "_prepare_latent_image_ids", None)
        if original is None:
            return []
        sig = inspect.signature(original)

        def prepare(*args: Any, **kwargs: Any) -> Any:
            ids = original(*args, **kwargs)
            try:
                a = sig.bind(*args, **kwargs).arguments
                grid = (int(a["height"]), int(a["width"]))
            except (TypeError, KeyError, ValueError):  # another signature: latent_hw reads the ids
                return ids
            if torch.is_tensor(ids) and grid[0] * grid[1] == ids.reshape(-1, ids.shape[-1]).shape[0]:
                self._built_ids = {(ids.data_ptr(), tuple(ids.shape)): grid}  # the latest only: an old address may be reused
                self._ids_key = None  # new ids: a grid cached for the same address and shape (a freed run's ids) is stale
            return ids

        return [patch_method(self.pipe, "_prepare_latent_image_ids", prepare)]

    def _joint_layout(self, args: tuple, kwargs: dict) -> tuple[slice, slice] | None:
        """FLUX's joint sequence, in double- and single-stream blocks alike: ``[text (T), image]``."""
        if self._uncond:
            return None
        t = self._txt_len
        return slice(t, None), slice(0, t)

    def _probe(self, session: "Capture", layer: Layer, single: bool) -> list[Callable[[], None]]:
        """For a FLUX processor whose attention call cannot be tapped: observe ``to_q``, ``to_k``
        (and ``add_k_proj``), apply the norms and RoPE as the processor does, and compute the
        normaliser (a second attention's worth of logits)."""
        from diffusers.models.embeddings import apply_rotary_emb

        attn = cast(_FluxAttention, layer.module)
        slot: dict[str, Any] = {}

        def pre(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            slot.clear()
            if not session.active or self._uncond:
                return
            mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
            if mask is not None:
                self._warn_once(f"mask:{layer.name}", f"{layer.name} was called with an attention mask; it is left out of the maps")
                return
            slot["rope"] = kwargs.get("image_rotary_emb", args[3] if len(args) > 3 else None)
            slot["on"] = True

        def prepare(x: torch.Tensor, norm: Any, rows: slice) -> torch.Tensor:  # [b, S, heads·d] -> [b, S, heads, d], normed
            x = x[rows].unflatten(-1, (-1, attn.head_dim))
            return norm(x) if norm is not None else x

        def rope(x: torch.Tensor, start: int) -> torch.Tensor:  # RoPE rows start.. of the joint sequence
            emb = slot.get("rope")
            if emb is None:
                return x
            cos, sin = emb
            n = x.shape[1]
            # diffusers annotates freqs_cis as a 1-tuple and the result as a pair; it takes (cos, sin)
            # and returns the one rotated tensor
            return apply_rotary_emb(x, (cos[start : start + n], sin[start : start + n]), sequence_dim=1)  # type: ignore[arg-type, return-value]

        def compute(q: torch.Tensor, k_img: torch.Tensor, k_txt: torch.Tensor | None) -> None:
            rows = session.cond_rows(q.shape[0])
            if rows is None:
                return
            with torch.no_grad():
                if single:  # q, k cover [text, image] already
                    t = self._txt_len
                    qq = rope(prepare(q, attn.norm_q, rows), 0)[:, t:]
                    kk = rope(prepare(k_img, attn.norm_k, rows), 0)
                else:
                    kt = prepare(cast(torch.Tensor, k_txt), attn.norm_added_k, rows)  # a double-stream block's text keys
                    t = kt.shape[1]
                    qq = rope(prepare(q, attn.norm_q, rows), t)
                    kk = rope(torch.cat([kt, prepare(k_img, attn.norm_k, rows)], dim=1), 0)  # FLUX order: [text, image]
                self._emit(session, layer, qq.transpose(1, 2), kk.transpose(1, 2), slice(0, t))

        def on_q(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
            if slot.get("on"):
                slot["q"] = out

        def on_k(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
            if "q" not in slot:
                return
            if single:
                compute(slot.pop("q"), out, None)
            else:
                slot["k"] = out

        def on_add_k(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
            if "k" in slot:
                compute(slot.pop("q"), slot.pop("k"), out)

        handles = [
            layer.module.register_forward_pre_hook(pre, with_kwargs=True),
            attn.to_q.register_forward_hook(on_q),
            attn.to_k.register_forward_hook(on_k),
        ]
        if not single:
            handles.append(attn.add_k_proj.register_forward_hook(on_add_k))
        return [h.remove for h in handles]
