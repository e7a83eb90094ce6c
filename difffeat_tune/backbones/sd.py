"""Image backbone: the Stable Diffusion 1.x / 2.x U-Net from diffusers (``UNet2DConditionModel``).

* **Checkpoint**: a ``StableDiffusionPipeline`` folder or hub id (``unet/``, ``vae/``,
  ``scheduler/``, ``text_encoder/`` (CLIP), ``tokenizer/``; the safety checker is never loaded),
  e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (the default) or
  ``stabilityai/stable-diffusion-2-1`` (as DIFT uses).
* **Noising**: DDPM, as the model was trained: ``DDPMScheduler.from_config`` of the pipeline's
  scheduler config (scaled-linear betas 0.00085 .. 0.012, T = 1000; zero-SNR rescaling where the
  config asks for it) ``add_noise`` in float32, Gaussian noise seeded per (seed, row id, t); the
  U-Net is told the integer t (per sample, so all requested t share one pass). The input is the
  same for epsilon- and v-prediction checkpoints (SD 2.x 768).
* **Unconditional**: the pipeline's own ``encode_prompt("")``: CLIP states of the empty prompt
  padded to 77 tokens, computed once and cached.
* **Blocks**: the U-Net's stages in forward order: b = 1..D are ``unet.down_blocks`` (output after
  the block's downsampler, where it has one), b = D+1 is ``unet.mid_block``, then the
  ``unet.up_blocks`` (output after the block's upsampler, where it has one). SD 1.x/2.x: 4 + 1 + 4
  = 9 blocks. **Widths differ per block** (:meth:`StableDiffusionBackbone.block_widths`; SD:
  320, 640, 1280, 1280, 1280, 1280, 1280, 640, 320; ``width`` is the widest) and so do the
  spatial sizes (64 px latent: 32, 16, 8, 8, 8, 16, 32, 64, 64 cells per side at 512 px). A
  block's feature map ``[B, C, H, W]`` is mean-pooled over its H x W positions. DIFT's
  ``up_ft_index = 1`` is b = 7 here.
* **Latents**: the pipeline's VAE (scaling 0.18215), posterior mean, at the model's resolution
  (``sample_size`` x 8: 512 px for SD 1.x, 768 for SD 2.x 768) after resize + centre crop, [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from torch import nn

from difffeat_tune.backbones._hooks import first_output
from difffeat_tune.backbones._latent import LatentDiffusionBackbone, latent_loader
from difffeat_tune.backbones._registry import default_source, family

#: The default Stable Diffusion checkpoint on the Hugging Face hub.
DEFAULT_SD = default_source("image", "sd")


def spatial_tokens(output: object) -> torch.Tensor:
    """A U-Net stage's feature map ``[B, C, H, W]`` as tokens ``[B, H*W, C]`` (down blocks return
    ``(feature map, skip connections)``: the map is the first)."""
    return first_output(output).flatten(2).transpose(1, 2)


class StableDiffusionBackbone(LatentDiffusionBackbone):
    """Pooled stage features of a Stable Diffusion 1.x/2.x U-Net with the empty-prompt conditioning."""

    family = "sd"
    default_source = DEFAULT_SD
    pipelines = ("StableDiffusionPipeline",)
    denoiser_class = UNet2DConditionModel
    denoiser_folder = "unet"
    skip_components = {"safety_checker": None, "feature_extractor": None, "image_encoder": None,
                       "requires_safety_checker": False}
    select = staticmethod(spatial_tokens)

    @classmethod
    def resolution_multiple(cls, denoiser: nn.Module, factor: int) -> int:
        # Every down block but the last halves the map; the up path must meet the skips exactly.
        return factor * 2 ** (len(denoiser.config.block_out_channels) - 1)

    @staticmethod
    def encode_empty(pipe: DiffusionPipeline, device: torch.device,
                     settings: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
        embeds, _ = pipe.encode_prompt("", device, 1, False)
        return {"prompt_embeds": embeds}

    def block_modules(self) -> Sequence[nn.Module]:
        mid = [] if self.denoiser.mid_block is None else [self.denoiser.mid_block]
        return [*self.denoiser.down_blocks, *mid, *self.denoiser.up_blocks]

    def block_widths(self) -> dict[int, int]:
        """Channels of each stage's output: the down path's, the bottleneck's, then the up path's."""
        channels = [int(c) for c in self.denoiser.config.block_out_channels]
        mid = [] if self.denoiser.mid_block is None else [channels[-1]]
        return dict(enumerate([*channels, *mid, *reversed(channels)], start=1))

    def block_names(self) -> dict[int, str]:
        """``{b: module path}``, e.g. ``{1: "down_blocks.0", ..., 5: "mid_block", 6: "up_blocks.0", ...}``."""
        names = {id(module): name for name, module in self.denoiser.named_modules()}
        return {b: names[id(module)] for b, module in enumerate(self.blocks, start=1)}

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> object:
        return self.denoiser(latents, timesteps, encoder_hidden_states=self.expand("prompt_embeds", latents.shape[0]))


#: ``load_sd(source=None, *, vae, device, noise_seed, resolution)``: see :meth:`LatentDiffusionBackbone.load`.
load_sd = StableDiffusionBackbone.load


#: The family's loader (``FAMILY_TABLE``).
load_family = latent_loader(StableDiffusionBackbone)
FAMILY = family("image", "sd")
