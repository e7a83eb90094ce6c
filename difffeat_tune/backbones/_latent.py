"""What every diffusers text-to-image backbone shares: loading, latents, noising, conditioning, hooks.

A family (PixArt, SD3, Flux, Stable Diffusion U-Net) subclasses :class:`LatentDiffusionBackbone`
and says only what differs: the pipeline classes it reads and its denoiser's class and subfolder
(class attributes), its blocks in forward order (:meth:`block_modules`), how to pick a block's
image tokens (:attr:`select`), how its pipeline encodes the empty prompt (:meth:`encode_empty`),
and one forward pass of its denoiser with that conditioning (:meth:`forward`). Loading
(:meth:`LatentDiffusionBackbone.load`: pipeline folder, denoiser, VAE, scheduler config,
resolution, cached conditioning) is the same for all. Images are preprocessed and
encoded once per batch (:mod:`~difffeat_tune.backbones._image`), noised per timestep by the
family's :mod:`~difffeat_tune.backbones._noising`, and all requested timesteps share one pass
(every family's denoiser embeds a timestep per sample), stopped after the deepest requested
block by :func:`~difffeat_tune.backbones._hooks.capture_blocks`. Block outputs are mean-pooled
over the image tokens on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, TypeVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from torch import nn

from difffeat_tune._device import autocast_dtype, resolve_device
from difffeat_tune.backbones._base import Backbone, Encoded, InputStage, seeded_normal, weights_digest
from difffeat_tune.backbones._conditioning import Conditioning, pipeline_conditioning
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones._hooks import Select, capture_blocks, first_output, mean_pool
from difffeat_tune.backbones._image import PREPROCESS, VAE_LATENT, pixel_stage, vae_factor, vae_latents
from difffeat_tune.backbones._noising import DDPMNoising, Noising
from difffeat_tune.backbones._pipeline import (
    PipelineFolder,
    call_defaults,
    check_resolution,
    load_component,
    load_vae,
    pipeline_class,
    read_scheduler_config,
    resolve_pipeline,
)

logger = logging.getLogger(__name__)

B = TypeVar("B", bound="LatentDiffusionBackbone")


class LatentDiffusionBackbone(Backbone):
    """Pooled block features of a diffusers latent-diffusion denoiser at timesteps t in [0, 1000).

    Args:
        denoiser: the transformer or U-Net (set to eval mode here).
        vae: the pipeline's autoencoder.
        noising: how t maps to a noisy latent and to the denoiser's timestep value.
        conditioning: the cached empty-prompt conditioning (batch dimension 1).
        name: how the backbone was named (hub id or folder).
        resolution: image side in pixels.
        device: where to run; ``None`` picks CUDA when present.
        noise_seed: seed of the per-row Gaussian noise.
    """

    modality = "image"
    #: The family's name (``family:source``).
    family: ClassVar[str]
    #: The hub id loaded when no source is given.
    default_source: ClassVar[str]
    #: Pipeline classes (``_class_name`` of ``model_index.json``) this family reads.
    pipelines: ClassVar[tuple[str, ...]]
    #: The denoiser's diffusers class and the pipeline subfolder that holds it.
    denoiser_class: ClassVar[type]
    denoiser_folder: ClassVar[str] = "transformer"
    #: Pipeline components never loaded (e.g. a safety checker), passed as ``None``.
    skip_components: ClassVar[Mapping[str, object]] = {}
    #: Picks a block's image tokens ``[B, N, D]`` from its output.
    select: Select = staticmethod(first_output)  # type: ignore[assignment]

    def __init__(self, denoiser: nn.Module, vae: AutoencoderKL, noising: Noising, conditioning: Conditioning, *,
                 name: str, resolution: int, device: str | torch.device | None = None,
                 noise_seed: int = 0) -> None:
        self.device = resolve_device(device)
        self.denoiser = denoiser.eval().to(self.device)
        self.vae = vae.eval().to(self.device)
        self.noising = noising
        self.conditioning_key = conditioning.key
        self.conditioning = {k: v.to(self.device) for k, v in conditioning.tensors.items()}
        self.name = name
        self.resolution = resolution
        self.noise_seed = noise_seed
        self.num_timesteps = noising.num_timesteps
        self.blocks = tuple(self.block_modules())
        self.num_blocks = len(self.blocks)
        self.width = max(self.block_widths().values())
        self._fingerprint: str | None = None

    @classmethod
    def load(cls: type[B], source: str | None = None, *, vae: str | None = None, device: str | torch.device | None = None,
             noise_seed: int = 0, resolution: int | None = None) -> B:
        """Load the family's backbone from a hub id or a local pipeline folder.

        Args:
            source: hub id or a folder as ``save_pretrained`` writes it (``model_index.json``,
                the denoiser's folder, ``vae/``, ``scheduler/``, the text encoders and tokenizers);
                ``None``: :attr:`default_source`.
            vae: a separate VAE (hub id or folder) instead of the pipeline's.
            device: where to run; ``None`` picks CUDA when present.
            noise_seed: seed of the per-row Gaussian noise.
            resolution: image side in pixels (``None``: the model's own).

        Raises:
            BackboneError: the checkpoint is missing or incomplete (the message says what to
                download and where to put it), or is not of this family.
        """
        source = cls.default_source if source is None else str(source)
        required = (cls.denoiser_folder, "scheduler", *(() if vae else ("vae",)))
        folder = resolve_pipeline(source, family=cls.family, pipelines=cls.pipelines, required=required,
                                  default_source=cls.default_source)
        denoiser = load_component(cls.denoiser_class, folder, cls.denoiser_folder, cls.family)
        autoencoder = load_vae(folder, vae, cls.family)
        factor = vae_factor(autoencoder)
        side = check_resolution(cls.default_resolution(denoiser, factor) if resolution is None else resolution,
                                cls.resolution_multiple(denoiser, factor), cls.family)
        noising = cls.make_noising(read_scheduler_config(folder), denoiser, side // factor)
        run_on = resolve_device(device)
        settings = cls.encoding_settings(folder)
        conditioning = pipeline_conditioning(
            folder, cls.family,
            encode=lambda pipe, dev: cls.encode_empty(pipe, dev, settings),
            settings=settings,
            components={cls.denoiser_folder: denoiser, "vae": autoencoder, **cls.skip_components},
            device=run_on,
        )
        backbone = cls(denoiser, autoencoder, noising, conditioning, name=source, resolution=side,
                       device=run_on, noise_seed=noise_seed)
        logger.info("loaded %s %s: %d blocks at %d px", cls.family, source, backbone.num_blocks, side)
        return backbone

    @classmethod
    def default_resolution(cls, denoiser: nn.Module, factor: int) -> int:
        """The model's own image side: its latent ``sample_size`` times the VAE factor."""
        return int(denoiser.config.sample_size) * factor

    @classmethod
    def resolution_multiple(cls, denoiser: nn.Module, factor: int) -> int:
        """Image sides must be multiples of this (latent cells per patch x VAE factor)."""
        return int(denoiser.config.patch_size) * factor

    @classmethod
    def make_noising(cls, scheduler_config: Mapping[str, object], denoiser: nn.Module, latent_side: int) -> Noising:
        """How t noises a latent (DDPM by default; flow-matching families override this)."""
        return DDPMNoising(scheduler_config, cls.family)

    @classmethod
    def encoding_settings(cls, folder: PipelineFolder) -> dict[str, object]:
        """Settings of the empty-prompt encoding (part of the cache key): the pipeline's default
        ``max_sequence_length`` where it has one (PixArt-alpha 120, PixArt-sigma 300, SD3 256,
        Flux 512; CLIP-only pipelines pad to the tokenizer's 77)."""
        return call_defaults(pipeline_class(folder), ("max_sequence_length",))

    @staticmethod
    @abstractmethod
    def encode_empty(pipe: DiffusionPipeline, device: torch.device,
                     settings: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
        """The pipeline's own ``encode_prompt`` of the empty prompt, as named tensors (batch 1)."""

    def block_modules(self) -> Sequence[nn.Module]:
        """The denoiser's blocks in forward order: block b is ``block_modules()[b - 1]``
        (by default the transformer's ``transformer_blocks``)."""
        return list(self.denoiser.transformer_blocks)

    @abstractmethod
    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> object:
        """One pass of the denoiser on noisy ``latents`` ``[B, C, h, w]`` with per-row timestep values."""

    def block_widths(self) -> dict[int, int]:
        """Transformer blocks all have the model width, heads x head dimension (U-Nets override this)."""
        config = self.denoiser.config
        width = int(config.num_attention_heads) * int(config.attention_head_dim)
        return {b: width for b in range(1, len(self.blocks) + 1)}

    def family_settings(self) -> dict[str, object]:
        """Settings of the family that change features, beyond the shared ones."""
        return {}

    def settings(self) -> dict[str, object]:
        return {
            "noise_seed": self.noise_seed,
            "noising": self.noising.settings(),
            "pooling": "mean-image-tokens",
            "resolution": self.resolution,
            "preprocess": PREPROCESS,
            "vae_latent": VAE_LATENT,
            "conditioning": "empty-prompt",
            **self.family_settings(),
        }

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            for config in (self.denoiser.config, self.vae.config, self.noising.config):
                h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
            h.update(weights_digest(self.denoiser).encode())
            h.update(weights_digest(self.vae).encode())
            h.update(self.conditioning_key.encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def input_stage(self) -> InputStage:
        return pixel_stage(self.resolution)

    def to_device(self, prepared: Encoded, *, non_blocking: bool = False) -> Encoded:
        pixels = prepared.tensors["pixels"].to(self.device, non_blocking=non_blocking)
        return Encoded(ids=prepared.ids, tensors={"latents": vae_latents(self.vae, pixels)})

    def noisy_latents(self, batch: Encoded, t: int) -> torch.Tensor:
        """The batch's latents at timestep ``t`` (float32), with noise seeded per (seed, row id, t)."""
        x0 = batch.tensors["latents"]
        eps = seeded_normal(batch.ids, t, x0.shape[1:], self.noise_seed, self.device)
        return self.noising.noisy(x0, eps, t)

    def expand(self, name: str, n: int) -> torch.Tensor:
        """Conditioning tensor ``name`` repeated (as a view) for a batch of ``n``."""
        value = self.conditioning[name]
        return value.expand(n, *value.shape[1:])

    def features(
        self, batch: Encoded, timesteps: Sequence[int], blocks: Sequence[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        self.validate(timesteps, blocks)
        n = len(batch)
        if n == 0:  # the transformer's attention cannot reshape a batch of no rows
            return self.no_rows(*self.request(timesteps, blocks))
        hidden = torch.cat([self.noisy_latents(batch, t) for t in timesteps])
        steps = torch.cat([torch.full((n,), self.noising.model_timestep(t), device=self.device) for t in timesteps])
        amp = autocast_dtype(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            with capture_blocks(self.blocks, blocks, mean_pool, select=self.select) as capture:
                pooled = capture.run(lambda: self.forward(hidden, steps))
        return {t: {b: pooled[b][i * n : (i + 1) * n] for b in blocks} for i, t in enumerate(timesteps)}


def latent_loader(cls: type[LatentDiffusionBackbone]) -> Callable[[str, LoadOptions], Backbone]:
    """The family loader (``FAMILY_TABLE``) of a diffusers image backbone class."""

    def load(source: str, options: LoadOptions) -> Backbone:
        return cls.load(source, vae=options.vae, device=options.device, noise_seed=options.noise_seed,
                        resolution=options.resolution)

    return load
