"""Data sets: the embedded "shapes" data, public data sets from local folders, users' manifests.

``load_dataset("shapes")`` gives the embedded data, ``load_dataset("shapes-enhanced")`` its
COCO-enhanced-style variant, ``load_dataset("coco-enhanced", root="/data/coco")`` a public data set
read from its folder (see :data:`DATASETS`), and ``load_dataset("path/to/metadata.jsonl")`` (or a
folder holding a ``metadata.*`` file) a user's manifest.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from difffeat_tune._errors import ConfigError, DataError
from difffeat_tune.data._base import IGNORE, ArrayImages, Dataset, FileImages, ImageSource, Split
from difffeat_tune.data._loaders import DATASETS, LOADERS, DatasetKind, load_named
from difffeat_tune.data.manifest import load_manifest
from difffeat_tune.data.shapes import ShapesConfig, load_shapes

__all__ = [
    "DATASETS",
    "IGNORE",
    "ArrayImages",
    "Dataset",
    "DatasetKind",
    "FileImages",
    "ImageSource",
    "LOADERS",
    "ShapesConfig",
    "Split",
    "available_datasets",
    "load_dataset",
    "load_manifest",
    "load_shapes",
]


def available_datasets() -> tuple[str, ...]:
    """The named data sets (any manifest path works too)."""
    return tuple(DATASETS)


def load_dataset(name_or_path: str | Path, **options: object) -> Dataset:
    """Load a named data set, or a manifest by path.

    Args:
        name_or_path: a name of :data:`DATASETS` ("shapes", "shapes-enhanced", or a public data
            set read from local files: ``coco``, ``coco-enhanced``, ``vg500``, ``voc2007``,
            ``cifar100``, ``tiny-imagenet``, ``ag-news``: pass ``root=``), or the path of a
            manifest file (.jsonl, .csv, .parquet) or of a folder holding ``metadata.jsonl`` /
            ``.csv`` / ``.parquet``.
        **options: passed to the loader, for example ``seed=1``, ``split="train"`` or ``root=...``.

    Raises:
        DataError: if the name is neither a named data set nor an existing path, or the data
            are bad.
        ConfigError: if an option is not accepted by a manifest's loader.
    """
    key = str(name_or_path)
    if key in DATASETS:
        root = options.pop("root", None)
        return load_named(key, root, **options)  # type: ignore[arg-type]
    path = Path(name_or_path).expanduser()
    if path.exists():
        try:
            inspect.signature(load_manifest).bind(path, **options)
        except TypeError as exc:
            params = [p.name for p in inspect.signature(load_manifest).parameters.values() if p.kind is p.KEYWORD_ONLY]
            raise ConfigError(f"bad options for manifest {path}: {exc}", f"accepted options: {', '.join(params)}") from None
        return load_manifest(path, **options)  # type: ignore[arg-type]
    raise DataError(f"unknown data set {key!r}: not a named data set and no such file or folder",
                    f"available: {', '.join(available_datasets())}, or the path of a manifest (.jsonl, .csv, .parquet) "
                    "or of a folder holding metadata.jsonl / .csv / .parquet")
