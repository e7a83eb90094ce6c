"""Text encoder baselines: BERT/RoBERTa (family ``bert``) and the T5 encoder (family ``t5``).

Two families share this module, one constant each: :data:`BERT_FAMILY` and :data:`T5_FAMILY`.

* ``bert``: any encoder checkpoint ``AutoModel`` loads (BERT, RoBERTa, DistilBERT, DeBERTa...),
  e.g. ``bert:google-bert/bert-base-uncased`` or ``bert:FacebookAI/roberta-base``. A masked-LM
  checkpoint loads its encoder (the LM head is not needed). A local folder with its own code
  (``auto_map``) runs it.
* ``t5``: the encoder of a T5 checkpoint (``T5EncoderModel``; a full encoder-decoder checkpoint
  works, its decoder is not loaded), e.g. ``t5:google-t5/t5-base``.

t is fixed at 0: these are baselines without diffusion. Blocks are the encoder's layers
(``encoder.layer`` of BERT/RoBERTa, ``encoder.block`` of T5), block b the hidden state after the
b-th layer (for T5's last block: before its final layer norm). Text goes through the checkpoint's
tokenizer with its special tokens, padded to a fixed length, with the attention mask, and is
mean-pooled over the caption's own tokens (:mod:`._hf_text`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, T5EncoderModel

from difffeat_tune.backbones._hf_text import (
    TextEncoderBackbone,
    family_loader,
    load_text_encoder,
)
from difffeat_tune.backbones._registry import default_source, family

DEFAULT_BERT = default_source("text", "bert")
DEFAULT_T5 = default_source("text", "t5")


def load_bert(source: str = DEFAULT_BERT, *, device: str | torch.device | None = None, tokenizer: str | None = None,
              token_length: int | None = None) -> TextEncoderBackbone:
    """A BERT-style encoder (``AutoModel``) from a hub id or folder.

    Example:
        >>> backbone = load_bert("/models/roberta-base")  # doctest: +SKIP
        >>> backbone.num_blocks, backbone.width  # doctest: +SKIP
        (12, 768)
    """
    return load_text_encoder(source, _encoder_without_pooler, family="bert", example=DEFAULT_BERT,
                             device=device, tokenizer=tokenizer, token_length=token_length)


def _encoder_without_pooler(*args: Any, **kwargs: Any) -> Any:
    """``AutoModel.from_pretrained`` minus the pooler: features are block outputs, never the pooler's,
    and a masked-LM checkpoint has no pooler weights, so transformers would draw them at random on
    each load and the model's fingerprint (the store's key) would change with every load."""
    loaded = AutoModel.from_pretrained(*args, **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return loaded


def load_t5_encoder(source: str = DEFAULT_T5, *, device: str | torch.device | None = None,
                    tokenizer: str | None = None, token_length: int | None = None) -> TextEncoderBackbone:
    """The encoder of a T5 checkpoint (``T5EncoderModel``) from a hub id or folder."""
    return load_text_encoder(source, T5EncoderModel.from_pretrained, family="t5", example=DEFAULT_T5,
                             device=device, tokenizer=tokenizer, token_length=token_length)


#: The families' loaders (``FAMILY_TABLE``).
load_bert_family = family_loader(load_bert)
load_t5_family = family_loader(load_t5_encoder)
BERT_FAMILY = family("text", "bert")

T5_FAMILY = family("text", "t5")
