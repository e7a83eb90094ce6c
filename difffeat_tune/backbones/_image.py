"""Pixels to latents for latent-diffusion backbones: resize, centre crop, [-1, 1], VAE.

Shared by every diffusers image family: an image is resized (shorter side, bicubic) and
centre-cropped to the model's square resolution, scaled to [-1, 1] as the pipelines'
``VaeImageProcessor`` does, and encoded by the pipeline's VAE to the posterior mean (so encoding
is deterministic), then ``(mean - shift_factor) * scaling_factor`` with both factors read from
the VAE's config (SD/PixArt: scaling 0.18215, no shift; SD3: 1.5305 and 0.0609; Flux: 0.3611 and
0.1159).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from difffeat_tune.backbones._base import InputStage

#: Recorded in the backbones' settings (part of the feature-store key).
PREPROCESS = "resize-shorter-bicubic+center-crop"
VAE_LATENT = "posterior-mean"


def center_crop_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size``, centre-crop to ``size`` x ``size``, scale to [-1, 1] (CHW)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    resized = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32)).permute(2, 0, 1)
    return pixels / 127.5 - 1.0


def _cropped_batch(images: list[Image.Image], ids: tuple[str, ...], split_name: str, *, size: int
                   ) -> dict[str, torch.Tensor]:
    """``{"pixels": float32 [B, 3, size, size]}`` of a batch's images (resized, centre-cropped)."""
    if not images:
        return {"pixels": torch.zeros((0, 3, size, size))}
    return {"pixels": torch.stack([center_crop_pixels(image, size) for image in images])}


def pixel_stage(size: int) -> InputStage:
    """The input stage of a latent-diffusion backbone: images resized and centre-cropped to ``size``."""
    return InputStage("image", partial(_cropped_batch, size=size))


def vae_factor(vae: AutoencoderKL) -> int:
    """How many pixels one latent cell covers per side (8 for every released pipeline's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def no_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """The latents of a batch of no images, ``float32 [0, C, H / f, W / f]``, without running the VAE
    (its attention cannot reshape a batch of no rows)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return torch.zeros((0, int(vae.config.latent_channels), pixels.shape[-2] // factor, pixels.shape[-1] // factor),
                       device=pixels.device)


def vae_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """``(posterior mean - shift_factor) * scaling_factor`` of ``pixels`` ([B, 3, H, W] in [-1, 1]), float32."""
    if pixels.shape[0] == 0:
        return no_latents(vae, pixels)
    shift = vae.config.get("shift_factor") or 0.0
    scale = float(vae.config.scaling_factor)
    with torch.inference_mode():
        mean = vae.encode(pixels.to(vae.dtype)).latent_dist.mean.float()
    return (mean - float(shift)) * scale
