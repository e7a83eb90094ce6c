"""CLIP and SigLIP encoder baselines: vision towers (image families) and text towers (text families).

Four families share this module, one constant each: :data:`CLIP_IMAGE_FAMILY` (``clip``, image),
:data:`CLIP_TEXT_FAMILY` (``clip``, text), :data:`SIGLIP_IMAGE_FAMILY` (``siglip``, image) and
:data:`SIGLIP_TEXT_FAMILY` (``siglip``, text).

One checkpoint (``CLIPModel`` / ``SiglipModel``, e.g. ``openai/clip-vit-large-patch14``) holds
both towers: the image family reads its vision tower (``CLIPVisionModel`` / ``SiglipVisionModel``),
the text family its text tower (``CLIPTextModel`` / ``SiglipTextModel``); a checkpoint of one
tower alone works too. t is fixed at 0: these are baselines without diffusion. Blocks are the
tower's encoder layers (``encoder.layers``), block b the hidden state after the b-th layer
(before the tower's final layer norm).

* Images: the checkpoint's own image processor; pooling is the mean of the patch tokens (CLIP's
  class token left out; SigLIP has none) or, by choice, CLIP's class token (:mod:`._hf_vision`).
* Text: the checkpoint's tokenizer, padded to a fixed length and mean-pooled over the caption's
  own tokens (:mod:`._hf_text`). CLIP's text tower gets the attention mask (at most 77 tokens).
  SigLIP's was trained on text padded to 64 tokens without a mask, so it gets none, and its
  default length is its 64 positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPVisionModel, SiglipTextModel, SiglipVisionModel

from difffeat_tune.backbones import _hf_text, _hf_vision
from difffeat_tune.backbones._hf_text import TextEncoderBackbone, load_text_encoder
from difffeat_tune.backbones._registry import default_source, family
from difffeat_tune.backbones._hf_vision import DEFAULT_POOLING, VisionEncoderBackbone, VisionPooling, load_vision_encoder

DEFAULT_CLIP = default_source("image", "clip")
DEFAULT_SIGLIP = default_source("image", "siglip")


@dataclass(frozen=True)
class TwoTowers:
    """What differs between CLIP and SigLIP checkpoints.

    Attributes:
        name: family name.
        default_source: hub id used when only the family is named.
        vision: ``from_pretrained`` of the vision tower class.
        text: ``from_pretrained`` of the text tower class.
        prefix_tokens: tokens before the patch tokens in the vision tower (class token).
        text_attention_mask: whether the text tower gets the padding mask.
    """

    name: str
    default_source: str
    vision: Callable[..., Any]
    text: Callable[..., Any]
    prefix_tokens: int
    text_attention_mask: bool


CLIP = TwoTowers("clip", DEFAULT_CLIP, CLIPVisionModel.from_pretrained, CLIPTextModel.from_pretrained,
                 prefix_tokens=1, text_attention_mask=True)
SIGLIP = TwoTowers("siglip", DEFAULT_SIGLIP, SiglipVisionModel.from_pretrained, SiglipTextModel.from_pretrained,
                   prefix_tokens=0, text_attention_mask=False)
TOWERS = {towers.name: towers for towers in (CLIP, SIGLIP)}


def load_vision_tower(source: str | None = None, *, towers: TwoTowers = CLIP, device: str | torch.device | None = None,
                      pooling: VisionPooling = DEFAULT_POOLING) -> VisionEncoderBackbone:
    """The vision tower of a CLIP or SigLIP checkpoint (hub id, or folder with ``preprocessor_config.json``).

    Example:
        >>> backbone = load_vision_tower("/models/clip-vit-large-patch14")  # doctest: +SKIP
        >>> backbone.num_blocks, backbone.width  # doctest: +SKIP
        (24, 1024)
    """
    return load_vision_encoder(source or towers.default_source, towers.vision, family=towers.name,
                               example=towers.default_source, prefix_tokens=towers.prefix_tokens, device=device,
                               pooling=pooling)


def load_text_tower(source: str | None = None, *, towers: TwoTowers = CLIP, device: str | torch.device | None = None,
                    tokenizer: str | None = None, token_length: int | None = None) -> TextEncoderBackbone:
    """The text tower of a CLIP or SigLIP checkpoint (hub id, or folder with its tokenizer files)."""
    return load_text_encoder(source or towers.default_source, towers.text, family=towers.name,
                             example=towers.default_source, device=device, tokenizer=tokenizer,
                             token_length=token_length, use_attention_mask=towers.text_attention_mask)


#: The four families' loaders (``FAMILY_TABLE``).
load_clip_image = _hf_vision.family_loader(partial(load_vision_tower, towers=CLIP))
load_clip_text = _hf_text.family_loader(partial(load_text_tower, towers=CLIP))
load_siglip_image = _hf_vision.family_loader(partial(load_vision_tower, towers=SIGLIP))
load_siglip_text = _hf_text.family_loader(partial(load_text_tower, towers=SIGLIP))
CLIP_IMAGE_FAMILY, CLIP_TEXT_FAMILY = family("image", "clip"), family("text", "clip")
SIGLIP_IMAGE_FAMILY, SIGLIP_TEXT_FAMILY = family("image", "siglip"), family("text", "siglip")
