"""Full-size architectures with random weights, for benchmarks: the compute is that of the real
models (SD 1.5 at 512², SDXL at 1024², SD3.5-medium, FLUX.1-dev), with no download."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

import torch

from bridge.models.tiny import clip_tokenizer, make_scheduler

if TYPE_CHECKING:  # the defining modules: diffusers' package namespace is Any to mypy (pyproject.toml)
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import StableDiffusion3Pipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    PipelineT = TypeVar("PipelineT", bound=DiffusionPipeline)


def _on_device(build: Callable[[], PipelineT], device: str, dtype: torch.dtype) -> PipelineT:
    """Build a pipeline with its weights initialised on ``device`` (seconds instead of minutes for
    billions of random weights); the scheduler's tables are rebuilt on the CPU, where diffusers
    keeps them."""
    with torch.device(device):
        pipe = build()
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    for module in pipe.components.values():  # built, not loaded: still in training mode (T5's dropout would be on)
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe.to(device, dtype)


def _clip_text(hidden: int, layers: int, heads: int, inter: int, act: str,
               projection: bool = False) -> CLIPTextModel | CLIPTextModelWithProjection:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=hidden,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _sd_vae(scaling: float) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
                         layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=scaling)


def sd15_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16, scheduler: str = "dpm") -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture (UNet 860M, VAE, CLIP ViT-L text encoder), random weights."""
    return _on_device(lambda: _sd15(scheduler), device, dtype)


def _sd15(scheduler: str) -> StableDiffusionPipeline:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    )
    pipe = StableDiffusionPipeline(unet=unet, vae=_sd_vae(0.18215), text_encoder=_clip_text(768, 12, 12, 3072, "quick_gelu"),
                                   tokenizer=clip_tokenizer(), scheduler=make_scheduler(scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdturbo_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16,
                     scheduler: str = "turbo") -> StableDiffusionPipeline:
    """SD-Turbo's architecture (SD 2.1's UNet 865M with linear projections and 1024-wide
    cross-attention, VAE, OpenCLIP ViT-H text encoder), random weights, 512², its trailing-timestep
    Euler scheduler: the 1–4 step model, run with guidance 0."""
    return _on_device(lambda: _sdturbo(scheduler), device, dtype)


def _sdturbo(scheduler: str) -> StableDiffusionPipeline:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    )
    pipe = StableDiffusionPipeline(unet=unet, vae=_sd_vae(0.18215), text_encoder=_clip_text(1024, 23, 16, 4096, "gelu"),
                                   tokenizer=clip_tokenizer(), scheduler=make_scheduler(scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16,
                  scheduler: str = "euler") -> StableDiffusionXLPipeline:
    """SDXL base's architecture (UNet 2.6B, VAE, CLIP ViT-L + OpenCLIP bigG), random weights, 1024²."""
    return _on_device(lambda: _sdxl(scheduler), device, dtype)


def _sdxl(scheduler: str) -> StableDiffusionXLPipeline:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_sd_vae(0.13025), text_encoder=_clip_text(768, 12, 12, 3072, "quick_gelu"),
        text_encoder_2=_clip_text(1280, 32, 20, 5120, "gelu", projection=True), tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(), scheduler=make_scheduler(scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd35m_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16, layers: int = 24,
                   heads: int = 24) -> StableDiffusion3Pipeline:
    """SD3.5-medium's MM-DiT (2.5B: 24 joint blocks of 24 heads × 64, dual attention in the first
    13, RMS q/k norm), its 16-channel VAE and CLIP-L + CLIP-G text encoders, random weights, 1024².
    T5 is left out (diffusers then feeds zeros for its 256 positions), so the joint attention has
    the full 77 + 256 text tokens at a fraction of the memory."""
    return _on_device(lambda: _sd35m(layers, heads), device, dtype)


def _sd35m(layers: int, heads: int) -> StableDiffusion3Pipeline:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=layers, attention_head_dim=64,
        num_attention_heads=heads, joint_attention_dim=4096, caption_projection_dim=64 * heads, pooled_projection_dim=2048,
        pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(min(13, layers))),
    )
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=16,
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=_clip_text(768, 12, 12, 3072, "quick_gelu", projection=True), tokenizer=clip_tokenizer(),
        text_encoder_2=_clip_text(1280, 32, 20, 5120, "gelu", projection=True), tokenizer_2=clip_tokenizer(),
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, layers: int = 19, single_layers: int = 38,
                  t5_layers: int = 24) -> FluxPipeline:
    """FLUX.1-dev's architecture (12B MM-DiT: 19 double- and 38 single-stream blocks of 24 heads ×
    128, RoPE, guidance embedding), its 16-channel VAE, CLIP-L (pooled) and a T5-XXL-shaped encoder
    (d_model 4096, 64 heads, ``t5_layers`` layers) with the embedded T5-style tokenizer's small
    vocabulary, random weights. The T5 sequence (512 tokens) enters every joint attention as in the
    real model; its vocabulary is not the real one (the text embeddings' size is all that differs)."""
    return _on_device(lambda: _flux(layers, single_layers, t5_layers), device, dtype)


def _flux(layers: int, single_layers: int, t5_layers: int) -> FluxPipeline:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from bridge.models.tiny import t5_tokenizer

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single_layers, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=16,
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    tok2 = t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=4096, d_kv=64, d_ff=10240, num_layers=t5_layers, num_heads=64,
                                 feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
    pipe = FluxPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        text_encoder=_clip_text(768, 12, 12, 3072, "quick_gelu"), tokenizer=clip_tokenizer(),
        text_encoder_2=t5, tokenizer_2=tok2,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
