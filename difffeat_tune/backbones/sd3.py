"""Image backbone: Stable Diffusion 3 / 3.5 from diffusers (``SD3Transformer2DModel``).

* **Checkpoint**: a ``StableDiffusion3Pipeline`` folder or hub id (``transformer/``, ``vae/``,
  ``scheduler/``, ``text_encoder/`` and ``text_encoder_2/`` (CLIP-L, CLIP-G), ``text_encoder_3/``
  (T5-XXL) and their tokenizers), e.g. ``stabilityai/stable-diffusion-3-medium-diffusers`` (the
  default, gated: accept its licence on the hub) or ``stabilityai/stable-diffusion-3.5-medium``.
* **Noising**: rectified flow, ``x_t = (1 - sigma) x0 + sigma eps`` with sigma the scheduler's
  shifted ``t / 1000`` (``shift`` 3.0: ``sigma = 3u / (1 + 2u)``), and the transformer told
  ``1000 * sigma``, as ``FlowMatchEulerDiscreteScheduler`` maps its training steps; why shifted:
  see :mod:`difffeat_tune.backbones._noising`. Seeded Gaussian noise per (seed, row id, t); the
  timestep is per sample, so all requested t share one pass.
* **Unconditional**: the pipeline's own ``encode_prompt("")`` (penultimate CLIP-L and CLIP-G
  states, T5 states up to the pipeline's ``max_sequence_length``, 256, and the pooled CLIP
  projections), computed once and cached.
* **Blocks**: ``transformer.transformer_blocks`` in forward order (24 joint blocks of width 1536
  for SD3-medium, 38 of 2432 for 3.5-large). A joint block returns
  ``(encoder_hidden_states, hidden_states)``: only the image tokens, ``hidden_states``, are
  pooled (mean over tokens); the text stream is not.
* **Latents**: the pipeline's 16-channel VAE, ``(posterior mean - shift_factor) x
  scaling_factor`` (0.0609 and 1.5305), at the model's resolution (``sample_size`` x 8 = 1024 px)
  after resize + centre crop, [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers import DiffusionPipeline, SD3Transformer2DModel
from torch import nn

from difffeat_tune.backbones._hooks import joint_image_tokens
from difffeat_tune.backbones._latent import LatentDiffusionBackbone, latent_loader
from difffeat_tune.backbones._registry import default_source, family
from difffeat_tune.backbones._noising import FlowNoising, Noising

#: The default SD3 checkpoint on the Hugging Face hub (gated).
DEFAULT_SD3 = default_source("image", "sd3")


class SD3Backbone(LatentDiffusionBackbone):
    """Pooled image-token features of an SD3 transformer with the empty-prompt conditioning."""

    family = "sd3"
    default_source = DEFAULT_SD3
    pipelines = ("StableDiffusion3Pipeline",)
    denoiser_class = SD3Transformer2DModel
    select = staticmethod(joint_image_tokens)

    @classmethod
    def make_noising(cls, scheduler_config: Mapping[str, object], denoiser: nn.Module, latent_side: int) -> Noising:
        tokens = (latent_side // int(denoiser.config.patch_size)) ** 2
        return FlowNoising(scheduler_config, tokens, cls.family)

    @staticmethod
    def encode_empty(pipe: DiffusionPipeline, device: torch.device,
                     settings: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt="", prompt_2="", prompt_3="", device=device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=settings["max_sequence_length"])
        return {"prompt_embeds": embeds, "pooled_projections": pooled}

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> object:
        n = latents.shape[0]
        return self.denoiser(latents, encoder_hidden_states=self.expand("prompt_embeds", n),
                             pooled_projections=self.expand("pooled_projections", n), timestep=timesteps)


#: ``load_sd3(source=None, *, vae, device, noise_seed, resolution)``: see :meth:`LatentDiffusionBackbone.load`.
load_sd3 = SD3Backbone.load


#: The family's loader (``FAMILY_TABLE``).
load_family = latent_loader(SD3Backbone)
FAMILY = family("image", "sd3")
