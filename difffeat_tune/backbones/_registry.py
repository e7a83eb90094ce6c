"""From a backbone name to a loaded backbone: one table of families, and the tiny backbones.

A backbone is named ``family:source`` (``dit:facebook/DiT-XL-2-256``, ``plaid:/models/plaid1b``,
``clip:openai/clip-vit-large-patch14``), or by its source alone, which means the modality's
first family (DiT for images, Plaid for text), or ``tiny``: the small backbones shipped with the
package. :data:`FAMILY_TABLE` is the one table of families; a new family is one module exposing a
:class:`~difffeat_tune.backbones._family.BackboneFamily` and one entry here. A family's module is
imported only when it is used (diffusers and transformers are heavy to import).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from difffeat_tune._defaults import TINY
from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune._io import atomic_folder
from difffeat_tune._paths import cache_dir
from difffeat_tune.backbones._base import Backbone, Modality
from difffeat_tune.backbones._family import BackboneFamily, LoadOptions

logger = logging.getLogger(__name__)

#: (modality, family name) -> "module:constant" of its :class:`BackboneFamily`, in the order
#: ``difffeat-tune backbones`` lists them; the first family of a modality is what a plain source
#: means. The one table to extend with a new family.
FAMILY_TABLE: Mapping[tuple[str, str], str] = MappingProxyType({
    ("image", "dit"): "difffeat_tune.backbones.dit:FAMILY",
    ("text", "plaid"): "difffeat_tune.backbones.plaid:FAMILY",
    ("image", "pixart"): "difffeat_tune.backbones.pixart:FAMILY",
    ("image", "sd3"): "difffeat_tune.backbones.sd3:FAMILY",
    ("image", "flux"): "difffeat_tune.backbones.flux:FAMILY",
    ("image", "sd"): "difffeat_tune.backbones.sd:FAMILY",
    ("text", "mlm"): "difffeat_tune.backbones.masked_lm:FAMILY",
    ("image", "clip"): "difffeat_tune.backbones.clip:CLIP_IMAGE_FAMILY",
    ("text", "clip"): "difffeat_tune.backbones.clip:CLIP_TEXT_FAMILY",
    ("image", "siglip"): "difffeat_tune.backbones.clip:SIGLIP_IMAGE_FAMILY",
    ("text", "siglip"): "difffeat_tune.backbones.clip:SIGLIP_TEXT_FAMILY",
    ("image", "dinov2"): "difffeat_tune.backbones.dinov2:FAMILY",
    ("text", "bert"): "difffeat_tune.backbones.text_encoders:BERT_FAMILY",
    ("text", "t5"): "difffeat_tune.backbones.text_encoders:T5_FAMILY",
})


def family(modality: str, name: str) -> BackboneFamily:
    """The family ``name`` of ``modality`` (imports its module).

    Raises:
        ConfigError: no such family for this modality (the message lists the known ones).
    """
    entry = FAMILY_TABLE.get((modality, name.lower()))
    if entry is None:
        other = [m for m, n in FAMILY_TABLE if n == name.lower()]
        known = ", ".join(n for m, n in FAMILY_TABLE if m == modality)
        if other:
            raise ConfigError(f"{name} is a {other[0]} backbone family, not a {modality} one",
                              f"pass it as the {other[0]} backbone; {modality} families: {known}")
        raise ConfigError(f"unknown {modality} backbone family {name!r}", f"{modality} families: {known}")
    module, _, attribute = entry.partition(":")
    found: BackboneFamily = getattr(importlib.import_module(module), attribute)
    return found


def families() -> list[BackboneFamily]:
    """Every family of :data:`FAMILY_TABLE`, in its order (imports every family module)."""
    return [family(modality, name) for modality, name in FAMILY_TABLE]


#: The shipped tiny backbones (trained on the embedded data's pretraining corpus), per modality.
TINY_FOLDERS: Mapping[str, str] = MappingProxyType({"image": "tiny-dit", "text": "tiny-plaid"})
#: Bump when the random tiny builders change, so stale cached models are never reused.
TINY_VERSION = 2
#: Width of the random tiny text model.
TINY_TEXT_DIM = 32
TINY_TEXT_HEADS = 2


def default_family(modality: str) -> BackboneFamily:
    """The family a plain source of ``modality`` means (its first in :data:`FAMILY_TABLE`)."""
    return family(*next(key for key in FAMILY_TABLE if key[0] == modality))


def parse_backbone(name: str, modality: Modality) -> tuple[BackboneFamily, str]:
    """``(family, source)`` of a backbone name for ``modality`` (see the module docstring).

    A prefix before ``:`` that names no family of either modality is part of a plain source
    (a path may hold a colon).

    Raises:
        ConfigError: the family belongs to the other modality, or a ``family:`` prefix names no
            source and the family has no default.
    """
    prefix, sep, rest = name.partition(":")
    if not sep or prefix.lower() not in {n for _, n in FAMILY_TABLE}:
        return default_family(modality), name
    chosen = family(modality, prefix)
    source = rest or chosen.default_source
    if not source:
        raise ConfigError(f"backbone {name!r} names no source", f"write {chosen.name}:HUB_ID or {chosen.name}:FOLDER")
    return chosen, source


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
        from difffeat_tune.backbones.dit import build_tiny_dit

        atomic_folder(folder, lambda tmp: build_tiny_dit(tmp, seed=seed))
    else:
        from difffeat_tune.backbones.plaid import build_tiny_plaid
        from difffeat_tune.data.shapes import load_shapes  # the tokenizer learns the embedded captions

        captions = list(load_shapes(enhanced=True).split("train").captions or ())
        atomic_folder(folder, lambda tmp: build_tiny_plaid(tmp, captions, seed=seed, dim=TINY_TEXT_DIM,
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


__all__ = ["FAMILY_TABLE", "TINY", "default_family", "families", "family", "load_backbone", "load_image_backbone",
           "load_text_backbone", "parse_backbone", "tiny_folder"]
