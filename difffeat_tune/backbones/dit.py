"""Image backbone: a DiT from diffusers (``DiTTransformer2DModel`` + ``AutoencoderKL``).

Images are resized (shorter side) and centre-cropped to the model's resolution, scaled to
[-1, 1], encoded once per batch by the VAE (the posterior mean, so encoding is deterministic;
latent = mean * ``vae.config.scaling_factor``, 0.18215 for the Stable Diffusion VAE), then
noised to each timestep by the scheduler's own ``add_noise`` (the DDPM schedule: linear betas
1e-4 .. 0.02 over T = 1000 for DiT-XL/2) in float32, with seeded Gaussian noise, and run once
through the transformer with the null class label. Block outputs are mean-pooled over the tokens
on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
from PIL import Image

from difffeat_tune._device import autocast_dtype, resolve_device
from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones._base import Backbone, Encoded, InputStage, seeded_normal, weights_digest
from difffeat_tune.backbones._family import LoadOptions, looks_like_path
from difffeat_tune.backbones._hooks import capture_blocks, mean_pool
from difffeat_tune.backbones._image import center_crop_pixels, no_latents, pixel_stage
from difffeat_tune.backbones._registry import default_source, family

logger = logging.getLogger(__name__)

#: The paper's image backbone on the Hugging Face hub (a DiTPipeline folder).
DEFAULT_DIT = default_source("image", "dit")

_SUBFOLDERS = ("transformer", "vae", "scheduler")


class DiTBackbone(Backbone):
    """Pooled block features of a diffusers DiT at DDPM timesteps.

    Args:
        transformer: the DiT (set to eval mode here: train mode drops class labels at random).
        vae: the autoencoder that maps images to the DiT's latent space.
        scheduler: supplies ``alphas_cumprod`` (the DDPM schedule).
        name: how the backbone was named (hub id or folder), for messages and folder names.
        device: where to run; ``None`` picks CUDA when present.
        noise_seed: seed of the per-row Gaussian noise.
    """

    modality = "image"

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        *,
        name: str,
        device: str | torch.device | None = None,
        noise_seed: int = 0,
    ) -> None:
        self.device = resolve_device(device)
        # float32 weights whatever the files hold (the tiny DiT ships float16); CUDA runs under bf16 autocast.
        self.transformer = transformer.eval().float().to(self.device)
        self.vae = vae.eval().float().to(self.device)
        self.name = name
        self.noise_seed = noise_seed
        cfg = transformer.config
        self.num_blocks = len(transformer.transformer_blocks)
        self.width = cfg.num_attention_heads * cfg.attention_head_dim
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.null_class = int(cfg.num_embeds_ada_norm)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(cfg.sample_size) * self.vae_factor
        self.latent_scale = float(vae.config.scaling_factor)
        self.scheduler = scheduler
        self._schedule_config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        self._fingerprint: str | None = None

    def settings(self) -> dict[str, object]:
        return {
            "noise_seed": self.noise_seed,
            "noising": "random-gaussian",
            "pooling": "mean-tokens",
            "resolution": self.resolution,
            "preprocess": "resize-shorter-bicubic+center-crop",
            "vae_latent": "posterior-mean",
            "class_label": self.null_class,
        }

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(dict(self.transformer.config), sort_keys=True, default=str).encode())
            h.update(json.dumps(dict(self.vae.config), sort_keys=True, default=str).encode())
            h.update(json.dumps(self._schedule_config, sort_keys=True, default=str).encode())
            h.update(weights_digest(self.transformer).encode())
            h.update(weights_digest(self.vae).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Resize the shorter side to the model's resolution, centre-crop, scale to [-1, 1] (CHW)."""
        return center_crop_pixels(image, self.resolution)

    def input_stage(self) -> InputStage:
        return pixel_stage(self.resolution)

    def to_device(self, prepared: Encoded, *, non_blocking: bool = False) -> Encoded:
        pixels = prepared.tensors["pixels"].to(self.device, non_blocking=non_blocking)
        if pixels.shape[0] == 0:
            return Encoded(ids=prepared.ids, tensors={"latents": no_latents(self.vae, pixels)})
        with torch.inference_mode():
            latents = self.vae.encode(pixels).latent_dist.mean * self.latent_scale
        return Encoded(ids=prepared.ids, tensors={"latents": latents.float()})

    def noisy_latents(self, batch: Encoded, t: int) -> torch.Tensor:
        """The latents at timestep ``t``: the scheduler's ``add_noise`` with seeded noise, in float32.

        (``add_noise`` casts the schedule to the sample's dtype, so the sample is float32 here
        whatever the model's dtype.)
        """
        x0 = batch.tensors["latents"].float()
        eps = seeded_normal(batch.ids, t, x0.shape[1:], self.noise_seed, self.device)
        steps = torch.full((len(batch),), t, dtype=torch.long, device=self.device)
        return self.scheduler.add_noise(x0, eps, steps)

    def features(
        self, batch: Encoded, timesteps: Sequence[int], blocks: Sequence[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        self.validate(timesteps, blocks)
        n = len(batch)
        if n == 0:  # the transformer's attention cannot reshape a batch of no rows
            return self.no_rows(*self.request(timesteps, blocks))
        # All requested timesteps share one pass: the DiT embeds a timestep per sample.
        noisy = [self.noisy_latents(batch, t) for t in timesteps]
        steps = [torch.full((n,), t, dtype=torch.long, device=self.device) for t in timesteps]
        hidden = torch.cat(noisy)
        step = torch.cat(steps)
        labels = torch.full((len(step),), self.null_class, dtype=torch.long, device=self.device)
        amp = autocast_dtype(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            with capture_blocks(self.transformer.transformer_blocks, blocks, mean_pool) as capture:
                pooled = capture.run(lambda: self.transformer(hidden, timestep=step, class_labels=labels))
        return {t: {b: pooled[b][i * n : (i + 1) * n] for b in blocks} for i, t in enumerate(timesteps)}


def load_dit(
    source: str | Path = DEFAULT_DIT,
    *,
    vae: str | Path | None = None,
    device: str | torch.device | None = None,
    noise_seed: int = 0,
) -> DiTBackbone:
    """Load a DiT image backbone from a hub id or a local DiTPipeline-style folder.

    Args:
        source: hub id (default ``facebook/DiT-XL-2-256``) or a folder with ``transformer/``,
            ``vae/`` and ``scheduler/`` subfolders (as ``DiTPipeline.save_pretrained`` writes).
        vae: optional separate VAE (hub id or folder), e.g. ``stabilityai/sd-vae-ft-ema``.
        device: where to run; ``None`` picks CUDA when present.
        noise_seed: seed of the per-row Gaussian noise.

    Raises:
        BackboneError: a subfolder or weight file is missing, or the weights cannot be fetched.
    """
    source_str = str(source)
    local = Path(source_str).expanduser()
    if local.exists():
        missing = [sub for sub in _SUBFOLDERS if not (local / sub).is_dir()]
        if vae is not None and "vae" in missing:
            missing.remove("vae")
        if missing:
            raise BackboneError(
                f"DiT folder {local} lacks subfolder(s) {', '.join(missing)}",
                "point at a DiTPipeline folder (transformer/, vae/, scheduler/), e.g. the result of "
                f"`huggingface-cli download {DEFAULT_DIT} --local-dir {local}`",
            )
        source_str = str(local)
    elif looks_like_path(source_str):
        raise BackboneError(f"DiT folder {local} does not exist",
                            "pass an existing DiTPipeline folder (transformer/, vae/, scheduler/), e.g. the result of "
                            f"`huggingface-cli download {DEFAULT_DIT} --local-dir DIR`, or a hub id such as {DEFAULT_DIT}")
    try:
        transformer = DiTTransformer2DModel.from_pretrained(source_str, subfolder="transformer")
        autoencoder = (
            AutoencoderKL.from_pretrained(str(vae)) if vae is not None
            else AutoencoderKL.from_pretrained(source_str, subfolder="vae")
        )
        scheduler = DDIMScheduler.from_pretrained(source_str, subfolder="scheduler")
    except (OSError, ValueError, EnvironmentError) as exc:
        raise BackboneError(
            f"cannot load DiT weights from {source_str!r}: {exc}",
            f"on a machine with network run `huggingface-cli download {DEFAULT_DIT} --local-dir DIR`, "
            "copy DIR here and pass it as the image backbone (or fill the Hugging Face cache, HF_HOME)",
        ) from exc
    logger.info("loaded DiT %s: %d blocks", source_str, len(transformer.transformer_blocks))
    return DiTBackbone(transformer, autoencoder, scheduler, name=source_str, device=device, noise_seed=noise_seed)


def build_tiny_dit(folder: Path, *, seed: int = 0, width: int = 64, heads: int = 4, image_size: int = 64) -> Path:
    """Build a small seeded random DiT with DiT-XL/2's depth (28 blocks) and save it as a folder.

    The folder has DiTPipeline's layout (transformer/, vae/, scheduler/), so :func:`load_dit`
    reads it exactly as it reads a real checkpoint. The VAE has 4 levels (downsample 8, like
    Stable Diffusion's), so ``image_size`` 64 gives an 8 x 8 latent, 16 tokens with patch 2.

    Args:
        folder: where to save (created).
        seed: torch seed of the random weights.
        width: transformer width (``heads`` x head dim).
        heads: attention heads.
        image_size: input resolution in pixels (a multiple of 16).
    """
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=4,
        out_channels=8,
        num_layers=28,
        sample_size=image_size // 8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    autoencoder = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    folder = Path(folder)
    transformer.save_pretrained(folder / "transformer")
    autoencoder.save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def load_family(source: str, options: LoadOptions) -> DiTBackbone:
    """The family's loader (``FAMILY_TABLE``): :func:`load_dit` with the load options."""
    return load_dit(source, vae=options.vae, device=options.device, noise_seed=options.noise_seed)


#: The DiT family (``dit:SOURCE``; a plain image backbone id or folder means this family).
FAMILY = family("image", "dit")
