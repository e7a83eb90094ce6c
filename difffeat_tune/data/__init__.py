"""Data sets: the embedded "shapes" data and users' own manifests, behind one small interface.

``load_dataset("shapes")`` gives the embedded data, ``load_dataset("shapes-enhanced")`` its
COCO-enhanced-style variant, and ``load_dataset("path/to/metadata.jsonl")`` (or a folder holding
a ``metadata.*`` file) a user's manifest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from difffeat_tune._errors import ConfigError, DataError
from difffeat_tune.data._base import IGNORE, ArrayImages, Dataset, FileImages, ImageSource, Split
from difffeat_tune.data._loaders import LOADERS, load_named
from difffeat_tune.data.manifest import load_manifest
from difffeat_tune.data.shapes import ShapesConfig, load_shapes

__all__ = [
    "IGNORE",
    "ArrayImages",
    "Dataset",
    "FileImages",
    "ImageSource",
    "ShapesConfig",
    "Split",
    "LOADERS",
    "available_datasets",
    "load_dataset",
    "load_manifest",
    "load_shapes",
]

#: Built-in data set names -> (loader, options the name fixes).
_BUILTIN: Mapping[str, tuple[Callable[..., Dataset], Mapping[str, object]]] = MappingProxyType({
    "shapes": (load_shapes, MappingProxyType({"enhanced": False})),
    "shapes-enhanced": (load_shapes, MappingProxyType({"enhanced": True})),
})


def available_datasets() -> tuple[str, ...]:
    """The built-in data set names: embedded ones, then those read from a ``root`` folder (any manifest path works too)."""
    return (*_BUILTIN, *LOADERS)


def _call(loader: Callable[..., Dataset], what: str, *args: object, **options: object) -> Dataset:
    try:
        inspect.signature(loader).bind(*args, **options)
    except TypeError as exc:
        params = [p.name for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY]
        raise ConfigError(f"bad options for {what}: {exc}", f"accepted options: {', '.join(params)}") from None
    return loader(*args, **options)


def load_dataset(name_or_path: str | Path, **options: object) -> Dataset:
    """Load a built-in data set by name, or a manifest by path.

    Args:
        name_or_path: "shapes", "shapes-enhanced", a public data set read from local files
            (``coco``, ``coco-enhanced``, ``vg500``, ``voc2007``, ``cifar100``, ``tiny-imagenet``,
            ``ag-news``: pass ``root=``), or the path of a manifest file (.jsonl, .csv, .parquet) or
            of a folder holding ``metadata.jsonl`` / ``.csv`` / ``.parquet``.
        **options: passed to the loader (:func:`load_shapes`, :func:`load_manifest` or the
            public data set's loader), for example ``seed=1``, ``split="train"`` or ``root=...``.

    Returns:
        The data set.

    Raises:
        DataError: if the name is neither a built-in data set nor an existing path, or the data
            are bad.
        ConfigError: if an option is not accepted by the loader.
    """
    key = str(name_or_path)
    if key in _BUILTIN:
        loader, fixed = _BUILTIN[key]
        clash = [k for k in fixed if k in options and options[k] != fixed[k]]
        if clash:
            raise ConfigError(f"data set {key!r} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}",
                              f"drop the option, or use {', '.join(n for n in _BUILTIN if n != key)}")
        return _call(loader, f"data set {key!r}", **{**options, **fixed})
    if key in LOADERS:
        root = options.pop("root", None)
        if root is None:
            raise DataError(f"data set {key!r} is read from local files: give its folder",
                            f"pass --root PATH (Python: root=PATH); see help(difffeat_tune.data.{_module_of(key)})")
        return load_named(key, root, **options)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _call(load_manifest, f"manifest {path}", path, **options)
    raise DataError(f"unknown data set {key!r}: not a built-in name and no such file or folder",
                    f"available: {', '.join(available_datasets())}, or the path of a manifest (.jsonl, .csv, .parquet) "
                    "or of a folder holding metadata.jsonl / .csv / .parquet")


def _module_of(name: str) -> str:
    return LOADERS[name].__module__.rsplit(".", 1)[-1]
