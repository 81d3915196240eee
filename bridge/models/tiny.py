"""Small diffusers pipelines built from configs with random weights.

They have the real architectures' structure (UNet with cross-attention at two resolutions,
VAE, CLIP text encoder and the real CLIP BPE tokenizer) at a size that runs on a CPU in
milliseconds: for tests, for benchmarks of the capture's bookkeeping, and as a stand-in where
no trained model is wanted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the defining modules: diffusers' package namespace is Any to mypy (pyproject.toml)
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
    from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import StableDiffusion3Pipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import StableDiffusionXLImg2ImgPipeline
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5Tokenizer

CLIP_TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "clip_tokenizer"


def clip_tokenizer() -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (ids match openai/clip-vit-large-patch14), from package data."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER))


def _text_encoder(hidden: int, projection: bool = False, seed: int = 0) -> CLIPTextModel | CLIPTextModelWithProjection:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(seed: int = 0) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    ).eval()


def tiny_sd_pipeline(seed: int = 0, scheduler: str = "euler",
                     img2img: bool = False) -> StableDiffusionPipeline | StableDiffusionImg2ImgPipeline:
    """A StableDiffusion(Img2Img)Pipeline with random weights: 64×64 images, latents 32×32,
    cross-attention at 32×32 and 16×16 with 2 heads."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    ).eval()
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(
        unet=unet, vae=_vae(seed), text_encoder=_text_encoder(32, seed=seed), tokenizer=clip_tokenizer(),
        scheduler=make_scheduler(scheduler), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, scheduler: str = "euler",
                       img2img: bool = False) -> StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline:
    """A StableDiffusionXL(Img2Img)Pipeline with random weights, shaped like SDXL: two text
    encoders, text_time conditioning, no attention at the latent's own grid (32×32 here, as
    SDXL has none at its 128×128), cross-attention at 16×16 and 8×8 with 1 and 2 transformer
    layers per block."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=8,
    ).eval()
    cls = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
    extra = {"requires_aesthetics_score": False} if img2img else {}
    pipe = cls(
        unet=unet, vae=_vae(seed), text_encoder=_text_encoder(32, seed=seed), text_encoder_2=_text_encoder(32, True, seed + 1),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), scheduler=make_scheduler(scheduler), **extra,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dispatch_sd_pipeline(seed: int = 0, scheduler: str = "dpm") -> StableDiffusionPipeline:
    """A CPU proxy of SD 1.5 on a fast GPU, where the run is bound by the Python/dispatch thread.

    SD 1.5's UNet topology (4 down blocks, the first 3 with cross-attention, 2 layers per block,
    8 heads, 16 attention layers, the same modules and hooks per step) with tiny channels
    (32/32/64/64, text width 64) at a 16×16 latent (32×32 images): each op's compute is
    negligible, so per-op dispatch and Python dominate, as they do for SD 1.5 at 512² on an H100
    (≈ 40 ms of launching per step for ≈ 13 ms of GPU work). Timings from it are a proxy for
    that regime on a CPU, not a GPU result.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
    ).eval()
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_vae(seed), text_encoder=_text_encoder(64, seed=seed), tokenizer=clip_tokenizer(),
        scheduler=make_scheduler(scheduler), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: short name → diffusers scheduler class; "lcm" and "turbo" are the few-step (1–4 step) ones
SCHEDULERS = {
    "euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler",
    "heun": "HeunDiscreteScheduler", "dpm2": "KDPM2DiscreteScheduler", "pndm": "PNDMScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler", "lms": "LMSDiscreteScheduler",
    "lcm": "LCMScheduler", "turbo": "EulerDiscreteScheduler",
}


def make_scheduler(name: str) -> SchedulerMixin:
    """A scheduler by short name, with Stable Diffusion's noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
    if name == "pndm":
        kwargs["skip_prk_steps"] = True
    if name == "turbo":  # SD-Turbo's scheduler config: Euler over trailing timesteps (1 step starts at t = 999)
        kwargs["timestep_spacing"] = "trailing"
    return getattr(diffusers, SCHEDULERS[name])(**kwargs)


# --- MM-DiT (SD3 / FLUX) -------------------------------------------------------------------------

T5_WORDS = (
    "a an the of on in above below under over and with red blue green yellow black white circle square "
    "triangle cat dog photo painting background sky city tree house portrait"
).split()


def t5_tokenizer() -> T5Tokenizer:
    """A tiny T5 (SentencePiece-unigram style) tokenizer built offline: whole-word pieces for
    :data:`T5_WORDS`, single characters for everything else; ``</s>`` appended, ``<pad>`` = 0.

    Its ids do not match a real T5 vocabulary; it tokenizes like one (``▁`` word-start pieces,
    end token, max-length padding), which is what word↔token mapping needs.
    """
    import string

    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -2.0) for w in T5_WORDS]
    chars = string.ascii_letters + string.digits + ",.!?;:'\"-()"
    vocab += [("▁", -3.0)] + [(c, -5.0) for c in chars] + [("▁" + c, -5.5) for c in string.ascii_letters]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5_encoder(vocab: int, d_model: int, seed: int = 0) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def _flow_vae(seed: int = 0) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def tiny_sd3_transformer(seed: int = 0, num_layers: int = 2,
                         dual_attention_layers: tuple[int, ...] = (0,)) -> SD3Transformer2DModel:
    """SD3Transformer2DModel with random weights: patch 2, 4 heads of 8, RMS q/k norm, SD3.5-style
    dual attention in ``dual_attention_layers``; the last block is ``context_pre_only``."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=num_layers, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4,
        dual_attention_layers=dual_attention_layers, qk_norm="rms_norm",
    ).eval()


def tiny_flux_transformer(seed: int = 0) -> FluxTransformer2DModel:
    """FluxTransformer2DModel with random weights: 1 double-stream and 2 single-stream blocks, 2 heads of 16."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()


def tiny_sd3_pipeline(seed: int = 0, t5: bool = True) -> StableDiffusion3Pipeline:
    """StableDiffusion3Pipeline with random weights: two CLIP encoders (L/G stand-ins, 77 tokens,
    concatenated features) and a tiny T5 (``t5=False``: none, as SD3 allows). Use 64×64 images:
    latents 32×32, a 16×16 token grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tok3 = t5_tokenizer() if t5 else None
    enc3 = _t5_encoder(len(tok3), 64, seed + 2) if tok3 is not None else None
    pipe = StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(seed),
        text_encoder=_text_encoder(32, True, seed), tokenizer=clip_tokenizer(),
        text_encoder_2=_text_encoder(32, True, seed + 1), tokenizer_2=clip_tokenizer(),
        text_encoder_3=enc3, tokenizer_3=tok3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """FluxPipeline with random weights: CLIP (pooled only) and a tiny T5 whose sequence enters the
    joint attention. Use 64×64 images: latents 32×32, packed 2×2 into a 16×16 token grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    tok2 = t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(seed),
        text_encoder=_text_encoder(32, False, seed), tokenizer=clip_tokenizer(),
        text_encoder_2=_t5_encoder(len(tok2), 32, seed + 2), tokenizer_2=tok2, transformer=tiny_flux_transformer(seed),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
