"""Vision encoder baselines from transformers (CLIP and SigLIP vision towers, DINOv2): t fixed at 0.

Images go through the checkpoint's own image processor (``preprocessor_config.json``: resize,
crop, normalisation), always with its PIL backend, so features do not change with whether
torchvision is installed. Blocks are the encoder layers (see :func:`~._hf_load.find_blocks`);
block b is the token sequence after the b-th layer.

Pooling is a documented choice, recorded in :meth:`VisionEncoderBackbone.settings`:

* ``"mean-patch-tokens"`` (default): mean over the patch tokens only. The tokens a tower puts
  before its patches (CLIP's and DINOv2's class token, DINOv2's register tokens) are left out,
  so every family pools the same thing, as DiT's features average its patch tokens.
* ``"cls"``: the class token (towers that have one: CLIP, DINOv2; SigLIP has none).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoImageProcessor

from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune.backbones._base import Encoded, InputStage
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones._hf_base import TransformersBackbone, load_backbone
from difffeat_tune.backbones._hf_load import Checkpoint, precision_name
from difffeat_tune.backbones._hooks import Pool, capture_blocks

VisionPooling = Literal["mean-patch-tokens", "cls"]
POOLINGS: tuple[VisionPooling, ...] = ("mean-patch-tokens", "cls")
DEFAULT_POOLING: VisionPooling = "mean-patch-tokens"
#: Version of the image-feature computation of these families, part of every extraction key.
FEATURE_VERSION = 1
#: The image processor's backend (transformers would pick torchvision when installed).
PROCESSOR_BACKEND = "pil"


class VisionEncoderBackbone(TransformersBackbone):
    """Pooled block features of a transformers vision tower, at t = 0 only.

    Args:
        model: the vision model (on ``device``, eval mode); its config names ``patch_size``.
        processor: its image processor.
        family: family name (recorded in settings).
        name: display name.
        device: where features are computed and returned.
        prefix_tokens: how many tokens come before the patch tokens (CLIP 1, SigLIP 0, DINOv2
            1 + its register tokens).
        pooling: ``"mean-patch-tokens"`` or ``"cls"`` (see the module docstring).

    Raises:
        ConfigError: unknown pooling, or ``"cls"`` for a tower without a class token.
        BackboneError: the config names no patch size or width.
    """

    modality = "image"
    clean_only = True

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        family: str,
        name: str,
        device: torch.device,
        prefix_tokens: int,
        pooling: VisionPooling = DEFAULT_POOLING,
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown image pooling {pooling!r}", f"choose one of {', '.join(POOLINGS)}")
        if pooling == "cls" and prefix_tokens < 1:
            raise ConfigError(f"{name} has no class token to pool", f"use pooling {DEFAULT_POOLING!r}")
        patch = getattr(model.config, "patch_size", None)
        if not isinstance(patch, int) or patch < 1:
            raise BackboneError(f"{name}: its config names no patch size", "use a ViT-style vision checkpoint")
        super().__init__(model, family=family, name=name, device=device)
        self.processor = processor
        self.patch_size = patch
        self.prefix_tokens = prefix_tokens
        self.pooling: VisionPooling = pooling
        self._processor_hash = processor_digest(processor)

    def settings(self) -> dict[str, object]:
        """Every extraction setting that changes the features."""
        return {
            "family": self.family,
            "timestep": "fixed at 0 (encoder baseline)",
            "pooling": self.pooling,
            "prefix_tokens": self.prefix_tokens,
            "image_processor": self._processor_hash,
            "precision": precision_name(self.dtype),
            "feature_version": FEATURE_VERSION,
        }

    def input_stage(self) -> InputStage:
        """Images through the image processor: ``{"pixels": [B, 3, H, W]}`` (on CPU)."""
        return InputStage("image", partial(_processed_batch, self.processor))

    def features(
        self, batch: Encoded, timesteps: Sequence[int], blocks: Sequence[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Pooled features ``{0: {b: float32 [B, width]}}``: one pass, stopped after the deepest block.

        Raises:
            BackboneError: a timestep other than 0, a block out of range, or a batch not
                encoded by this backbone.
        """
        ts, wanted = self.request(timesteps, blocks)
        pixels = batch.tensors.get("pixels")
        if pixels is None or pixels.dim() != 4 or pixels.shape[0] != len(batch.ids):
            raise BackboneError("batch lacks pixels [B, 3, H, W]: it was not encoded by an image encoder",
                                f"prepare batches with {type(self).__name__}.encode")
        if len(batch) == 0:
            return self.no_rows(ts, wanted)
        patches = (pixels.shape[-2] // self.patch_size) * (pixels.shape[-1] // self.patch_size)
        with torch.inference_mode():
            with capture_blocks(self.blocks, wanted, self._pool(patches)) as capture:
                pooled = capture.run(lambda: self.model(pixel_values=pixels.to(self.device, self.dtype)))
        return {t: {b: pooled[b].float().clone() for b in wanted} for t in ts}

    def _pool(self, patches: int) -> Pool:
        expected = self.prefix_tokens + patches

        def pool(tokens: torch.Tensor) -> torch.Tensor:
            if tokens.shape[1] != expected:
                raise BackboneError(
                    f"{self.name} returned {tokens.shape[1]} tokens, expected {self.prefix_tokens} before "
                    f"{patches} patch tokens",
                    "the model's prefix tokens do not match its family; use a checkpoint of this family",
                )
            if self.pooling == "cls":
                return tokens[:, 0].float()
            return tokens[:, self.prefix_tokens :].float().mean(dim=1)

        return pool


def load_vision_encoder(
    source: str,
    loader: Callable[..., Any],
    *,
    family: str,
    example: str,
    prefix_tokens: int | Callable[[Any], int],
    device: str | torch.device | None = None,
    pooling: VisionPooling = DEFAULT_POOLING,
) -> VisionEncoderBackbone:
    """Load a vision encoder baseline: the model with ``loader`` and the folder's image processor.

    Args:
        source: hub id or local folder.
        loader: e.g. ``CLIPVisionModel.from_pretrained`` or ``AutoModel.from_pretrained``.
        family: family name.
        example: hub id named in download hints.
        prefix_tokens: the number of tokens before the patches, or a function of the model's
            config that gives it.
        device: ``None``/``"auto"`` (CUDA when present), or a device.
        pooling: see :class:`VisionEncoderBackbone`.

    Raises:
        BackboneError: the checkpoint or image processor is missing or does not fit.
        ConfigError: an option or the device is invalid.
    """
    what = f"{family} vision model"

    def build(model: nn.Module, checkpoint: Checkpoint, resolved: torch.device) -> VisionEncoderBackbone:
        prefix = prefix_tokens if isinstance(prefix_tokens, int) else prefix_tokens(model.config)
        return VisionEncoderBackbone(model, load_image_processor(checkpoint, what), family=family,
                                     name=f"{family}:{source}", device=resolved, prefix_tokens=prefix, pooling=pooling)

    return load_backbone(source, loader, build, family=family, example=example, what=what, device=device)


def family_loader(load: Callable[..., VisionEncoderBackbone]) -> Callable[[str, LoadOptions], VisionEncoderBackbone]:
    """``BackboneFamily.load`` for a vision encoder: ``load(source, device=)``."""

    def load_with_options(source: str, options: LoadOptions) -> VisionEncoderBackbone:
        return load(source, device=options.device)

    return load_with_options


def _processed_batch(processor: Any, images: list[Any], ids: tuple[str, ...], split_name: str
                     ) -> dict[str, torch.Tensor]:
    """``{"pixels": [B, 3, H, W]}`` of a batch's images through ``processor``."""
    if not images:
        return {"pixels": torch.zeros((0, 3, 1, 1))}
    return {"pixels": processor(images=images, return_tensors="pt")["pixel_values"]}


def load_image_processor(checkpoint: Checkpoint, what: str) -> Any:
    """The checkpoint's own image processor (``preprocessor_config.json``), PIL backend.

    Raises:
        BackboneError: the checkpoint has no readable image processor.
    """
    try:
        return AutoImageProcessor.from_pretrained(checkpoint.location, backend=PROCESSOR_BACKEND,
                                                  trust_remote_code=checkpoint.trusted)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackboneError(
            f"cannot load the image processor of {what} from {checkpoint.source!r}: {exc}",
            "the folder needs the checkpoint's preprocessor_config.json; " + checkpoint.hint(),
        ) from exc


def processor_digest(processor: Any) -> str:
    """A hash of an image processor's class and configuration (size, crop, mean, std, ...)."""
    raw = processor.to_dict() if hasattr(processor, "to_dict") else vars(processor)
    payload = {"class": type(processor).__name__, "config": {k: v for k, v in raw.items() if not k.startswith("_")}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
