"""DINOv2 encoder baseline (family ``dinov2``, image), e.g. ``dinov2:facebook/dinov2-base``.

Loaded with ``AutoModel`` (``Dinov2Model``, or ``Dinov2WithRegistersModel`` for the checkpoints
with register tokens) from a hub id or local folder, images through the checkpoint's own image
processor (resize 256, centre crop 224 for the released models). t is fixed at 0: a baseline
without diffusion. Blocks are the encoder's layers (``encoder.layer``; small/base 12, large 24,
giant 40), block b the hidden state after the b-th layer (before DINOv2's final layer norm).
Pooling: the mean of the patch tokens, leaving out the class token and any register tokens,
or by choice the class token (:mod:`._hf_vision`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel

from difffeat_tune.backbones._registry import default_source, family
from difffeat_tune.backbones._hf_vision import (
    DEFAULT_POOLING,
    VisionEncoderBackbone,
    VisionPooling,
    family_loader,
    load_vision_encoder,
)

FAMILY_NAME = "dinov2"
DEFAULT_DINOV2 = default_source("image", "dinov2")


def load_dinov2(source: str = DEFAULT_DINOV2, *, device: str | torch.device | None = None,
                pooling: VisionPooling = DEFAULT_POOLING) -> VisionEncoderBackbone:
    """A DINOv2 model from a hub id or a folder with ``preprocessor_config.json``."""
    return load_vision_encoder(source, AutoModel.from_pretrained, family=FAMILY_NAME, example=DEFAULT_DINOV2,
                               prefix_tokens=prefix_tokens, device=device, pooling=pooling)


def prefix_tokens(config: Any) -> int:
    """The class token plus the register tokens (0 for the original DINOv2)."""
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


#: The family's loader (``FAMILY_TABLE``).
load_family = family_loader(load_dinov2)
FAMILY = family("image", FAMILY_NAME)
