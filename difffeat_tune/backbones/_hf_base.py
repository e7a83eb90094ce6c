"""What every transformers-based backbone shares: its model, layer stack, width and identity.

The text backbones (:mod:`._hf_text`) and the vision encoders (:mod:`._hf_vision`) build on
:class:`TransformersBackbone`; :func:`load_backbone` is their one loading path (device, hub id or
folder, weights, then the check that no block was left at random initialisation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from difffeat_tune._device import resolve_device
from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones._base import Backbone
from difffeat_tune.backbones._hf_load import (
    Checkpoint,
    check_missing,
    find_blocks,
    hidden_width,
    load_model,
    model_fingerprint,
    resolve_checkpoint,
)

NUM_TIMESTEPS = 1000


class TransformersBackbone(Backbone):
    """A backbone around a transformers model whose blocks are its layer stack.

    Args:
        model: the model (on ``device``, eval mode, frozen).
        family: the family name (recorded in settings).
        name: display name.
        device: where features are computed and returned.

    Raises:
        BackboneError: the model has no layer stack or its config names no width.
    """

    num_timesteps = NUM_TIMESTEPS
    #: Encoder baselines have no diffusion: their only timestep is 0.
    clean_only: ClassVar[bool] = False

    def __init__(self, model: nn.Module, *, family: str, name: str, device: torch.device) -> None:
        self.family = family
        self.name = name
        self.device = device
        self.model = model
        self.blocks_path, self.blocks = find_blocks(model, name)
        self.num_blocks = len(self.blocks)
        self.width = hidden_width(model.config, name)
        self.dtype = next(model.parameters()).dtype
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """A hash of the model class, configuration, weights and block list."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.blocks_path)
        return self._fingerprint

    def validate(self, timesteps: Iterable[int], blocks: Iterable[int]) -> None:
        """Timesteps in [0, 1000) (only 0 for encoder baselines) and blocks in 1..N.

        Raises:
            BackboneError: the first timestep or block this model cannot give.
        """
        timesteps = list(timesteps)
        if self.clean_only:
            for t in timesteps:
                if not (isinstance(t, int) and not isinstance(t, bool) and t == 0):
                    raise BackboneError(
                        f"{self.modality} backbone {self.name} is an encoder baseline without diffusion: "
                        f"t is fixed at 0, got t={t!r}",
                        f"use t = [0] in the space's {self.modality} grid for this backbone",
                    )
        super().validate(timesteps, blocks)


B = TypeVar("B", bound=TransformersBackbone)


def load_backbone(
    source: str,
    loader: Callable[..., Any],
    build: Callable[[nn.Module, Checkpoint, torch.device], B],
    *,
    family: str,
    example: str,
    what: str,
    device: str | torch.device | None = None,
) -> B:
    """Load ``source`` with ``loader`` (a ``from_pretrained``) and wrap it with ``build``.

    Args:
        source: hub id or local folder.
        loader: e.g. ``CLIPTextModel.from_pretrained``.
        build: ``build(model, checkpoint, device) -> backbone`` (reads tokenizer or processor).
        family: family name (messages).
        example: hub id named in download hints.
        what: what is loaded (messages).
        device: ``None``/``"auto"`` (CUDA when present), or a device.

    Raises:
        BackboneError: the checkpoint is missing or does not fit; a block would keep random weights.
        ConfigError: the device is invalid.
    """
    resolved = resolve_device(device)
    checkpoint = resolve_checkpoint(source, family, example)
    model, missing = load_model(checkpoint, loader, what=what, device=resolved)
    backbone = build(model, checkpoint, resolved)
    check_missing(model, missing, backbone.blocks_path, checkpoint, what)
    return backbone
