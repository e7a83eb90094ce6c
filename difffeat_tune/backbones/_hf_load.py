"""Loading transformers checkpoints for the transformers-based families, with errors that say what to do.

A source is a Hugging Face hub id or a local folder (what ``huggingface-cli download ID
--local-dir DIR`` writes: ``config.json``, the weights, tokenizer or image-processor files).
Offline, a hub id loads only from the Hugging Face cache; a missing checkpoint names the
download command and where to put its result.

Custom model code (``config.json`` with ``auto_map`` and a ``modeling_*.py``, as MDLM and LLaDA
checkpoints ship) runs only from a local folder: the user chose that folder and its code, so
it loads with ``trust_remote_code=True``; a hub id never runs downloaded code.

The blocks of a model are found by one rule, :func:`find_blocks`: the list of identical
modules (``nn.ModuleList``) holding the most parameters, which is the layer stack of every
Transformer here (``encoder.layer`` of BERT and DINOv2, ``encoder.layers`` of CLIP and SigLIP,
``encoder.block`` of T5, ``backbone.blocks`` of MDLM, ``model.transformer.blocks`` of LLaDA).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from difffeat_tune._device import autocast_dtype
from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones._base import weights_digest
from difffeat_tune.backbones._family import looks_like_path

logger = logging.getLogger(__name__)

#: Config attributes that hold a model's hidden width, in the order they are tried.
WIDTH_ATTRIBUTES = ("hidden_size", "d_model", "hidden_dim", "dim", "n_embd")
#: Config entries that do not change features (bookkeeping of the library that saved the file).
_VOLATILE_CONFIG = frozenset({"transformers_version", "dtype", "torch_dtype"})
#: Errors transformers raises for a missing, unreadable or unsupported checkpoint.
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError)
#: The ``config.json`` entry through which a checkpoint maps Auto classes to its own code.
AUTO_MAP_KEY = "auto_map"


@dataclass(frozen=True)
class Checkpoint:
    """Where a family reads a model: a hub id or a local folder.

    Attributes:
        source: as the user gave it.
        location: the hub id, or the folder's resolved path.
        local: whether ``location`` is a local folder.
        family: the family reading it (named in messages).
        example: a hub id to name in download hints (the source itself when it is a hub id).
    """

    source: str
    location: str
    local: bool
    family: str
    example: str

    @property
    def trusted(self) -> bool:
        """Custom code runs only from a local folder (``trust_remote_code``)."""
        return self.local

    def hint(self) -> str:
        """What to download and where to put it."""
        command = f"`huggingface-cli download {self.example} --local-dir DIR`"
        if self.local:
            return (f"{self.location} must hold what {command} writes (config.json, the weights, and the "
                    "tokenizer or image-processor files); download it on a machine with network and pass DIR")
        return (f"on a machine with network run {command}, copy DIR here and pass `{self.family}:DIR` "
                "(offline, a hub id loads only from the Hugging Face cache, HF_HOME)")


def resolve_checkpoint(source: str, family: str, example: str | None = None) -> Checkpoint:
    """Decide whether ``source`` is a local folder or a hub id.

    Args:
        source: a hub id (``org/name``) or a folder path.
        family: the family name (for messages).
        example: the hub id to name in download hints when ``source`` is a folder.

    Raises:
        BackboneError: ``source`` is empty, a file, or a path (``/``, ``.``, ``~``) that does not exist.
    """
    if not source or not source.strip():
        raise BackboneError(f"{family}: no checkpoint given",
                            f"pass a hub id or a folder, e.g. `{family}:{example or 'org/name'}`")
    path = Path(source).expanduser()
    hub_example = example or source
    if path.is_dir():
        return Checkpoint(source, str(path.resolve()), True, family, hub_example)
    if path.exists():
        raise BackboneError(f"{family} checkpoint {path} is a file, not a folder",
                            "pass the folder that holds config.json and the weights")
    if looks_like_path(source):
        checkpoint = Checkpoint(source, str(path), True, family, hub_example)
        raise BackboneError(f"{family} checkpoint folder {path} does not exist", checkpoint.hint())
    return Checkpoint(source, source, False, family, source)


def model_dtype(device: torch.device) -> torch.dtype:
    """Weights' dtype on ``device``: bfloat16 on CUDA (large models fit), float32 on CPU."""
    return autocast_dtype(device) or torch.float32


def load_model(
    checkpoint: Checkpoint,
    loader: Callable[..., Any],
    *,
    what: str,
    device: torch.device,
    **kwargs: object,
) -> tuple[nn.Module, set[str]]:
    """Load a model with ``loader`` (a ``from_pretrained``), in eval mode, frozen, on ``device``.

    Custom code is trusted from local folders only (:attr:`Checkpoint.trusted`).

    Returns:
        The model and the names of the weights the checkpoint did not hold (left at their
        random initialisation): check them with :func:`check_missing` once the blocks are known.

    Raises:
        BackboneError: the checkpoint cannot be found or read, or its own code cannot be imported.
    """
    try:
        with _quiet_load_report():
            model, info = loader(checkpoint.location, dtype=model_dtype(device), output_loading_info=True,
                                 trust_remote_code=checkpoint.trusted, **kwargs)
    except ImportError as exc:
        raise BackboneError(
            f"the code of {what} {checkpoint.source!r} needs a module that is not installed: {exc}",
            "install it in this environment, or edit the folder's modeling file not to need it (MDLM-OWT's "
            "modeling_mdlm.py imports flash_attn, which needs CUDA, and einops)",
        ) from exc
    except _LOAD_ERRORS as exc:
        raise BackboneError(f"cannot load the {what} from {checkpoint.source!r}: {exc}", checkpoint.hint()) from exc
    missing = set((info or {}).get("missing_keys") or ())
    logger.info("loaded %s %s (%s) on %s", what, checkpoint.location, type(model).__name__, device)
    return model.to(device).eval().requires_grad_(False), missing


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' table of unused checkpoint weights (a CLIP checkpoint holds two towers).

    Weights the model misses are checked and reported by :func:`check_missing` instead.
    """
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def custom_auto_class(checkpoint: Checkpoint, preferred: Iterable[str]) -> str | None:
    """The first of ``preferred`` Auto-class names a local folder's ``config.json`` maps to its own code."""
    if not checkpoint.local:
        return None
    try:
        raw = json.loads((Path(checkpoint.location) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    auto_map = raw.get(AUTO_MAP_KEY) if isinstance(raw, dict) else None
    if not isinstance(auto_map, dict):
        return None
    return next((name for name in preferred if name in auto_map), None)


def find_blocks(model: nn.Module, what: str) -> tuple[str, nn.ModuleList]:
    """The model's layer stack: the ``nn.ModuleList`` of one module type with the most parameters.

    Ties go to the shallower list. Returns its dotted path and the list.

    Raises:
        BackboneError: the model has no such list.
    """
    best: tuple[tuple[int, int], str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        rank = (sum(p.numel() for p in module.parameters()), -name.count("."))
        if rank[0] > 0 and (best is None or rank > best[0]):
            best = (rank, name, module)
    if best is None:
        raise BackboneError(
            f"{what} ({type(model).__name__}) has no list of identical layers to read blocks from",
            "use a Transformer checkpoint (its layers are an nn.ModuleList)",
        )
    return best[1], best[2]


def check_missing(model: nn.Module, missing: set[str], blocks_path: str, checkpoint: Checkpoint, what: str) -> None:
    """Refuse weights missing on the feature path: in the blocks or the input embeddings.

    Other missing weights (a pooler or output head the features never reach) are only logged.

    Raises:
        BackboneError: a block or the input embedding would keep random weights.
    """
    if not missing:
        return
    prefixes = [f"{blocks_path}."]
    try:
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
    except (NotImplementedError, AttributeError):
        embeddings = None
    prefixes += [f"{name}." for name, module in model.named_modules() if embeddings is not None and module is embeddings]
    fatal = sorted(k for k in missing if any(k.startswith(p) for p in prefixes))
    if fatal:
        shown = ", ".join(fatal[:5]) + (f", ... ({len(fatal)} in all)" if len(fatal) > 5 else "")
        raise BackboneError(
            f"{what} {checkpoint.source!r} lacks weights its features need: {shown}",
            f"the checkpoint does not match this model class; {checkpoint.hint()}",
        )
    logger.warning("%s %s: weights not in the checkpoint (not used by the features): %s",
                   what, checkpoint.source, ", ".join(sorted(missing)))


def hidden_width(config: object, what: str) -> int:
    """The hidden width of a transformers config (the width of every block's output).

    Raises:
        BackboneError: the config names no width.
    """
    for attr in WIDTH_ATTRIBUTES:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise BackboneError(f"{what}: its config ({type(config).__name__}) names no hidden width",
                        f"config.json should hold one of {', '.join(WIDTH_ATTRIBUTES)}")


def model_fingerprint(model: nn.Module, blocks_path: str, **extra: object) -> str:
    """A hash of the model class, its configuration, its weights and where its blocks are."""
    config = getattr(model, "config", None)
    raw = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    payload = {
        "architecture": type(model).__name__,
        "config": {k: v for k, v in raw.items() if not k.startswith("_") and k not in _VOLATILE_CONFIG},
        "weights": weights_digest(model),
        "blocks": blocks_path,
        **extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def precision_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (recorded in settings)."""
    return str(dtype).removeprefix("torch.")
