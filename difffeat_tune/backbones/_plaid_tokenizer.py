"""Plaid's tokenizer: read a ``tokenizers`` file, or learn a small byte-level BPE on captions.

Plaid 1B uses ``misc/owt2_tokenizer.json`` of its repository: a byte-level BPE whose only special
token is id 0, end-of-text, which is also the pad token (Plaid has none).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from difffeat_tune._errors import BackboneError, ConfigError

#: Plaid's only special token, id 0: end of text (also the pad token).
EOT_TOKEN = "<|endoftext|>"
PAD_ID = 0
#: The tokenizer's file name in a model folder.
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_HINT = (
    "Plaid 1B's tokenizer is misc/owt2_tokenizer.json in github.com/igul222/plaid: copy it to the "
    "folder as tokenizer.json or pass its path as `tokenizer`"
)


def load_tokenizer(folder: Path, tokenizer: str | Path | Tokenizer | None) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    path = folder / TOKENIZER_FILE if tokenizer is None else Path(tokenizer)
    if not path.is_file():
        raise BackboneError(f"Plaid tokenizer file missing: {path}", TOKENIZER_HINT)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise BackboneError(f"cannot read tokenizer {path}: {exc}", TOKENIZER_HINT) from exc


def own_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A private copy with padding and truncation off (lengths are handled here)."""
    own = Tokenizer.from_str(tokenizer.to_str())
    own.no_padding()
    own.no_truncation()
    if own.id_to_token(PAD_ID) is None:
        raise BackboneError(
            "tokenizer has no token with id 0",
            "Plaid's tokenizer has end-of-text as id 0, used for padding",
        )
    return own


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer learnt on ``texts``, id 0 = ``<|endoftext|>`` (Plaid's layout).

    Raises:
        ConfigError: ``vocab_size`` is below the byte alphabet plus end-of-text.
    """
    min_vocab = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if vocab_size < min_vocab:
        raise ConfigError(f"vocab_size must be at least {min_vocab} (256 bytes + end-of-text), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.token_to_id(EOT_TOKEN) != PAD_ID:
        raise BackboneError(f"tokenizer put {EOT_TOKEN} at id {tokenizer.token_to_id(EOT_TOKEN)}, not 0")
    return tokenizer
