"""Step images: cheap previews of each step's predicted clean image, and the full decode.

The cheap path is a linear map from latent channels to RGB, fitted once per VAE by encoding a
few smooth colour fields and solving least squares: one tiny matmul per step instead of a VAE
decode, for any 4- or 16-channel VAE. The full decode uses the pipeline's own VAE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8_tensor(image: torch.Tensor) -> torch.Tensor:
    """``[3, h, w]`` in [0, 1] → ``uint8 [h, w, 3]`` on the same device (row 0 = top)."""
    return image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, h, w]`` in [0, 1] → ``uint8 [h, w, 3]`` numpy (row 0 = top)."""
    return to_uint8_tensor(image).cpu().numpy()


@torch.no_grad()
def decode_full(pipe, latents: torch.Tensor) -> np.ndarray:
    """Decode ``[1, C, h, w]`` latents with the pipeline's VAE → ``uint8 [H, W, 3]``.

    Follows the pipeline's own rule: pipelines that upcast (SDXL's, whose VAE overflows in
    float16) decode a float16 VAE with ``config.force_upcast`` in float32 and put it back to
    float16 afterwards; the others (SD 1.x/2.x, SD3, FLUX) decode as they are, as they do."""
    vae = pipe.vae
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
    dtype = vae.dtype  # diffusers walks every submodule for it: read once (a fixed cost per run)
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False)) and hasattr(pipe, "upcast_vae")
    if upcast:
        vae.to(torch.float32)
    try:
        z = (latents.to(torch.float32 if upcast else dtype) / scale) + shift
        image = vae.decode(z, return_dict=False)[0]  # [1, 3, H, W] in [-1, 1]
    finally:
        if upcast:
            vae.to(torch.float16)
    return to_uint8((image[0].float() + 1) / 2)


class LinearPreview:
    """A fitted latent→RGB linear map for quick step images (``[1, C, h, w]`` → ``uint8 [h·s, w·s, 3]``)."""

    def __init__(self, pipe, samples: int = 8, size: int = 64, seed: int = 0) -> None:
        self.weight, self.bias = self._fit(pipe, samples, size, seed)

    @staticmethod
    @torch.no_grad()
    def _fit(pipe, samples: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        vae = pipe.vae
        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand(samples, 3, 4, 4, generator=g)  # smooth colour fields
        images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
        param = next(vae.parameters())
        latent = vae.encode((images * 2 - 1).to(param.device, param.dtype)).latent_dist.mean.float().cpu()
        latent = (latent - shift) * scale  # [S, C, h, w], as the denoiser sees them
        target = F.interpolate(images, size=latent.shape[-2:], mode="area")  # [S, 3, h, w]
        x = latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1])
        x = torch.cat([x, torch.ones(len(x), 1)], 1)  # [P, C+1]
        y = target.permute(0, 2, 3, 1).reshape(-1, 3)  # [P, 3]
        sol = torch.linalg.lstsq(x.double(), y.double()).solution.float()  # [C+1, 3]
        return sol[:-1].contiguous(), sol[-1].contiguous()

    @torch.no_grad()
    def device_image(self, latents: torch.Tensor, upscale: int = 4) -> torch.Tensor:
        """``[1, C, h, w]`` latents → ``uint8 [h·upscale, w·upscale, 3]`` on the latents' device."""
        z = latents[0].float()  # [C, h, w]
        if self.weight.device != z.device:
            self.weight, self.bias = self.weight.to(z.device), self.bias.to(z.device)
        rgb = torch.einsum("chw,ck->khw", z, self.weight) + self.bias[:, None, None]  # [3, h, w]
        if upscale > 1:
            rgb = F.interpolate(rgb[None], scale_factor=upscale, mode="bilinear", align_corners=False)[0]
        return to_uint8_tensor(rgb)

    def __call__(self, latents: torch.Tensor, upscale: int = 4) -> np.ndarray:
        return self.device_image(latents, upscale).cpu().numpy()
