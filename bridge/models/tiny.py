"""Small diffusers pipelines built from configs with random weights.

They have the real architectures' structure (UNet with cross-attention at two resolutions,
VAE, CLIP text encoder and the real CLIP BPE tokenizer) at a size that runs on a CPU in
milliseconds: for tests, for benchmarks of the capture's bookkeeping, and as a stand-in where
no trained model is wanted.
"""

from __future__ import annotations

from pathlib import Path

import torch

CLIP_TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "clip_tokenizer"


def clip_tokenizer():
    """The real CLIP BPE tokenizer (ids match openai/clip-vit-large-patch14), from package data."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER))


def _text_encoder(hidden: int, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    ).eval()


def tiny_sd_pipeline(seed: int = 0, scheduler: str = "euler", img2img: bool = False):
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


def tiny_sdxl_pipeline(seed: int = 0, scheduler: str = "euler", img2img: bool = False):
    """A StableDiffusionXL(Img2Img)Pipeline with random weights, shaped like SDXL (two text
    encoders, text_time conditioning, 1 and 2 transformer layers per block)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
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


def make_scheduler(name: str):
    """A scheduler by short name, with Stable Diffusion's noise schedule."""
    import diffusers

    classes = {
        "euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler",
        "heun": "HeunDiscreteScheduler", "dpm2": "KDPM2DiscreteScheduler", "pndm": "PNDMScheduler",
        "euler_a": "EulerAncestralDiscreteScheduler", "lms": "LMSDiscreteScheduler",
    }
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(classes)}")
    kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
    if name == "pndm":
        kwargs["skip_prk_steps"] = True
    return getattr(diffusers, classes[name])(**kwargs)
