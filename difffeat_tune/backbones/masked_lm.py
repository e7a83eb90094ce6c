"""Masked-diffusion text backbones through transformers: MDLM, LLaDA, and BERT-style masked LMs.

Family ``mlm`` (:data:`FAMILY`), e.g. ``mlm:/models/mdlm-owt`` or ``mlm:google-bert/bert-base-uncased``.

Loading (:func:`load_masked_lm`): a hub id or a local folder. Library models load with
``AutoModelForMaskedLM``. A local folder whose ``config.json`` maps Auto classes to its own
code (``auto_map``, as MDLM and LLaDA checkpoints ship ``modeling_*.py``) loads that code with
``trust_remote_code=True``, through ``AutoModelForMaskedLM`` when the folder maps it (MDLM), else
``AutoModel`` or ``AutoModelForCausalLM`` (LLaDA maps these two to its masked predictor). A hub
id never runs downloaded code: download such a checkpoint and pass its folder.
Checkpoints without a tokenizer (MDLM-OWT uses GPT-2's) take one with ``tokenizer``.

What a timestep means: t is the masking ratio. Of a caption's n real tokens (not padding, not
the tokenizer's special tokens), k = round(t / 1000 * n) (halves round up) are replaced by the
mask token; which ones is drawn by a generator seeded per (seed, row id, t), so features do not
depend on the batch or on the other timesteps. t = 0 is the clean caption. A model whose
``forward`` takes ``timesteps`` (MDLM) also gets the noise level of its log-linear schedule,
sigma = -log(1 - t / 1000), under which a token is masked with probability t / 1000.

The mask token id is, in this order: ``mask_token_id`` of ``config.json`` (LLaDA: 126336), the
tokenizer's mask token (BERT's [MASK]), or, when the model's vocabulary is the tokenizer's plus
one, that extra last id (MDLM's convention: GPT-2's 50257 tokens + mask = 50258).

Blocks are the model's layer stack (:func:`~._hf_load.find_blocks`): ``bert.encoder.layer``,
MDLM's ``backbone.blocks``, LLaDA's ``model.transformer.blocks``; block b is the hidden state
after the b-th layer, mean-pooled over the real tokens (masked positions included: they are the
caption's positions). Tokens, padding and the attention mask follow :mod:`._hf_text`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedTokenizerBase

from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune.backbones._base import Encoded, row_generator
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones._hf_base import load_backbone
from difffeat_tune.backbones._registry import family
from difffeat_tune.backbones._hf_load import Checkpoint, custom_auto_class, resolve_checkpoint
from difffeat_tune.backbones._hf_text import (
    DEFAULT_MAX_PASS_ROWS,
    TransformersTextBackbone,
    load_tokenizer,
    model_vocab,
)

logger = logging.getLogger(__name__)

FAMILY_NAME = "mlm"
#: Hub id named in download hints (a BERT-style masked LM loads by hub id; MDLM needs its folder).
EXAMPLE_SOURCE = "kuleshov-group/mdlm-owt"
#: Auto classes a folder's own code may be loaded through, in order of preference.
CUSTOM_AUTO_CLASSES = {
    "AutoModelForMaskedLM": AutoModelForMaskedLM,
    "AutoModel": AutoModel,
    "AutoModelForCausalLM": AutoModelForCausalLM,
}
#: The forward argument through which a model takes its noise level (MDLM).
TIMESTEP_ARGUMENT = "timesteps"
MASKING = "round-half-up(t/1000 * real tokens) replaced by the mask token, seeded per (seed, row id, t)"


class MaskedDiffusionBackbone(TransformersTextBackbone):
    """Pooled block features of a masked (diffusion) language model at masking ratios t / 1000.

    Build it with :func:`load_masked_lm`.

    Args:
        model: the masked LM (on ``device``, eval mode).
        tokenizer: its tokenizer.
        name: display name.
        device: where features are computed and returned.
        token_length: fixed length L in tokens (see :class:`~._hf_text.TransformersTextBackbone`).
        noise_seed: seed of which tokens are masked.
        mask_token_id: the mask token (``None``: found as the module docstring says).
        max_pass_rows: rows per forward pass when timesteps share a pass.

    Raises:
        BackboneError: no mask token can be found, or it is outside the model's vocabulary.
        ConfigError: an option is invalid.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        device: torch.device,
        token_length: int | None = None,
        noise_seed: int = 0,
        mask_token_id: int | None = None,
        max_pass_rows: int = DEFAULT_MAX_PASS_ROWS,
    ) -> None:
        if not isinstance(noise_seed, int) or isinstance(noise_seed, bool):
            raise ConfigError(f"noise_seed must be an integer, got {noise_seed!r}")
        super().__init__(model, tokenizer, family=FAMILY_NAME, name=name, device=device,
                         token_length=token_length, max_pass_rows=max_pass_rows)
        self.noise_seed = noise_seed
        self.mask_token_id = find_mask_token(model, tokenizer, name) if mask_token_id is None else mask_token_id
        vocab = model_vocab(model)
        if self.mask_token_id < 0 or (vocab is not None and self.mask_token_id >= vocab):
            raise BackboneError(f"mask token id {self.mask_token_id} of {name} is outside its vocabulary of {vocab}",
                                "use the tokenizer the model was trained with")
        self.takes_timesteps = TIMESTEP_ARGUMENT in self.forward_arguments

    def timestep_settings(self) -> dict[str, object]:
        return {
            "timestep": "masking ratio t/1000",
            "masking": MASKING,
            "mask_token_id": self.mask_token_id,
            "noise_seed": self.noise_seed,
            "time_input": "sigma = -log(1 - t/1000)" if self.takes_timesteps else None,
        }

    def masked_tokens(self, batch: Encoded, t: int) -> torch.Tensor:
        """The batch's tokens at masking ratio ``t / 1000``: ``long [B, L]`` on the device.

        Row i gets ``round(t / 1000 * n_i)`` of its ``n_i`` real tokens replaced by the mask
        token, chosen by a generator seeded per (noise seed, row id, t).

        Raises:
            BackboneError: ``t`` is outside [0, 1000).
        """
        self.validate([t], [])
        tokens = self.tokens(batch)
        _, real = self.masks(batch)
        if t == 0:
            return tokens
        masked = tokens.clone()
        for i, row_id in enumerate(batch.ids):
            positions = real[i].nonzero().flatten()
            count = masked_count(t, len(positions), self.num_timesteps)
            order = torch.randperm(len(positions), generator=row_generator(self.noise_seed, row_id, t))
            masked[i, positions[order[:count].to(positions.device)]] = self.mask_token_id
        return masked

    def tokens_at(self, batch: Encoded, t: int) -> torch.Tensor:
        return self.masked_tokens(batch, t)

    def extra_inputs(self, timesteps: Sequence[int], rows: int) -> dict[str, torch.Tensor]:
        if not self.takes_timesteps:
            return {}
        sigma = [-math.log1p(-t / self.num_timesteps) for t in timesteps for _ in range(rows)]
        return {TIMESTEP_ARGUMENT: torch.tensor(sigma, dtype=torch.float32, device=self.device)}


def masked_count(t: int, real: int, num_timesteps: int = 1000) -> int:
    """How many of ``real`` tokens are masked at ``t``: ``round(t / num_timesteps * real)``, halves up."""
    return min(real, (2 * t * real + num_timesteps) // (2 * num_timesteps))


def find_mask_token(model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    """The mask token id: ``config.mask_token_id``, the tokenizer's, or MDLM's extra last id.

    Raises:
        BackboneError: none of the three applies.
    """
    configured = getattr(getattr(model, "config", None), "mask_token_id", None)
    if isinstance(configured, int) and not isinstance(configured, bool):
        return configured
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    vocab = model_vocab(model)
    if vocab is not None and vocab == len(tokenizer) + 1:
        return len(tokenizer)
    raise BackboneError(
        f"cannot tell the mask token of {name}: config.json has no mask_token_id, the tokenizer has no mask "
        f"token, and the model's vocabulary ({vocab}) is not the tokenizer's ({len(tokenizer)}) plus one",
        "use the tokenizer the model was trained with, or add mask_token_id to config.json",
    )


def load_masked_lm(
    source: str,
    *,
    device: str | torch.device | None = None,
    tokenizer: str | None = None,
    token_length: int | None = None,
    noise_seed: int = 0,
    max_pass_rows: int = DEFAULT_MAX_PASS_ROWS,
) -> MaskedDiffusionBackbone:
    """Load a masked (diffusion) language model from a hub id or a local folder.

    Args:
        source: hub id of a library masked LM, or a folder (its own ``modeling_*.py`` runs
            when ``config.json`` maps Auto classes to it).
        device: ``None``/``"auto"`` (CUDA when present), or a device.
        tokenizer: a tokenizer folder or hub id (default: the checkpoint's).
        token_length: token length L (default 64, or the model's maximum when smaller).
        noise_seed: seed of which tokens are masked.
        max_pass_rows: rows per forward pass when timesteps share a pass.

    Raises:
        BackboneError: the checkpoint, its code or its tokenizer is missing or does not fit.
        ConfigError: an option or the device is invalid.

    Example:
        >>> backbone = load_masked_lm("/models/mdlm-owt", tokenizer="/models/gpt2")  # doctest: +SKIP
        >>> batch = backbone.encode(split, range(8))  # doctest: +SKIP
        >>> backbone.features(batch, [0, 100], [6, 12])[100][12].shape  # doctest: +SKIP
        torch.Size([8, 768])
    """
    custom = custom_auto_class(resolve_checkpoint(source, FAMILY_NAME, EXAMPLE_SOURCE), CUSTOM_AUTO_CLASSES)
    auto = CUSTOM_AUTO_CLASSES[custom] if custom is not None else AutoModelForMaskedLM
    what = "masked language model"

    def build(model: nn.Module, checkpoint: Checkpoint, resolved: torch.device) -> MaskedDiffusionBackbone:
        return MaskedDiffusionBackbone(
            model, load_tokenizer(checkpoint, tokenizer, what), name=f"{FAMILY_NAME}:{source}", device=resolved,
            token_length=token_length, noise_seed=noise_seed, max_pass_rows=max_pass_rows,
        )

    backbone = load_backbone(source, auto.from_pretrained, build, family=FAMILY_NAME, example=EXAMPLE_SOURCE,
                             what=what, device=device)
    logger.info("%s: %d blocks of width %d, mask token %d, token length %d", backbone.name, backbone.num_blocks,
                backbone.width, backbone.mask_token_id, backbone.token_length)
    return backbone


def load_family(source: str, options: LoadOptions) -> MaskedDiffusionBackbone:
    """The family's loader (``FAMILY_TABLE``): :func:`load_masked_lm` with the load options."""
    return load_masked_lm(source, device=options.device, tokenizer=options.tokenizer,
                          token_length=options.token_length, noise_seed=options.noise_seed)


FAMILY = family("text", FAMILY_NAME)
