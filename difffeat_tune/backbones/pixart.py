"""Image backbone: PixArt-alpha / PixArt-sigma from diffusers (``PixArtTransformer2DModel``).

* **Checkpoint**: a ``PixArtAlphaPipeline`` or ``PixArtSigmaPipeline`` folder or hub id
  (``transformer/``, ``vae/``, ``scheduler/``, ``text_encoder/`` (T5), ``tokenizer/``), e.g.
  ``PixArt-alpha/PixArt-XL-2-512x512`` (the default), ``PixArt-alpha/PixArt-XL-2-1024-MS``,
  ``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS``.
* **Noising**: DDPM, as the model was trained: ``DDPMScheduler.from_config`` of the pipeline's
  scheduler config (linear betas 1e-4 .. 0.02, T = 1000) ``add_noise`` in float32, Gaussian noise
  seeded per (seed, row id, t); the transformer is told the integer t (per sample, so all
  requested t share one pass).
* **Unconditional**: the pipeline's own ``encode_prompt("")`` with T5 (padded to the pipeline's
  ``max_sequence_length``: 120 for alpha, 300 for sigma) and its attention mask, computed once
  and cached; 1024-px checkpoints (``sample_size`` 128) also get the resolution and aspect-ratio
  micro-conditions the pipeline passes (the crop's side, aspect 1).
* **Blocks**: ``transformer.transformer_blocks`` in order (28 for PixArt-XL-2, width 1152); block
  b is the residual stream after the b-th block, mean-pooled over the image tokens.
* **Latents**: the pipeline's VAE (SD's, scaling 0.18215), posterior mean, at the model's
  resolution (``sample_size`` x 8: 512 or 1024 px) after resize + centre crop, [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers import DiffusionPipeline, PixArtTransformer2DModel

from difffeat_tune.backbones._latent import LatentDiffusionBackbone, latent_loader
from difffeat_tune.backbones._registry import default_source, family

#: The default PixArt checkpoint on the Hugging Face hub.
DEFAULT_PIXART = default_source("image", "pixart")


class PixArtBackbone(LatentDiffusionBackbone):
    """Pooled block features of a PixArt transformer with the empty-prompt T5 conditioning."""

    family = "pixart"
    default_source = DEFAULT_PIXART
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    denoiser_class = PixArtTransformer2DModel

    @staticmethod
    def encode_empty(pipe: DiffusionPipeline, device: torch.device,
                     settings: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
        embeds, mask, _, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, device=device,
                                                max_sequence_length=settings["max_sequence_length"])
        return {"prompt_embeds": embeds, "attention_mask": mask}

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> object:
        n = latents.shape[0]
        added: dict[str, torch.Tensor | None] = {"resolution": None, "aspect_ratio": None}
        if self.denoiser.use_additional_conditions:
            side = float(self.resolution)
            added = {"resolution": torch.tensor([[side, side]], device=self.device).expand(n, 2),
                     "aspect_ratio": torch.ones((n, 1), device=self.device)}
        return self.denoiser(latents, encoder_hidden_states=self.expand("prompt_embeds", n),
                             encoder_attention_mask=self.expand("attention_mask", n), timestep=timesteps,
                             added_cond_kwargs=added)


#: ``load_pixart(source=None, *, vae, device, noise_seed, resolution)``: see :meth:`LatentDiffusionBackbone.load`.
load_pixart = PixArtBackbone.load


#: The family's loader (``FAMILY_TABLE``).
load_family = latent_loader(PixArtBackbone)
FAMILY = family("image", "pixart")
