"""From a backbone name to a loaded backbone: one table of families, and the tiny backbones.

A backbone is named ``family:source`` (``dit:facebook/DiT-XL-2-256``, ``plaid:/models/plaid1b``),
or by its source alone, which means the modality's first family (DiT for images, Plaid for text),
or ``tiny``: the small backbones shipped with the package. :data:`FAMILIES` is the one table of
families; a new family is one module exposing a :class:`~difffeat_tune.backbones._family.BackboneFamily`
and one entry here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from difffeat_tune._defaults import TINY
from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune._io import atomic_folder
from difffeat_tune._paths import cache_dir
from difffeat_tune.backbones import dit, plaid
from difffeat_tune.backbones._base import Backbone, Modality
from difffeat_tune.backbones._family import BackboneFamily, LoadOptions

logger = logging.getLogger(__name__)

#: The backbone families by name; the first family of a modality is what a plain source means.
FAMILIES: Mapping[str, BackboneFamily] = MappingProxyType({
    family.name: family for family in (
        dit.FAMILY,
        plaid.FAMILY,
    )
})

#: The shipped tiny backbones (trained on the embedded data's pretraining corpus), per modality.
TINY_FOLDERS: Mapping[str, str] = MappingProxyType({"image": "tiny-dit", "text": "tiny-plaid"})
#: Bump when the random tiny builders change, so stale cached models are never reused.
TINY_VERSION = 2
#: Width of the random tiny text model.
TINY_TEXT_DIM = 32
TINY_TEXT_HEADS = 2


def default_family(modality: str) -> BackboneFamily:
    """The family a plain source of ``modality`` means (the first of :data:`FAMILIES`)."""
    return next(f for f in FAMILIES.values() if f.modality == modality)


def parse_backbone(name: str, modality: Modality) -> tuple[BackboneFamily, str]:
    """``(family, source)`` of a backbone name for ``modality`` (see the module docstring).

    Raises:
        ConfigError: the family belongs to the other modality, or a ``family:`` prefix names no
            source and the family has no default.
    """
    prefix, sep, rest = name.partition(":")
    family = FAMILIES.get(prefix.lower()) if sep else None
    if family is None:  # a plain id or path (which may itself hold a colon)
        return default_family(modality), name
    if family.modality != modality:
        raise ConfigError(f"{family.name} is a {family.modality} backbone family, not a {modality} one",
                          f"pass it as the {family.modality} backbone; {modality} families: "
                          f"{', '.join(f.name for f in FAMILIES.values() if f.modality == modality)}")
    source = rest or family.default_source
    if not source:
        raise ConfigError(f"backbone {name!r} names no source", f"write {family.name}:HUB_ID or {family.name}:FOLDER")
    return family, source


def load_backbone(name: str, modality: Modality, options: LoadOptions | None = None) -> Backbone:
    """Load the ``modality`` backbone called ``name`` ("tiny", "family:source" or a plain source)."""
    options = options or LoadOptions()
    if name == TINY:
        family = default_family(modality)
        backbone = family.load(str(tiny_folder(modality)), options)
        backbone.name = TINY_FOLDERS[modality]
        return backbone
    family, source = parse_backbone(name, modality)
    return family.load(source, options)


def shipped_folder(modality: str) -> Path:
    """Where the package keeps the trained tiny ``modality`` backbone (it may be absent in a source tree)."""
    return Path(str(resources.files("difffeat_tune").joinpath("weights", TINY_FOLDERS[modality])))


def tiny_folder(modality: str, seed: int = 0) -> Path:
    """The tiny ``modality`` backbone: the shipped trained weights, else a random one built and cached."""
    shipped = shipped_folder(modality)
    if shipped.is_dir():
        return shipped
    return random_tiny_folder(modality, seed)


def random_tiny_folder(modality: str, seed: int = 0) -> Path:
    """A seeded random tiny ``modality`` backbone (full depth, small width), built once and cached."""
    name = f"tiny-{'dit' if modality == 'image' else 'plaid'}-v{TINY_VERSION}-seed{seed}"
    folder = cache_dir("models") / name
    if folder.is_dir():
        return folder
    if modality == "image":
        atomic_folder(folder, lambda tmp: dit.build_tiny_dit(tmp, seed=seed))
    else:
        from difffeat_tune.data.shapes import load_shapes  # the tokenizer learns the embedded captions

        captions = list(load_shapes(enhanced=True).split("train").captions or ())
        atomic_folder(folder, lambda tmp: plaid.build_tiny_plaid(tmp, captions, seed=seed, dim=TINY_TEXT_DIM,
                                                                 n_heads=TINY_TEXT_HEADS))
    logger.info("built a random tiny %s backbone in %s", modality, folder)
    return folder


def load_image_backbone(source: str = TINY, **options: object) -> Backbone:
    """Load an image backbone (see :func:`load_backbone`); ``options`` are :class:`LoadOptions` fields."""
    return load_backbone(source, "image", _options(options))


def load_text_backbone(source: str = TINY, **options: object) -> Backbone:
    """Load a text backbone (see :func:`load_backbone`); ``options`` are :class:`LoadOptions` fields."""
    return load_backbone(source, "text", _options(options))


def _options(options: Mapping[str, object]) -> LoadOptions:
    try:
        return LoadOptions(**options)  # type: ignore[arg-type]
    except TypeError as exc:
        raise BackboneError(f"bad backbone options: {exc}",
                            f"accepted: {', '.join(LoadOptions.__dataclass_fields__)}") from None


__all__ = ["FAMILIES", "TINY", "default_family", "load_backbone", "load_image_backbone", "load_text_backbone",
           "parse_backbone", "tiny_folder"]
