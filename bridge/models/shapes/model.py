"""The shapes model's architecture: a small latent-diffusion StableDiffusionPipeline.

128x128 RGB images, an AutoencoderKL with 8x downsampling to 16x16x8 latents, a
UNet2DConditionModel with cross-attention at 16x16 and 8x8 (and its mid block at 4x4), and a
3-layer CLIP text encoder over the 123-token shapes vocabulary, 32 tokens long.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .tokenizer import build_vocab, save_tokenizer
from .vocab import MAX_LENGTH

IMAGE_SIZE = 128
LATENT_CHANNELS = 8
TEXT_DIM = 256

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 96, 128),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
    scaling_factor=1.0,  # replaced by 1/std of the trained latents
)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(96, 160, 160),
    layers_per_block=1,
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=4,  # diffusers: the number of heads
    norm_num_groups=32,
    transformer_layers_per_block=1,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    steps_offset=1,
)


def text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_DIM,
        bos_token_id=vocab_size - 3,
        eos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 2,
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG, clip_sample=False)


def build_text_encoder(text_window: int | None = None) -> CLIPTextModel:
    """The 3-layer CLIP text encoder; ``text_window`` makes it local (``local_text.make_local``)."""
    from .local_text import make_local

    vocab, _ = build_vocab()
    text_encoder = CLIPTextModel(text_config(len(vocab)))
    if text_window is not None:
        make_local(text_encoder, text_window)
    return text_encoder


def build_pipeline(tokenizer_dir: str | Path, seed: int = 0, text_window: int | None = None) -> StableDiffusionPipeline:
    """A randomly initialised pipeline with the final architecture (a local text encoder with ``text_window``)."""
    torch.manual_seed(seed)
    save_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    text_encoder = build_text_encoder(text_window)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


#: largest file saved; the UNet is split into shards of at most this size
MAX_SHARD = "15MB"


def save_pipeline(pipe: StableDiffusionPipeline, out_dir: str | Path) -> None:
    """Save in diffusers format, fp16 safetensors, every file under 16 MiB."""
    pipe = pipe.to(torch.float16)
    pipe.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size=MAX_SHARD)
    save_tokenizer(Path(out_dir) / "tokenizer")  # also vocab.json/merges.txt, for any CLIPTokenizer version
    for f in Path(out_dir).rglob("*"):
        if f.is_file():
            f.chmod(0o644)
