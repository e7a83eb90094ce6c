"""The "unconditional" input of a text-to-image model: empty-prompt embeddings, computed once.

PixArt, SD3, Flux and the Stable Diffusion U-Nets are conditioned on text; their unconditional
input is the embedding of the empty prompt ``""``, exactly as each pipeline computes it for
classifier-free guidance (its own ``encode_prompt``, its own tokenizers and text encoders from
``transformers``, its own sequence length). Those encoders can be far larger than the denoiser
(T5-XXL: 4.7 B parameters), so the embeddings are computed once and cached on disk under
``cache_dir("conditioning")``, keyed by everything that determines them: the family, the
pipeline class, the identity of the text-encoder and tokenizer files
(:func:`~difffeat_tune.backbones._pipeline.files_digest`), the encoding settings and the dtype.
On a cache hit the text encoders are never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from difffeat_tune._errors import BackboneError
from difffeat_tune._paths import cache_dir
from difffeat_tune.backbones._pipeline import (
    TEXT_ENCODER_DTYPE,
    PipelineFolder,
    download_hint,
    files_digest,
    pipeline_class,
)

logger = logging.getLogger(__name__)

#: The prompt whose embeddings mean "unconditional" (the pipelines' default negative prompt).
EMPTY_PROMPT = ""


@dataclass(frozen=True)
class Conditioning:
    """Cached conditioning tensors (batch dimension 1, on the CPU) and the key that names them.

    Attributes:
        tensors: e.g. ``prompt_embeds`` ``[1, L, C]``, ``pooled_projections`` ``[1, P]``, masks.
        key: a digest of everything that determines the tensors (part of the backbone fingerprint).
        cached: whether they came from the cache (``False``: computed by this call).
    """

    tensors: Mapping[str, torch.Tensor]
    key: str
    cached: bool


def conditioning_key(parts: Mapping[str, object]) -> str:
    """A short digest of ``parts`` (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_conditioning(label: str, parts: Mapping[str, object],
                        compute: Callable[[], Mapping[str, torch.Tensor]]) -> Conditioning:
    """Load the conditioning named by ``parts`` from the cache, or ``compute`` and store it.

    Args:
        label: a readable file-name prefix (the family).
        parts: what determines the tensors; its digest names the cache file.
        compute: called only on a cache miss; returns tensors with a batch dimension of 1.

    An unreadable cache file (e.g. truncated by a crash elsewhere) is recomputed and replaced;
    writes are atomic, so concurrent processes never read half a file.
    """
    key = conditioning_key(parts)
    path = cache_dir("conditioning") / f"{label}-{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            logger.info("empty-prompt conditioning from the cache: %s", path)
            return Conditioning(tensors=tensors, key=key, cached=True)
        except (OSError, SafetensorError) as exc:
            logger.warning("recomputing the unreadable conditioning cache %s (%s)", path, exc)
    logger.info("computing the empty-prompt conditioning of %s (the text encoders are loaded once)", label)
    tensors = {name: _stored(value) for name, value in compute().items()}
    _atomic_save(path, tensors, {k: str(v) for k, v in parts.items()})
    return Conditioning(tensors=tensors, key=key, cached=False)


#: ``encode(pipeline, device) -> tensors``: the family's call of its pipeline's ``encode_prompt``.
Encode = Callable[[DiffusionPipeline, torch.device], Mapping[str, torch.Tensor]]


def pipeline_conditioning(folder: PipelineFolder, family: str, *, encode: Encode, settings: Mapping[str, object],
                          components: Mapping[str, object], device: torch.device) -> Conditioning:
    """The empty-prompt conditioning of a pipeline, from the cache or from its own text encoders.

    Args:
        folder: the pipeline folder.
        family: the family's name (cache-file prefix, part of the key).
        encode: calls the pipeline's ``encode_prompt`` on :data:`EMPTY_PROMPT`.
        settings: encoding settings that change the result (e.g. the sequence length).
        components: already-loaded parts (denoiser, VAE) and parts to skip (``None``), passed to
            the pipeline's ``from_pretrained`` so only the text encoders and tokenizers load.
        device: where the text encoders run.
    """
    text_parts = [*folder.subfolders("text_encoder"), *folder.subfolders("tokenizer")]
    parts = {"family": family, "pipeline": folder.class_name, "files": files_digest(folder.path, text_parts),
             "prompt": EMPTY_PROMPT, "dtype": str(TEXT_ENCODER_DTYPE), **settings}

    def compute() -> Mapping[str, torch.Tensor]:
        try:
            pipe = pipeline_class(folder).from_pretrained(str(folder.path), **components)
        except (OSError, ValueError, KeyError) as exc:
            raise BackboneError(f"cannot load the text encoders of {folder.path}: {exc}",
                                download_hint(family, folder.hub_id)) from exc
        for name in folder.subfolders("text_encoder"):
            # Loaded in the checkpoint's dtype, run in TEXT_ENCODER_DTYPE (an exact upcast of the weights).
            getattr(pipe, name).to(device=device, dtype=TEXT_ENCODER_DTYPE)
        with torch.inference_mode():
            return encode(pipe, device)

    return cached_conditioning(family, parts, compute)


def _stored(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).contiguous()


def _atomic_save(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(dict(tensors), tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
