"""Small real pieces for the transformers families' tests: word tokenizers, block-call counters.

Tokenizers are built with the ``tokenizers`` library and saved as ``PreTrainedTokenizerFast``
folders, which ``AutoTokenizer`` reads exactly as it reads a real checkpoint's tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

#: Every word of ``tests.conftest.make_split``'s captions; digits are split one by one.
WORDS = ("red", "blue", "green", "circle", "square", "star", "a", "small", "ring", "two", "hearts", "number",
         *[str(d) for d in range(10)])

#: Special tokens, the template that adds them, and their roles, per tokenizer style.
STYLES: dict[str, dict[str, object]] = {
    # [CLS] caption [SEP], [PAD] and [MASK]
    "bert": {"specials": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "template": ("[CLS]", "[SEP]"),
             "roles": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                       "mask_token": "[MASK]"}},
    # CLIP: start and end of text around the caption, padded with end-of-text
    "clip": {"specials": ["<|startoftext|>", "<|endoftext|>", "<unk>"],
             "template": ("<|startoftext|>", "<|endoftext|>"),
             "roles": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                       "unk_token": "<unk>"}},
    # T5 / SigLIP: caption </s>, padded with <pad>
    "t5": {"specials": ["<pad>", "</s>", "<unk>"], "template": (None, "</s>"),
           "roles": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}},
    # GPT-2 (MDLM): end-of-text only, no template, no pad and no mask token
    "gpt2": {"specials": ["<|endoftext|>"], "template": (None, None),
             "roles": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}},
    # LLaDA-like: a start token, end-of-text as pad, a mask token the tokenizer does not declare
    "llada": {"specials": ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<unk>"],
              "template": ("<|startoftext|>", None),
              "roles": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
                        "additional_special_tokens": ["<|mdm_mask|>"]}},
}


def word_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS` with the special tokens of ``style``."""
    spec = STYLES[style]
    specials = list(spec["specials"])  # type: ignore[call-overload]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    unk = next(t for t in specials if "unk" in t.lower() or t == "<|endoftext|>")
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    first, last = spec["template"]  # type: ignore[misc]
    if first or last:
        single = " ".join(p for p in (first, "$A", last) if p)
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(t, vocab[t]) for t in (first, last) if t])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **spec["roles"])  # type: ignore[arg-type]


def save_tokenizer(folder: Path, style: str) -> PreTrainedTokenizerFast:
    tokenizer = word_tokenizer(style)
    tokenizer.save_pretrained(folder)
    return tokenizer


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, N, D] over the positions where ``mask`` [B, N] is true."""
    weights = mask.float().unsqueeze(-1)
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)


