"""Write a diffusers Stable Diffusion pipeline as one original-format (CompVis/LDM) checkpoint.

The reverse of diffusers' single-file loading (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` in
``diffusers.loaders.single_file_utils``): UNet weights go under ``model.diffusion_model.``, the
VAE under ``first_stage_model.`` and the CLIP text encoder under
``cond_stage_model.transformer.text_model.``. The layout is computed from the UNet/VAE configs, so
it works for models with fewer blocks than SD 1.5 (the tiny test pipeline, the embedded shapes
model). Why: the project tests its single-file loading on checkpoints it writes itself, since
nothing can be downloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# diffusers ResnetBlock2D sub-module → LDM ResBlock sub-module
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_TOP = {"conv_norm_out": "norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _UNET_RESNET:
        raise KeyError(rest)
    return f"{_UNET_RESNET[head]}.{tail}"


def unet_key_to_ldm(key: str, config: Mapping[str, Any]) -> str:
    """The LDM name (without prefix) of a diffusers ``UNet2DConditionModel`` weight.

    Input block ``1 + b*(L+1) + j`` holds down block ``b``'s layer ``j`` (resnet at ``.0``,
    attention at ``.1``), ``1 + b*(L+1) + L`` its downsampler; output block ``b*(L+1) + j`` holds
    up block ``b``'s layer ``j``, the upsampler after the last layer's resnet (and attention).
    """
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"layers_per_block={layers!r}: only one int for all blocks converts to the LDM layout")
    per = layers + 1
    top, _, tail = key.rpartition(".")
    if top in _UNET_TOP:
        return f"{_UNET_TOP[top]}.{tail}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + b * per + j
        return f"input_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + layers}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = b * per + j
        return f"output_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        slot = 2 if config["up_block_types"][b].startswith("CrossAttn") else 1
        return f"output_blocks.{b * per + layers}.{slot}.conv.{m[2]}"
    raise KeyError(f"UNet weight {key!r} has no LDM equivalent in this converter")


def vae_key_to_ldm(key: str, config: Mapping[str, Any]) -> str:
    """The LDM name (without prefix) of a diffusers ``AutoencoderKL`` weight (decoder up blocks reversed)."""
    n_up = len(config["up_block_types"])
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.+)", key):
        return f"{m[1]}.{_VAE_TOP[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    raise KeyError(f"VAE weight {key!r} has no LDM equivalent in this converter")


def clip_key_to_ldm(key: str) -> str:
    """The LDM name (without prefix) of a transformers ``CLIPTextModel`` weight (flattened in transformers ≥ 5.6 or not)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _vae_tensor(ldm_key: str, t: torch.Tensor) -> torch.Tensor:
    """LDM's VAE mid attention uses 1×1 convolutions where diffusers uses linear layers."""
    if ".mid.attn_1." in ldm_key and ldm_key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and t.ndim == 2:
        return t[:, :, None, None]
    return t


def pipeline_to_ldm_state_dict(pipe: Any, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All UNet, VAE and text-encoder weights of ``pipe`` under their LDM names (CPU, contiguous)."""
    out: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> None:
        if name in out:
            raise ValueError(f"two weights map to {name!r}: the model's layout does not fit the LDM format")
        t = t.detach().to("cpu", dtype or t.dtype).contiguous()
        out[name] = t

    for k, t in pipe.unet.state_dict().items():
        put(UNET_PREFIX + unet_key_to_ldm(k, pipe.unet.config), t)
    for k, t in pipe.vae.state_dict().items():
        name = vae_key_to_ldm(k, pipe.vae.config)
        put(VAE_PREFIX + name, _vae_tensor(name, t))
    for k, t in pipe.text_encoder.state_dict().items():
        if k.endswith("position_ids"):
            continue
        put(CLIP_PREFIX + clip_key_to_ldm(k), t)
    return out


def save_single_file(pipe: Any, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` (a StableDiffusionPipeline) as one LDM-format ``.safetensors`` checkpoint.

    ``dtype`` casts every weight (e.g. ``torch.float16`` to halve the file); ``None`` keeps them.
    Load it back with ``StableDiffusionPipeline.from_single_file(path, config=<diffusers folder>)``
    or ``bridge.models.loading.load_pipeline(path, arch="sd", config=<folder>)``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: save_single_file writes .safetensors files only")
    for part in ("unet", "vae", "text_encoder"):
        if getattr(pipe, part, None) is None:
            raise ValueError(f"the pipeline has no {part}; a Stable Diffusion single file needs UNet, VAE and text encoder")
    state = pipeline_to_ldm_state_dict(pipe, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", "writer": "stepx bridge.models.convert"})
    return path


# --- comparing a checkpoint with a diffusers folder, by names and shapes only ----------------------


def _folder_shapes(folder: Path, part: str) -> dict[str, tuple[int, ...]]:
    """Weight name → shape of one component of a diffusers folder, from safetensors headers (no tensors read)."""
    from safetensors import safe_open

    sub = folder / part
    files = sorted(sub.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{sub}: no .safetensors weights (the comparison reads safetensors headers only)")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                shapes[k] = tuple(h.get_slice(k).get_shape())
    return shapes


def folder_ldm_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """The LDM name → shape map a single file of the diffusers SD folder ``folder`` would have."""
    folder = Path(folder)
    out: dict[str, tuple[int, ...]] = {}
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    for k, s in _folder_shapes(folder, "unet").items():
        out[UNET_PREFIX + unet_key_to_ldm(k, unet_cfg)] = s
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    for k, s in _folder_shapes(folder, "vae").items():
        name = vae_key_to_ldm(k, vae_cfg)
        out[VAE_PREFIX + name] = tuple(_vae_tensor(name, torch.empty(s, device="meta")).shape)
    for k, s in _folder_shapes(folder, "text_encoder").items():
        if not k.endswith("position_ids"):
            out[CLIP_PREFIX + clip_key_to_ldm(k)] = s
    return out


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a ``.safetensors`` file, from its header."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as h:
        return {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}


def architecture_mismatches(path: str | Path, folder: str | Path, prefixes: tuple[str, ...] = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) -> list[str]:
    """Differences between a single-file ``.safetensors`` checkpoint and a diffusers folder's architecture,
    for the weights under ``prefixes``; empty when they match. Up to 5 differences are listed."""
    have = {k: s for k, s in checkpoint_shapes(path).items() if k.startswith(prefixes)}
    want = {k: s for k, s in folder_ldm_shapes(folder).items() if k.startswith(prefixes)}
    problems = [f"{k}: missing from the file" for k in sorted(want.keys() - have.keys())]
    problems += [f"{k}: in the file, not in the folder's model" for k in sorted(have.keys() - want.keys())]
    problems += [f"{k}: shape {have[k]} in the file, {want[k]} in the folder" for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
    return problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
