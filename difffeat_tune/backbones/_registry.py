"""From a backbone name to a loaded backbone: one table of families, and the tiny backbones.

A backbone is named ``family:source`` (``dit:facebook/DiT-XL-2-256``, ``plaid:/models/plaid1b``,
``clip:openai/clip-vit-large-patch14``), or by its source alone, which means the modality's
first family (DiT for images, Plaid for text), or ``tiny``: the small backbones shipped with the
package. :data:`FAMILY_TABLE` is the one table of families; a new family is one module exposing a
``load(source, options)`` function and one :class:`~difffeat_tune.backbones._family.BackboneFamily`
entry here that names it. A family's module is imported only when it loads a backbone (diffusers
and transformers are heavy to import): listing the families imports neither.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from difffeat_tune._defaults import TINY
from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune._io import atomic_folder
from difffeat_tune._paths import cache_dir
from difffeat_tune.backbones._family import ENCODER_TIMESTEP, BackboneFamily, LoadOptions

if TYPE_CHECKING:  # the table is read without importing torch (`difffeat-tune backbones`)
    from difffeat_tune.backbones._base import Backbone, Modality

logger = logging.getLogger(__name__)

def _encoder(name: str, modality: Modality, summary: str, blocks: str, loader: str, default: str) -> BackboneFamily:
    return BackboneFamily(name=name, modality=modality, summary=summary, timestep=ENCODER_TIMESTEP, blocks=blocks,
                          loader=loader, default_source=default)


_M = "difffeat_tune.backbones."
#: (modality, family name) -> its :class:`BackboneFamily`, in the order ``difffeat-tune backbones``
#: lists them; the first family of a modality is what a plain source means. The one table to
#: extend with a new family: the entries are plain text, and a family's module (diffusers,
#: transformers) is imported only when one of its backbones is loaded.
FAMILY_TABLE: Mapping[tuple[str, str], BackboneFamily] = MappingProxyType({(f.modality, f.name): f for f in (
    BackboneFamily(
        name="dit", modality="image", loader=_M + "dit:load_family", default_source="facebook/DiT-XL-2-256",
        summary="DiT (diffusers DiTTransformer2DModel + AutoencoderKL), e.g. facebook/DiT-XL-2-256",
        timestep="DDPM timestep of the pipeline's scheduler (add_noise with seeded Gaussian noise); null class 1000",
        blocks="transformer_blocks 1..N (28 for DiT-XL/2); mean over the image tokens"),
    BackboneFamily(
        name="plaid", modality="text", loader=_M + "plaid:load_family",
        summary="Plaid (continuous text diffusion), a folder in the layout of Plaid 1B's release",
        timestep="continuous time t/1000; DDIM inversion from the clean embeddings (default) or seeded random noise",
        blocks="blocks 1..N (24 for Plaid 1B); mean over the caption's tokens"),
    BackboneFamily(
        name="pixart", modality="image", loader=_M + "pixart:load_family",
        default_source="PixArt-alpha/PixArt-XL-2-512x512",
        summary="PixArt-alpha/sigma (diffusers PixArtTransformer2DModel), empty-prompt T5 conditioning",
        timestep="DDPM step t of the pipeline's schedule (linear betas 1e-4..0.02): x_t = sqrt(abar_t) x0 + "
                 "sqrt(1 - abar_t) eps; the transformer gets t",
        blocks="transformer.transformer_blocks in order (28 blocks of width 1152 for PixArt-XL-2)"),
    BackboneFamily(
        name="sd3", modality="image", loader=_M + "sd3:load_family",
        default_source="stabilityai/stable-diffusion-3-medium-diffusers",
        summary="Stable Diffusion 3/3.5 (diffusers SD3Transformer2DModel), empty-prompt CLIP-L/G + T5 conditioning",
        timestep="flow matching: sigma = shift*u/(1+(shift-1)*u), u = t/1000 (the scheduler's shift, 3.0), "
                 "x_t = (1 - sigma) x0 + sigma eps; the transformer gets 1000*sigma",
        blocks="transformer.transformer_blocks in order, image tokens of each joint block (24 of width 1536 for "
               "SD3-medium)"),
    BackboneFamily(
        name="flux", modality="image", loader=_M + "flux:load_family", default_source="black-forest-labs/FLUX.1-dev",
        summary="FLUX.1 dev/schnell (diffusers FluxTransformer2DModel), empty-prompt CLIP-L + T5 conditioning",
        timestep="flow matching: sigma = shift*u/(1+(shift-1)*u), u = t/1000 (the scheduler's shift; dev: exp(mu) "
                 "from the image token count), x_t = (1 - sigma) x0 + sigma eps; the transformer gets sigma",
        blocks="joint blocks 1..J then single blocks J+1..J+S in forward order, image tokens only (FLUX.1: 19 + 38 "
               "= 57 of width 3072)"),
    BackboneFamily(
        name="sd", modality="image", loader=_M + "sd:load_family",
        default_source="stable-diffusion-v1-5/stable-diffusion-v1-5",
        summary="Stable Diffusion 1.x/2.x U-Net (diffusers UNet2DConditionModel), empty-prompt CLIP conditioning",
        timestep="DDPM step t of the pipeline's schedule (scaled-linear betas 0.00085..0.012): x_t = sqrt(abar_t) "
                 "x0 + sqrt(1 - abar_t) eps; the U-Net gets t",
        blocks="down_blocks, mid_block, up_blocks in forward order, each stage's output map mean-pooled (SD 1.x/2.x: "
               "4 + 1 + 4 = 9; widths differ per block: 320..1280)"),
    BackboneFamily(
        name="mlm", modality="text", loader=_M + "masked_lm:load_family",
        summary="masked diffusion language models (MDLM, LLaDA; their code from a local folder) and BERT-style "
                "masked LMs, through transformers",
        timestep="masking ratio: round(t/1000 x n) of a caption's n real tokens replaced by the mask token, seeded "
                 "per (seed, row, t); t = 0 is the clean caption; MDLM also gets sigma = -log(1 - t/1000)",
        blocks="the model's layer stack in order (BERT encoder.layer, MDLM backbone.blocks, LLaDA "
               "model.transformer.blocks): BERT-base 12, MDLM-OWT 12, LLaDA-8B 32"),
    _encoder("clip", "image", "CLIP vision tower (baseline), through transformers; mean of the patch tokens",
             "the vision encoder's layers (encoder.layers): ViT-B 12, ViT-L 24", _M + "clip:load_clip_image",
             "openai/clip-vit-large-patch14"),
    _encoder("clip", "text", "CLIP text tower (baseline), through transformers; mean of the caption's tokens",
             "the text encoder's layers (encoder.layers): 12 in the released CLIPs", _M + "clip:load_clip_text",
             "openai/clip-vit-large-patch14"),
    _encoder("siglip", "image", "SigLIP vision tower (baseline), through transformers; mean of the patch tokens",
             "the vision encoder's layers (encoder.layers): base 12, so400m 27", _M + "clip:load_siglip_image",
             "google/siglip-base-patch16-224"),
    _encoder("siglip", "text", "SigLIP text tower (baseline), through transformers; mean of the caption's tokens",
             "the text encoder's layers (encoder.layers): base 12, so400m 27", _M + "clip:load_siglip_text",
             "google/siglip-base-patch16-224"),
    _encoder("dinov2", "image", "DINOv2 (baseline), through transformers; mean of the patch tokens",
             "the encoder's layers (encoder.layer): small/base 12, large 24, giant 40", _M + "dinov2:load_family",
             "facebook/dinov2-base"),
    _encoder("bert", "text", "BERT/RoBERTa-style encoders (baseline), through transformers AutoModel; mean of "
             "the caption's tokens", "the encoder's layers (encoder.layer): base 12, large 24",
             _M + "text_encoders:load_bert_family", "google-bert/bert-base-uncased"),
    _encoder("t5", "text", "T5 encoder (baseline), through transformers T5EncoderModel; mean of the caption's "
             "tokens", "the encoder's blocks (encoder.block): small 6, base 12, large 24, XL/XXL 24",
             _M + "text_encoders:load_t5_family", "google-t5/t5-base"),
)})


#: What a family prefix looks like: a word of two characters or more (``C:`` is a Windows drive).
_FAMILY_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]+$")


def family(modality: str, name: str) -> BackboneFamily:
    """The family ``name`` of ``modality`` (its module is imported when it loads a backbone).

    Raises:
        ConfigError: no such family for this modality (the message lists the known ones).
    """
    found = FAMILY_TABLE.get((modality, name.lower()))
    if found is None:
        other = [m for m, n in FAMILY_TABLE if n == name.lower()]
        known = ", ".join(n for m, n in FAMILY_TABLE if m == modality)
        if other:
            raise ConfigError(f"{name} is a {other[0]} backbone family, not a {modality} one",
                              f"pass it as the {other[0]} backbone; {modality} families: {known}")
        raise ConfigError(f"unknown {modality} backbone family {name!r}", f"{modality} families: {known}")
    return found


def families() -> list[BackboneFamily]:
    """Every family of :data:`FAMILY_TABLE`, in its order (imports no family module)."""
    return list(FAMILY_TABLE.values())


def default_source(modality: str, name: str) -> str:
    """The default source of a family that has one (its module's ``DEFAULT_*`` constant)."""
    source = family(modality, name).default_source
    if source is None:
        raise ConfigError(f"the {modality} backbone family {name!r} has no default source")
    return source


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

    A word before ``:`` that names no family is an unknown family, unless the whole name is an
    existing path (a path may hold a colon); a one-letter prefix is a Windows drive.

    Raises:
        ConfigError: an unknown family, a family of the other modality, or a ``family:`` prefix
            that names no source when the family has no default.
    """
    prefix, sep, rest = name.partition(":")
    if not sep:
        return default_family(modality), name
    if prefix.lower() not in {n for _, n in FAMILY_TABLE}:
        if _FAMILY_WORD.match(prefix) and not Path(name).expanduser().exists():
            known = ", ".join(n for m, n in FAMILY_TABLE if m == modality)
            raise ConfigError(f"unknown {modality} backbone family {prefix!r} in {name!r}",
                              f"{modality} families: {known} (`difffeat-tune backbones` lists them); or give a "
                              "hub id (org/name) or a folder")
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


__all__ = ["FAMILY_TABLE", "TINY", "default_family", "default_source", "families", "family", "load_backbone", "load_image_backbone",
           "load_text_backbone", "parse_backbone", "tiny_folder"]
