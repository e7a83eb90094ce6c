"""Text backbones from transformers: tokens once per batch, pooled block features per t.

Shared by the masked-diffusion family (:mod:`~difffeat_tune.backbones.masked_lm`) and the text
encoder baselines (CLIP and SigLIP text towers, BERT/RoBERTa, T5 encoder). Choices, all recorded
in :meth:`TransformersTextBackbone.settings`:

* Tokens: the checkpoint's own tokenizer (or one passed with ``tokenizer``) with its special
  tokens, truncated and padded to a fixed ``token_length`` (default :data:`DEFAULT_TOKEN_LENGTH`,
  or the model's maximum when smaller), so a row's tokens never depend on its batch. Padding
  uses the tokenizer's pad token, or end-of-text when it has none (GPT-2's tokenizer, used by
  MDLM).
* Real tokens: the caption's own tokens, i.e. not padding and not the special tokens the
  tokenizer adds ([CLS], [SEP], </s>, ...).
* Attention mask: passed when the model's ``forward`` takes one, unless the family says
  otherwise (SigLIP's text tower was trained on padded text without a mask, so it gets none;
  MDLM's forward takes none).
* Pooling: mean over the real tokens of the output of block b (``_hooks.masked_mean_pool``).
* Precision: float32 weights on CPU, bfloat16 on CUDA.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from difffeat_tune._errors import BackboneError, ConfigError, DataError
from difffeat_tune.backbones._base import Encoded, InputStage
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones._hf_base import TransformersBackbone, load_backbone
from difffeat_tune.backbones._hf_load import Checkpoint, precision_name, resolve_checkpoint
from difffeat_tune.backbones._hooks import capture_blocks, masked_mean_pool

logger = logging.getLogger(__name__)

#: Token length L when none is given (or the model's maximum, when smaller).
DEFAULT_TOKEN_LENGTH = 64
#: Several timesteps share one forward pass while it holds at most this many rows.
DEFAULT_MAX_PASS_ROWS = 256
POOLING = "mean-real-tokens"
#: Version of the text-feature computation of these families, part of every extraction key.
FEATURE_VERSION = 1
#: Config attributes that cap the token length (absolute position embeddings), in order.
LENGTH_ATTRIBUTES = ("max_position_embeddings", "model_length", "max_sequence_length", "n_positions")
#: Files of which a local tokenizer folder holds at least one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
#: A tokenizer's ``model_max_length`` above this means "no limit" (transformers uses 1e30).
_NO_LIMIT = 1_000_000


class TransformersTextBackbone(TransformersBackbone):
    """Pooled block features of a transformers text model; subclasses say what t does to the tokens.

    Args:
        model: the model (on ``device``, eval mode).
        tokenizer: its tokenizer (a pad token is set to end-of-text when it has none).
        family: the family name (recorded in settings).
        name: display name.
        device: where features are computed and returned.
        token_length: fixed length L in tokens (``None``: :data:`DEFAULT_TOKEN_LENGTH`, or the
            model's maximum when smaller).
        use_attention_mask: pass the padding mask to the model (``None``: when its ``forward``
            takes ``attention_mask``).
        max_pass_rows: rows per forward pass when timesteps share a pass.

    Raises:
        ConfigError: ``token_length`` is not a positive integer, exceeds the model's maximum, or
            leaves no room besides the special tokens.
        BackboneError: the tokenizer does not fit the model.
    """

    modality = "text"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        family: str,
        name: str,
        device: torch.device,
        token_length: int | None = None,
        use_attention_mask: bool | None = None,
        max_pass_rows: int = DEFAULT_MAX_PASS_ROWS,
    ) -> None:
        if not _positive_int(max_pass_rows):
            raise ConfigError(f"max_pass_rows must be a positive integer, got {max_pass_rows!r}")
        super().__init__(model, family=family, name=name, device=device)
        self.tokenizer = tokenizer
        self.pad_rule = _ensure_pad_token(tokenizer, name)
        vocab = model_vocab(model)
        if vocab is not None and len(tokenizer) > vocab:
            raise BackboneError(f"the tokenizer of {name} has {len(tokenizer)} tokens but the model only {vocab}",
                                "use the tokenizer the model was trained with")
        self.token_length = _token_length(token_length, model, tokenizer, name)
        self.forward_arguments = frozenset(inspect.signature(model.forward).parameters)
        self.use_attention_mask = ("attention_mask" in self.forward_arguments if use_attention_mask is None
                                   else use_attention_mask)
        self.max_pass_rows = max_pass_rows
        self._tokenizer_hash = tokenizer_digest(tokenizer)

    def settings(self) -> dict[str, object]:
        """Every extraction setting that changes the features (see the module docstring)."""
        return {
            "family": self.family,
            "token_length": self.token_length,
            "padding": self.pad_rule,
            "attention_mask": self.use_attention_mask,
            "pooling": POOLING,
            "tokenizer": self._tokenizer_hash,
            "precision": precision_name(self.dtype),
            "feature_version": FEATURE_VERSION,
            **self.timestep_settings(),
        }

    @abstractmethod
    def timestep_settings(self) -> dict[str, object]:
        """What t does (and every setting of it), merged into :meth:`settings`."""

    # ------------------------------------------------------------------ tokens

    def tokenize(
        self, captions: Sequence[str], ids: Sequence[str], split_name: str = "?"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids ``long [B, L]``, attention mask and real-token mask ``bool [B, L]`` (on CPU).

        Raises:
            DataError: a caption is empty, or keeps no token of its own within ``token_length``.
        """
        return _tokenized(self.tokenizer, self.token_length, captions, ids, split_name)

    def input_stage(self) -> InputStage:
        """Captions tokenised: ``{"tokens", "attention", "real"}``, each ``[B, L]`` (on CPU)."""
        return InputStage("text", partial(_token_batch, self.tokenizer, self.token_length))

    # ------------------------------------------------------------------ features

    @abstractmethod
    def tokens_at(self, batch: Encoded, t: int) -> torch.Tensor:
        """The input ids ``long [B, L]`` the model reads at timestep ``t``."""

    def extra_inputs(self, timesteps: Sequence[int], rows: int) -> dict[str, torch.Tensor]:
        """Further forward arguments for a pass over ``timesteps`` x ``rows`` (none by default)."""
        return {}

    def features(
        self, batch: Encoded, timesteps: Sequence[int], blocks: Sequence[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Pooled features ``{t: {b: float32 [B, width]}}`` on :attr:`device`.

        Timesteps share a pass (rows concatenated) while it holds at most ``max_pass_rows`` rows;
        each pass stops after the deepest requested block.

        Raises:
            BackboneError: a timestep or block is out of range, no block is requested, or the
                batch was not encoded by a text backbone.
        """
        ts, wanted = self.request(timesteps, blocks)
        attention, real = self.masks(batch)
        size = len(batch)
        if size == 0:
            return self.no_rows(ts, wanted)
        out: dict[int, dict[int, torch.Tensor]] = {}
        per_pass = max(1, self.max_pass_rows // size)
        with torch.inference_mode():
            for start in range(0, len(ts), per_pass):
                chunk = ts[start : start + per_pass]
                inputs: dict[str, Any] = {"input_ids": torch.cat([self.tokens_at(batch, t) for t in chunk])}
                if self.use_attention_mask:
                    inputs["attention_mask"] = attention.repeat(len(chunk), 1).long()
                inputs.update(self.extra_inputs(chunk, size))
                pool = masked_mean_pool(real.repeat(len(chunk), 1))
                with capture_blocks(self.blocks, wanted, pool) as capture:
                    pooled = capture.run(lambda inputs=inputs: self.model(**inputs))
                for j, t in enumerate(chunk):
                    out[t] = {b: pooled[b][j * size : (j + 1) * size] for b in wanted}
        # Cloned outside inference mode: ordinary tensors, not views of a pass.
        return {t: {b: v.float().clone() for b, v in out[t].items()} for t in ts}

    def tokens(self, batch: Encoded) -> torch.Tensor:
        """The batch's clean token ids ``long [B, L]`` on the device.

        Raises:
            BackboneError: the batch was not encoded by a text backbone.
        """
        tokens = batch.tensors.get("tokens")
        if tokens is None or tokens.dim() != 2 or tokens.shape[0] != len(batch.ids):
            raise BackboneError("batch lacks token ids [B, L]: it was not encoded by a text backbone",
                                f"prepare batches with {type(self).__name__}.encode")
        return tokens.to(self.device)

    def masks(self, batch: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's attention and real-token masks ``bool [B, L]`` on the device.

        Raises:
            BackboneError: the batch was not encoded by this kind of backbone.
        """
        shape = self.tokens(batch).shape
        attention, real = batch.tensors.get("attention"), batch.tensors.get("real")
        if attention is None or real is None or attention.shape != shape or real.shape != shape:
            raise BackboneError("batch lacks its attention or real-token mask: it was not encoded by this backbone",
                                f"prepare batches with {type(self).__name__}.encode")
        return attention.to(self.device), real.to(self.device)


class TextEncoderBackbone(TransformersTextBackbone):
    """A text encoder baseline (CLIP/SigLIP text tower, BERT, RoBERTa, T5 encoder): t is fixed at 0."""

    clean_only = True

    def timestep_settings(self) -> dict[str, object]:
        return {"timestep": "fixed at 0 (encoder baseline)"}

    def tokens_at(self, batch: Encoded, t: int) -> torch.Tensor:
        return self.tokens(batch)


def load_text_encoder(
    source: str,
    loader: Callable[..., Any],
    *,
    family: str,
    example: str,
    device: str | torch.device | None = None,
    tokenizer: str | None = None,
    token_length: int | None = None,
    use_attention_mask: bool | None = None,
) -> TextEncoderBackbone:
    """Load a text encoder baseline: the model with ``loader`` (a ``from_pretrained``) and its tokenizer.

    Args:
        source: hub id or local folder.
        loader: e.g. ``CLIPTextModel.from_pretrained`` or ``AutoModel.from_pretrained``.
        family: family name (messages, settings, the display name ``family:source``).
        example: hub id named in download hints.
        device: ``None``/``"auto"`` (CUDA when present), or a device.
        tokenizer: a tokenizer folder or hub id (default: the checkpoint's).
        token_length: see :class:`TransformersTextBackbone`.
        use_attention_mask: see :class:`TransformersTextBackbone`.

    Raises:
        BackboneError: the checkpoint or tokenizer is missing or does not fit.
        ConfigError: an option or the device is invalid.
    """
    what = f"{family} text model"

    def build(model: nn.Module, checkpoint: Checkpoint, resolved: torch.device) -> TextEncoderBackbone:
        return TextEncoderBackbone(
            model, load_tokenizer(checkpoint, tokenizer, what), family=family, name=f"{family}:{source}",
            device=resolved, token_length=token_length, use_attention_mask=use_attention_mask,
        )

    return load_backbone(source, loader, build, family=family, example=example, what=what, device=device)


def family_loader(load: Callable[..., TextEncoderBackbone]) -> Callable[[str, LoadOptions], TextEncoderBackbone]:
    """``BackboneFamily.load`` for a text encoder: ``load(source, device=, tokenizer=, token_length=)``."""

    def load_with_options(source: str, options: LoadOptions) -> TextEncoderBackbone:
        return load(source, device=options.device, tokenizer=options.tokenizer, token_length=options.token_length)

    return load_with_options


def load_tokenizer(checkpoint: Checkpoint, tokenizer: str | None, what: str) -> PreTrainedTokenizerBase:
    """The tokenizer in ``tokenizer`` (a folder or hub id) or, by default, in the checkpoint.

    Raises:
        BackboneError: no tokenizer can be read there; the hint says where to get one.
    """
    source = checkpoint if tokenizer is None else resolve_checkpoint(tokenizer, checkpoint.family)
    hint = ("put the tokenizer files (tokenizer.json or the vocabulary files, tokenizer_config.json) in the "
            "folder, or pass a tokenizer folder or hub id with `tokenizer` (--tokenizer); " + source.hint())
    # transformers would build an empty tokenizer from config.json alone: require its files.
    if source.local and not any((Path(source.location) / name).is_file() for name in TOKENIZER_FILES):
        raise BackboneError(f"{source.location} holds no tokenizer for {what} (none of {', '.join(TOKENIZER_FILES)})",
                            hint)
    try:
        loaded = AutoTokenizer.from_pretrained(source.location, trust_remote_code=source.trusted)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackboneError(f"cannot load the tokenizer of {what} from {source.source!r}: {exc}", hint) from exc
    if not isinstance(loaded, PreTrainedTokenizerBase) or len(loaded.get_vocab()) <= len(set(loaded.all_special_ids)):
        raise BackboneError(f"{source.source!r} holds no usable tokenizer for {what} (nothing but special tokens)",
                            hint)
    return loaded


def _tokenized(tokenizer: PreTrainedTokenizerBase, token_length: int, captions: Sequence[str], ids: Sequence[str],
               split_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`TransformersTextBackbone.tokenize` with the tokenizer and length given."""
    for row_id, caption in zip(ids, captions, strict=True):
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"split {split_name!r}: caption of row id {row_id!r} is empty",
                            "give every row a non-empty caption, or remove the row")
    if not captions:  # the tokenizer cannot batch no captions
        empty = torch.zeros((0, token_length), dtype=torch.bool)
        return empty.long(), empty, empty
    enc = tokenizer(
        list(captions), padding="max_length", truncation=True, max_length=token_length,
        return_attention_mask=True, return_special_tokens_mask=True, return_tensors="pt",
    )
    tokens = enc["input_ids"].long()
    attention = enc["attention_mask"].bool()
    real = attention & ~enc["special_tokens_mask"].bool()
    full = int(attention.all(dim=1).sum())
    if full:
        logger.debug("%d of %d captions fill all %d tokens (truncated, or exactly that long)",
                     full, len(captions), token_length)
    for row_id, row in zip(ids, real, strict=True):
        if not bool(row.any()):
            raise DataError(
                f"split {split_name!r}: caption of row id {row_id!r} has no token of its own within "
                f"{token_length} tokens",
                "fix the caption, or raise the token length",
            )
    return tokens, attention, real


def _token_batch(tokenizer: PreTrainedTokenizerBase, token_length: int, captions: list[str], ids: tuple[str, ...],
                 split_name: str) -> dict[str, torch.Tensor]:
    """The input stage of a transformers text backbone: a batch's captions tokenised."""
    tokens, attention, real = _tokenized(tokenizer, token_length, captions, ids, split_name)
    return {"tokens": tokens, "attention": attention, "real": real}


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of a tokenizer's class, vocabulary, special tokens and (fast tokenizers) full definition."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def model_vocab(model: nn.Module) -> int | None:
    """Rows of the input embedding (or ``config.vocab_size``), ``None`` when the model says neither."""
    try:
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
    except (NotImplementedError, AttributeError):
        embeddings = None
    if isinstance(embeddings, nn.Embedding):
        return int(embeddings.num_embeddings)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(vocab) if isinstance(vocab, int) else None


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, name: str) -> str:
    """Pad with the pad token, or end-of-text when there is none; returns the rule (for settings)."""
    if tokenizer.pad_token_id is not None:
        return f"pad token {tokenizer.pad_token_id}"
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return f"end-of-text {tokenizer.pad_token_id}"
    raise BackboneError(f"the tokenizer of {name} has neither a pad token nor an end-of-text token",
                        "use a tokenizer with a pad or end-of-text token")


def _token_length(token_length: int | None, model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    limits = [getattr(model.config, attr) for attr in LENGTH_ATTRIBUTES
              if isinstance(getattr(model.config, attr, None), int)][:1]
    if isinstance(tokenizer.model_max_length, int) and tokenizer.model_max_length < _NO_LIMIT:
        limits.append(tokenizer.model_max_length)
    limit = min(limits) if limits else None
    if token_length is None:
        length = DEFAULT_TOKEN_LENGTH if limit is None else min(DEFAULT_TOKEN_LENGTH, limit)
    else:
        if not _positive_int(token_length):
            raise ConfigError(f"token_length must be a positive integer, got {token_length!r}")
        if limit is not None and token_length > limit:
            raise ConfigError(f"token length {token_length} exceeds the {limit} positions of {name}",
                              f"choose a token length of at most {limit}")
        length = token_length
    room = tokenizer.num_special_tokens_to_add()
    if length <= room:
        raise ConfigError(f"token length {length} of {name} leaves no room: the tokenizer adds {room} special tokens",
                          f"choose a token length above {room}")
    return length


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
