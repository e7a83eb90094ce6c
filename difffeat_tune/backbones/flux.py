"""Image backbone: FLUX.1 from diffusers (``FluxTransformer2DModel``).

* **Checkpoint**: a ``FluxPipeline`` folder or hub id (``transformer/``, ``vae/``,
  ``scheduler/``, ``text_encoder/`` (CLIP-L), ``text_encoder_2/`` (T5-XXL), ``tokenizer/``,
  ``tokenizer_2/``), e.g. ``black-forest-labs/FLUX.1-dev`` (the default, gated: accept its
  licence on the hub) or ``black-forest-labs/FLUX.1-schnell``.
* **Noising**: rectified flow, ``x_t = (1 - sigma) x0 + sigma eps`` with sigma the scheduler's
  shifted ``t / 1000``. FLUX.1-dev shifts dynamically: ``shift = exp(mu)``, ``mu`` interpolated
  from the number of image tokens at the extraction resolution as the pipeline computes it
  (4096 tokens at 1024 px: ``mu = 1.15``, shift 3.16); schnell has a fixed shift of 1. The
  transformer is told ``sigma`` (the pipeline's ``timestep / 1000``; it multiplies by 1000
  itself). Why shifted: see :mod:`difffeat_tune.backbones._noising`. Seeded Gaussian noise per
  (seed, row id, t) in the unpacked latent; the timestep is per sample, so all requested t
  share one pass.
* **Unconditional**: the pipeline's own ``encode_prompt("")`` (pooled CLIP-L output, T5 states up
  to the pipeline's ``max_sequence_length``, 512), computed once and cached. Guidance-distilled
  checkpoints (dev: ``guidance_embeds``) also get the pipeline's default guidance scale, 3.5.
* **Blocks**: numbered in forward order: the joint blocks ``transformer.transformer_blocks``
  are 1..J, the single blocks ``transformer.single_transformer_blocks`` J+1..J+S (FLUX.1: 19 +
  38 = 57, width 3072). Both kinds return ``(encoder_hidden_states, hidden_states)``: only the
  image tokens are pooled (mean over tokens).
* **Latents**: the pipeline's 16-channel VAE, ``(posterior mean - shift_factor) x
  scaling_factor`` (0.1159 and 0.3611), packed 2 x 2 into 64-channel tokens with their
  (0, row, column) position ids, at 1024 px (the pipeline's default) after resize + centre
  crop, [-1, 1]; sides must be multiples of 16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from diffusers import DiffusionPipeline, FluxPipeline, FluxTransformer2DModel
from torch import nn

from difffeat_tune.backbones._hooks import joint_image_tokens
from difffeat_tune.backbones._latent import LatentDiffusionBackbone, latent_loader
from difffeat_tune.backbones._registry import default_source, family
from difffeat_tune.backbones._noising import FlowNoising, Noising
from difffeat_tune.backbones._pipeline import call_defaults

#: The default FLUX.1 checkpoint on the Hugging Face hub (gated).
DEFAULT_FLUX = default_source("image", "flux")
#: FluxPipeline's ``default_sample_size``: latent side 128, so 1024 px with the 8x VAE.
DEFAULT_LATENT_SIDE = 128


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``: each 2 x 2 patch becomes one token (row-major)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def latent_image_ids(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """Position ids ``[rows * cols, 3]`` of packed tokens: (0, row, column), row-major."""
    grid = torch.zeros(rows, cols, 3, device=device)
    grid[..., 1] = torch.arange(rows, device=device)[:, None]
    grid[..., 2] = torch.arange(cols, device=device)[None, :]
    return grid.reshape(rows * cols, 3)


class FluxBackbone(LatentDiffusionBackbone):
    """Pooled image-token features of a Flux transformer with the empty-prompt conditioning."""

    family = "flux"
    default_source = DEFAULT_FLUX
    pipelines = ("FluxPipeline",)
    denoiser_class = FluxTransformer2DModel
    select = staticmethod(joint_image_tokens)

    @property
    def guidance(self) -> float | None:
        """The pipeline's default guidance scale for guidance-distilled checkpoints (dev: 3.5), else None."""
        if not self.denoiser.config.guidance_embeds:
            return None
        return float(call_defaults(FluxPipeline, ("guidance_scale",))["guidance_scale"])  # type: ignore[arg-type]

    @classmethod
    def default_resolution(cls, denoiser: nn.Module, factor: int) -> int:
        return DEFAULT_LATENT_SIDE * factor

    @classmethod
    def resolution_multiple(cls, denoiser: nn.Module, factor: int) -> int:
        return 2 * factor  # 2 x 2 packing of the latent

    @classmethod
    def make_noising(cls, scheduler_config: Mapping[str, object], denoiser: nn.Module, latent_side: int) -> Noising:
        return FlowNoising(scheduler_config, (latent_side // 2) ** 2, cls.family)

    @staticmethod
    def encode_empty(pipe: DiffusionPipeline, device: torch.device,
                     settings: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
        embeds, pooled, text_ids = pipe.encode_prompt(prompt="", prompt_2="", device=device,
                                                      max_sequence_length=settings["max_sequence_length"])
        return {"prompt_embeds": embeds, "pooled_projections": pooled, "text_ids": text_ids[None]}

    def family_settings(self) -> dict[str, object]:
        return {"guidance": self.guidance}

    def block_modules(self) -> Sequence[nn.Module]:
        return [*self.denoiser.transformer_blocks, *self.denoiser.single_transformer_blocks]

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> object:
        n, _, h, w = latents.shape
        guidance = None if self.guidance is None else torch.full((n,), self.guidance, device=self.device)
        return self.denoiser(pack_latents(latents), encoder_hidden_states=self.expand("prompt_embeds", n),
                             pooled_projections=self.expand("pooled_projections", n),
                             timestep=timesteps / self.num_timesteps, img_ids=latent_image_ids(h // 2, w // 2, self.device),
                             txt_ids=self.conditioning["text_ids"][0], guidance=guidance)


#: ``load_flux(source=None, *, vae, device, noise_seed, resolution)``: see :meth:`LatentDiffusionBackbone.load`.
load_flux = FluxBackbone.load


#: The family's loader (``FAMILY_TABLE``).
load_family = latent_loader(FluxBackbone)
FAMILY = family("image", "flux")
