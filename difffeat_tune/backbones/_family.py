"""What a backbone family declares: how to load it and what its timesteps and blocks mean.

A family (``dit``, ``plaid``, ...) is one module that builds :class:`~difffeat_tune.backbones._base.Backbone`
objects from a source (a hub id or a local folder) and exposes one :class:`BackboneFamily`
constant. The registry (:mod:`difffeat_tune.backbones._registry`) holds one table of them, so a
new family is one new module plus one table entry. Users select one as ``family:source`` (e.g.
``dit:facebook/DiT-XL-2-256``); each family's loader receives the same :class:`LoadOptions` and
reads the fields that apply to it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from difffeat_tune._defaults import DEFAULT_TEXT_NOISING
from difffeat_tune._errors import ConfigError

if TYPE_CHECKING:
    from difffeat_tune.backbones._base import Backbone, Modality


#: What t means for the encoder baselines (no diffusion).
ENCODER_TIMESTEP = "fixed at 0 (encoder baseline, no diffusion); any other t is an error"


@dataclass(frozen=True)
class LoadOptions:
    """Load-time settings of a backbone (each family reads the ones it knows, ignores the rest).

    Attributes:
        device: ``None``/``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        noise_seed: seed of any random noise (image noise, random text noising, masking).
        vae: a separate VAE (hub id or folder) for latent-diffusion image families.
        tokenizer: a tokenizer file or folder for text families that take one.
        token_length: text length L in tokens (``None``: the family's default).
        text_noising: ``"ddim"`` (deterministic inversion) or ``"random"`` for continuous text
            diffusion (Plaid).
        inversion_step: DDIM inversion step in timesteps (``None``: the family's default).
        resolution: image side in pixels for diffusers image families (``None``: the model's
            own, from its config; e.g. 512 for PixArt-XL-2-512x512, 1024 for SD3 and Flux).

    Raises:
        ConfigError: ``token_length``, ``inversion_step`` or ``resolution`` is not positive
            (the error's ``field`` is e.g. ``LoadOptions.resolution``).
    """

    device: str | None = None
    noise_seed: int = 0
    vae: str | None = None
    tokenizer: str | None = None
    token_length: int | None = None
    text_noising: str = DEFAULT_TEXT_NOISING
    inversion_step: int | None = None
    resolution: int | None = None

    def __post_init__(self) -> None:
        for name in ("token_length", "inversion_step", "resolution"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"LoadOptions.{name} must be positive, got {value}", field=f"LoadOptions.{name}")


@dataclass(frozen=True)
class BackboneFamily:
    """One kind of backbone: its loader and what it means to ask it for (t, b).

    Attributes:
        name: the prefix users write (``name:source``), lower case.
        modality: ``"image"`` or ``"text"``.
        summary: one line for ``difffeat-tune backbones``.
        timestep: what a timestep t in [0, 1000) means for this family.
        blocks: which modules are the blocks b = 1..N, and N for the usual checkpoints.
        loader: ``"module:function"`` of its ``load(source, options) -> Backbone``, imported on
            the first :meth:`load` (so that listing the families imports no model library).
        default_source: the source used when only the family is named (or ``None``: required).
    """

    name: str
    modality: Modality
    summary: str
    timestep: str
    blocks: str
    loader: str
    default_source: str | None = None

    def load(self, source: str, options: LoadOptions) -> Backbone:
        """Load ``source`` with the family's loader (its module is imported now)."""
        module, _, attribute = self.loader.partition(":")
        load: Callable[[str, LoadOptions], Backbone] = getattr(importlib.import_module(module), attribute)
        return load(source, options)


def looks_like_path(source: str) -> bool:
    """Whether ``source`` is written as a filesystem path rather than a hub id (``org/name``).

    A path starts with ``/``, ``.`` or ``~``, holds a backslash, or has more than one ``/``: a hub
    id has exactly one. Used to say "folder does not exist" instead of a hub download error.
    """
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1
