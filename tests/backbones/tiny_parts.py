"""Tiny real parts for diffusers pipelines in tests: tokenizers, text encoders, VAEs, counters.

Everything is built from configs with seeded random weights; a test assembles a real pipeline
object from them and saves it with ``save_pretrained``, so the backbone loads the same layout as
a downloaded checkpoint (``model_index.json`` and one subfolder per component).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import torch
from diffusers import AutoencoderKL
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_t5(d_model: int, *, seed: int = 0) -> tuple[T5Tokenizer, T5EncoderModel]:
    """A unigram T5 tokenizer over letters and a few words, and a 1-layer T5 encoder."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{w}", -1.0) for w in ("red", "circle", "blue", "square")]
    vocab += [(c, -3.0) for c in LETTERS]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tokenizer, T5EncoderModel(config).eval()


def tiny_clip(hidden: int, *, projection: int | None = None,
              seed: int = 0) -> tuple[CLIPTokenizer, CLIPTextModel | CLIPTextModelWithProjection]:
    """A character-level CLIP tokenizer (77 tokens) and a 2-layer CLIP text model.

    With ``projection`` the model is a ``CLIPTextModelWithProjection`` (SD3's two CLIP encoders).
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return tokenizer, model.eval()


def tiny_vae(latent_channels: int, *, scaling: float = 0.18215, shift: float | None = None) -> AutoencoderKL:
    """A 2-level AutoencoderKL: 2x downsampling, so 16 px give an 8 x 8 latent."""
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                         norm_num_groups=8, sample_size=16, scaling_factor=scaling, shift_factor=shift)


def ddpm_alpha_bar(t: int, *, scaled_linear: bool = False) -> float:
    """abar_t of the 1000-step linear (1e-4..0.02) or scaled-linear (0.00085..0.012) schedule."""
    if scaled_linear:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    else:
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    return float(torch.cumprod(1.0 - betas, dim=0)[t])


@contextmanager
def count_calls(blocks: Sequence[nn.Module]) -> Iterator[list[int]]:
    """Count the forward calls of each block (forward pre-hooks), removed afterwards."""
    counts = [0] * len(blocks)

    def make(i: int):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _args: object) -> None:
            counts[i] += 1

        return hook

    handles = [block.register_forward_pre_hook(make(i)) for i, block in enumerate(blocks)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def spy_from_pretrained(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[object]:
    """Record every ``cls.from_pretrained`` call (the library's loader still runs)."""
    calls: list[object] = []
    original = cls.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(klass: type, *args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls
