"""Train a small autoencoder in ``AutoencoderKL``'s layout on images (the tiny DiT's VAE).

Stable Diffusion's VAE is trained with L1 + LPIPS + a patch GAN and a KL weight of about 1e-6;
for flat synthetic shapes, L1 + KL 1e-6 is enough (the latent stays nearly deterministic and the
KL only keeps its scale tame). The network is fully convolutional (its one attention layer sits
in the mid block at the latent resolution), so it trains on random crops, a quarter of the cost
of whole images, and encodes whole images afterwards. Once trained, the latents' standard
deviation sets ``scaling_factor`` in the VAE's config, so scaled latents have unit variance
(Stable Diffusion's 0.18215 was found the same way); extraction reads it from there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL

from difffeat_tune.pretrain._checkpoint import Checkpoints, restore_rng, rng_state, warmup_cosine

logger = logging.getLogger(__name__)

#: ``log(step, losses)`` is called every ``log_every`` steps.
Log = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class VAERecipe:
    """Architecture and training of the tiny autoencoder.

    Attributes:
        block_out_channels: channels per level; n levels downsample by 2^(n-1). Three levels (by 4:
            64 px images to 16 x 16 latents) keep the small shapes that Stable Diffusion's 8x
            downsampling loses at 64 px (measured: L1 0.10 and blurred blobs with 4 levels and
            16 channels, against 0.044 and recognisable shapes with 3 levels and 4 channels).
        latent_channels: latent channels (4, as Stable Diffusion's and DiT-XL/2's input).
        layers_per_block: ResNet layers per encoder level (decoder: one more).
        norm_num_groups: GroupNorm groups.
        steps: optimiser steps.
        batch_size: crops per step.
        crop: side of the random training crops (a multiple of 8).
        lr: AdamW learning rate (its peak, after a short warm-up).
        warmup: warm-up steps.
        final_lr_ratio: the rate decays along a cosine to ``lr`` x this at the last step (1: constant).
        kl_weight: weight of the KL term.
        seed: seed of the initialisation, crops and flips.
        log_every: steps between two ``log`` calls.
    """

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 8
    steps: int = 2500
    batch_size: int = 32
    crop: int = 32
    lr: float = 2e-3
    warmup: int = 100
    final_lr_ratio: float = 1.0
    kl_weight: float = 1e-6
    seed: int = 0
    log_every: int = 100


def build_vae(recipe: VAERecipe, image_size: int) -> AutoencoderKL:
    """A randomly initialised autoencoder of ``recipe``'s architecture for ``image_size`` images."""
    levels = len(recipe.block_out_channels)
    return AutoencoderKL(
        block_out_channels=recipe.block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=recipe.latent_channels,
        layers_per_block=recipe.layers_per_block,
        norm_num_groups=recipe.norm_num_groups,
        sample_size=image_size,
    )


def to_unit_range(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` images to float32 ``[N, 3, H, W]`` in [-1, 1] (the VAE's input)."""
    tensor = torch.as_tensor(pixels)
    return tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 reconstruction of a posterior sample plus ``kl_weight`` x KL (per element and per latent)."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    l1 = (reconstruction - images).abs().mean()
    kl = posterior.kl().mean() / float(np.prod(posterior.mean.shape[1:]))
    return l1 + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}


def _random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = images.shape
    if size >= min(height, width):
        return images
    top = torch.randint(0, height - size + 1, (n,), generator=generator)
    left = torch.randint(0, width - size + 1, (n,), generator=generator)
    return torch.stack([images[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(top.tolist(),
                                                                                            left.tolist()))])


def _flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def train_vae(pixels: np.ndarray, recipe: VAERecipe, *, log: Log | None = None,
              vae: AutoencoderKL | None = None, checkpoints: Checkpoints | None = None,
              stage: str = "vae") -> AutoencoderKL:
    """Train an autoencoder on uint8 images ``[N, H, W, 3]``; return it in eval mode, scaling set.

    Args:
        pixels: the training images.
        recipe: architecture and schedule.
        log: progress callback (losses averaged since the last call).
        vae: continue training this model instead of a new one (tests use a few steps).
        checkpoints: save the whole training state there every few minutes, and resume from it.
        stage: the checkpoint's name.
    """
    torch.manual_seed(recipe.seed)  # the posterior samples draw from the global generator
    generator = torch.Generator().manual_seed(recipe.seed)
    vae = vae if vae is not None else build_vae(recipe, pixels.shape[1])
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup, recipe.steps,
                                                                          recipe.final_lr_ratio))
    sums: dict[str, float] = {}
    first = 1
    saved = checkpoints.load(stage, asdict(recipe)) if checkpoints is not None else None
    if saved is not None:
        vae.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        restore_rng(generator, saved["rng"])
        sums, first = dict(saved["sums"]), saved["step"] + 1
    start = time.perf_counter()
    for step in range(first, recipe.steps + 1):
        index = torch.randint(0, len(pixels), (recipe.batch_size,), generator=generator)
        batch = _flip(_random_crops(to_unit_range(pixels[index.numpy()]), recipe.crop, generator), generator)
        loss, parts = vae_loss(vae, batch, recipe.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        if log is not None and (step % recipe.log_every == 0 or step == recipe.steps):
            count = step % recipe.log_every or recipe.log_every
            log(step, {**{k: v / count for k, v in sums.items()}, "seconds": time.perf_counter() - start})
            sums = {}
        if checkpoints is not None and checkpoints.due(stage, step, recipe.steps):
            checkpoints.save(stage, {"recipe": asdict(recipe), "step": step, "model": vae.state_dict(),
                                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                     "rng": rng_state(generator), "sums": sums})
    vae.eval()
    set_scaling_factor(vae, pixels, seed=recipe.seed)
    return vae


@torch.no_grad()
def encode_mean(vae: AutoencoderKL, pixels: np.ndarray, *, batch_size: int = 256, flip: bool = False) -> torch.Tensor:
    """Posterior means (unscaled) of uint8 images ``[N, H, W, 3]``, float32 ``[N, C, h, w]``."""
    out = []
    for start in range(0, len(pixels), batch_size):
        images = to_unit_range(pixels[start:start + batch_size])
        out.append(vae.encode(images.flip(-1) if flip else images).latent_dist.mean)
    return torch.cat(out)


def set_scaling_factor(vae: AutoencoderKL, pixels: np.ndarray, *, sample: int = 2048, seed: int = 0) -> float:
    """Set ``vae.config.scaling_factor`` to 1 / std of the latents of (a sample of) ``pixels``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(pixels), size=min(sample, len(pixels)), replace=False))
    std = float(encode_mean(vae, pixels[rows]).std())
    factor = 1.0 / max(std, 1e-6)
    vae.register_to_config(scaling_factor=factor)
    logger.info("VAE latent std %.4f: scaling_factor %.5f", std, factor)
    return factor
