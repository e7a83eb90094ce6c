"""Find a diffusers pipeline folder (hub id or local path) and load its parts with clear errors.

A source is either a local folder laid out as ``DiffusionPipeline.save_pretrained`` writes it
(``model_index.json`` plus one subfolder per component), or a Hugging Face hub id. A hub id is
resolved to the same layout with :func:`huggingface_hub.snapshot_download`, restricted to the
files a pipeline loads (configs, tokenizer files and the non-variant ``safetensors`` weights; no
safety checker), so every family loads from a local folder with one code path. With
``HF_HUB_OFFLINE=1`` (or no network) only the local Hugging Face cache is read.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import diffusers
import torch
from diffusers import AutoencoderKL

from difffeat_tune._errors import BackboneError

logger = logging.getLogger(__name__)

#: Files of a pipeline that loading reads (fp16/ema variants and ``.bin`` duplicates are not).
ALLOW_PATTERNS = (
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/*.model",
    "*/diffusion_pytorch_model.safetensors",
    "*/diffusion_pytorch_model-*-of-*.safetensors",
    "*/model.safetensors",
    "*/model-*-of-*.safetensors",
)
#: Components a feature extractor never runs.
IGNORE_PATTERNS = ("safety_checker/*",)
#: Files up to twice this size are hashed whole; larger ones by size, head and tail (see
#: :func:`files_digest`): hashing a 9 GB T5 on every load would cost more than using it.
DIGEST_SAMPLE_BYTES = 1 << 20

#: The text encoders run once per pipeline, in float32 on every device, so the cached conditioning
#: (and so the feature-store key) does not depend on where it was computed. T5-XXL (SD3, Flux,
#: PixArt) needs about 19 GB for that one call.
TEXT_ENCODER_DTYPE = torch.float32

M = TypeVar("M")


@dataclass(frozen=True)
class PipelineFolder:
    """A local pipeline folder and what its ``model_index.json`` says.

    Attributes:
        path: the folder.
        source: how the user named it (hub id or path), for messages.
        hub_id: the hub id to name in download hints (the source, or the family's default when
            the source is a local folder).
        class_name: the pipeline class (``_class_name`` of ``model_index.json``).
        components: component name -> ``[library, class]`` (``[None, None]`` when absent).
    """

    path: Path
    source: str
    hub_id: str
    class_name: str
    components: dict[str, list[str | None]]

    def subfolders(self, prefix: str) -> list[str]:
        """Components present in the pipeline whose name starts with ``prefix`` (sorted)."""
        return sorted(name for name, spec in self.components.items()
                      if name.startswith(prefix) and spec and spec[0] is not None)


def download_hint(family: str, hub_id: str) -> str:
    """What to run to get a checkpoint onto a machine without network, and where it goes."""
    return (
        f"on a machine with network run `hf download {hub_id} --local-dir DIR` (`huggingface-cli download` "
        f"with older huggingface_hub; gated models need their licence accepted on the hub and `hf auth login`), "
        f"copy DIR here and pass `{family}:DIR`, or fill the Hugging Face cache (HF_HOME) there"
    )


def resolve_pipeline(source: str, *, family: str, pipelines: Sequence[str], required: Sequence[str],
                     default_source: str) -> PipelineFolder:
    """Find the pipeline folder of ``source`` and check that it is one this family reads.

    Args:
        source: a local folder or a hub id.
        family: the family's name (for messages).
        pipelines: pipeline classes this family accepts (``_class_name`` of ``model_index.json``).
        required: subfolders that must exist.
        default_source: the family's default hub id (named in hints about a local folder).

    Raises:
        BackboneError: the folder or a subfolder is missing, the hub id cannot be resolved, or
            ``model_index.json`` names another kind of pipeline.
    """
    local = Path(source).expanduser()
    hub_id = default_source if local.exists() else source
    if local.exists():
        if not local.is_dir():
            raise BackboneError(f"{family} source {local} is a file, not a pipeline folder",
                                "pass the folder that holds model_index.json")
        folder = local
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise BackboneError(f"{family} pipeline folder {source} does not exist",
                            f"pass an existing folder (with model_index.json) or a hub id `{family}:<owner>/<name>`; "
                            + download_hint(family, default_source))
    else:
        folder = _snapshot(source, family)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise BackboneError(f"{family} pipeline folder {folder} has no model_index.json",
                            download_hint(family, hub_id))
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise BackboneError(f"{index_path} is not valid JSON: {exc}", "re-download the pipeline") from exc
    class_name = str(index.get("_class_name", ""))
    if class_name not in pipelines:
        raise BackboneError(
            f"{index_path} describes a {class_name or 'unnamed'} pipeline, not one the {family} family reads "
            f"({', '.join(pipelines)})",
            "choose the family that matches the checkpoint (see `difffeat-tune backbones`)",
        )
    components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    result = PipelineFolder(path=folder, source=source, hub_id=hub_id, class_name=class_name, components=components)
    # The text encoders and tokenizers the pipeline lists are needed too: they define "unconditional".
    needed = [*required, *result.subfolders("text_encoder"), *result.subfolders("tokenizer")]
    missing = [sub for sub in dict.fromkeys(needed) if not (folder / sub).is_dir()]
    if missing:
        raise BackboneError(f"{family} pipeline folder {folder} lacks subfolder(s) {', '.join(missing)}",
                            download_hint(family, hub_id))
    return result


def _snapshot(hub_id: str, family: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=list(ALLOW_PATTERNS),
                                      ignore_patterns=list(IGNORE_PATTERNS)))
    except Exception as exc:  # offline cache miss, unknown or gated repo, network error: one answer
        raise BackboneError(f"cannot get the {family} pipeline {hub_id!r} (no such folder here, and as a hub id: "
                            f"{type(exc).__name__}: {exc})",
                            download_hint(family, hub_id)) from exc


def load_component(cls: type[M], folder: PipelineFolder, subfolder: str, family: str) -> M:
    """``cls.from_pretrained(folder, subfolder=...)`` with a :class:`BackboneError` naming the folder."""
    try:
        return cls.from_pretrained(str(folder.path), subfolder=subfolder)  # type: ignore[attr-defined]
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(f"cannot load {cls.__name__} from {folder.path / subfolder}: {exc}",
                            download_hint(family, folder.hub_id)) from exc


def load_vae(folder: PipelineFolder, vae: str | None, family: str) -> AutoencoderKL:
    """The pipeline's own VAE, or a separate one (hub id or folder) when ``vae`` is given."""
    if vae is None:
        return load_component(AutoencoderKL, folder, "vae", family)
    try:
        return AutoencoderKL.from_pretrained(str(Path(vae).expanduser()) if Path(vae).expanduser().exists() else vae)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load the VAE {vae!r}: {exc}", download_hint(family, vae)) from exc


def read_scheduler_config(folder: PipelineFolder) -> dict[str, object]:
    """``scheduler/scheduler_config.json`` of the pipeline, class name included."""
    path = folder.path / "scheduler" / "scheduler_config.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneError(f"cannot read {path}: {exc}", "re-download the pipeline's scheduler/ folder") from exc


def pipeline_class(folder: PipelineFolder) -> type[diffusers.DiffusionPipeline]:
    """The diffusers class named by ``model_index.json``."""
    cls = getattr(diffusers, folder.class_name, None)
    if cls is None:
        raise BackboneError(f"diffusers {diffusers.__version__} has no pipeline class {folder.class_name}",
                            "upgrade diffusers")
    return cls


def call_defaults(cls: type, parameters: Iterable[str]) -> dict[str, object]:
    """The defaults of those ``parameters`` that ``cls.__call__`` has (e.g. a pipeline's
    ``max_sequence_length`` or ``guidance_scale``); parameters it lacks are left out."""
    found = inspect.signature(cls.__call__).parameters
    return {name: found[name].default for name in parameters
            if name in found and found[name].default is not inspect.Parameter.empty}


def files_digest(folder: Path, subfolders: Iterable[str]) -> str:
    """A content identity of the files under ``subfolders``, without reading multi-GB weights whole.

    Each file contributes its path relative to ``folder``, its size, and its bytes: all of them up
    to ``2 * DIGEST_SAMPLE_BYTES``, otherwise the first and last ``DIGEST_SAMPLE_BYTES`` (for a
    ``safetensors`` file that is the header, naming every tensor with its shape and offset, and
    the first and last weights). Copies of a pipeline in two places get the same digest.
    """
    h = hashlib.sha256()
    for sub in sorted(subfolders):
        for path in sorted(p for p in (folder / sub).rglob("*") if p.is_file() and not p.name.startswith(".")):
            size = path.stat().st_size
            h.update(f"{path.relative_to(folder).as_posix()}\x1f{size}\x1f".encode())
            with path.open("rb") as fh:
                if size <= 2 * DIGEST_SAMPLE_BYTES:
                    h.update(fh.read())
                else:
                    h.update(fh.read(DIGEST_SAMPLE_BYTES))
                    fh.seek(size - DIGEST_SAMPLE_BYTES)
                    h.update(fh.read(DIGEST_SAMPLE_BYTES))
    return h.hexdigest()[:16]


def check_resolution(resolution: int, multiple: int, family: str) -> int:
    """Raise unless ``resolution`` is a positive multiple of ``multiple`` pixels."""
    if not isinstance(resolution, int) or resolution < multiple or resolution % multiple:
        raise BackboneError(f"{family} resolution {resolution!r} is not a positive multiple of {multiple} pixels",
                            f"choose a side that the VAE and patching divide, e.g. {multiple * max(1, 512 // multiple)}")
    return resolution
