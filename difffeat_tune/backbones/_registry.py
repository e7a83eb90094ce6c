"""From a backbone name or path to a loaded backbone; tiny models are built once and cached."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from difffeat_tune._errors import BackboneError
from difffeat_tune._paths import cache_dir
from difffeat_tune.backbones.dit import DEFAULT_DIT, DiTBackbone, build_tiny_dit, load_dit
from difffeat_tune.backbones.plaid import PlaidBackbone, build_tiny_plaid, load_plaid

logger = logging.getLogger(__name__)

#: The name that selects the small seeded backbones shipped with the package.
TINY = "tiny"
#: Bump when the tiny builders change, so stale cached models are never reused.
TINY_VERSION = 2
#: Width of the tiny text model: small, since text passes dominate the embedded demo's cost.
TINY_TEXT_DIM = 32
TINY_TEXT_HEADS = 2


def tiny_folder(modality: str, seed: int = 0) -> Path:
    """The cached folder of the tiny ``modality`` backbone, built on first use."""
    name = f"tiny-{'dit' if modality == 'image' else 'plaid'}-v{TINY_VERSION}-seed{seed}"
    folder = cache_dir("models") / name
    if folder.is_dir():
        return folder
    if modality == "image":
        _build_atomically(folder, lambda tmp: build_tiny_dit(tmp, seed=seed))
    else:
        from difffeat_tune.data.shapes import load_shapes  # the tokenizer learns the embedded captions

        captions = list(load_shapes(enhanced=True).split("train").captions or ())
        _build_atomically(folder, lambda tmp: build_tiny_plaid(tmp, captions, seed=seed, dim=TINY_TEXT_DIM,
                                                                n_heads=TINY_TEXT_HEADS))
    logger.info("built tiny %s backbone in %s", modality, folder)
    return folder


def _build_atomically(folder: Path, build: Callable[[Path], object]) -> None:
    # Build in a sibling temporary folder, then rename: a crash never leaves a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():  # a concurrent builder did not win the race either
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_image_backbone(source: str = TINY, *, device: str | torch.device | None = None, noise_seed: int = 0,
                        vae: str | None = None) -> DiTBackbone:
    """Load the image backbone ``source``: "tiny", a hub id (default DiT-XL/2) or a local folder."""
    if source == TINY:
        backbone = load_dit(tiny_folder("image"), device=device, noise_seed=noise_seed)
        backbone.name = "tiny-dit"
        return backbone
    return load_dit(source, vae=vae, device=device, noise_seed=noise_seed)


def load_text_backbone(source: str = TINY, *, device: str | torch.device | None = None,
                       tokenizer: str | None = None, **settings: object) -> PlaidBackbone:
    """Load the text backbone ``source``: "tiny" or a folder holding Plaid's released weight files.

    ``settings`` go to :func:`~difffeat_tune.backbones.plaid.load_plaid` (token_length, noising,
    inversion_step, noise_seed).
    """
    if source == TINY:
        backbone = load_plaid(tiny_folder("text"), tokenizer, device=device, **settings)  # type: ignore[arg-type]
        backbone.name = "tiny-plaid"
        return backbone
    if not Path(source).expanduser().exists():
        raise BackboneError(
            f"text backbone {source!r} is neither 'tiny' nor an existing folder",
            "Plaid 1B is not on the Hugging Face hub: download release v1.0.0 of github.com/igul222/plaid "
            "(plaid1b_weights.tar.gz.00/.01/.02), unpack with `cat plaid1b_weights.tar.gz.* | tar xzf -` and "
            "pass the folder; give the tokenizer (misc/owt2_tokenizer.json of that repository) with --tokenizer",
        )
    return load_plaid(Path(source).expanduser(), tokenizer, device=device, **settings)  # type: ignore[arg-type]


__all__ = ["DEFAULT_DIT", "TINY", "load_image_backbone", "load_text_backbone", "tiny_folder"]
