"""The table of public data-set loaders by name, and :func:`load_named`.

Every loader takes the data folder ``root`` as its first argument and reads local files only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import Dataset
from difffeat_tune.data.agnews import load_ag_news
from difffeat_tune.data.cifar import load_cifar100
from difffeat_tune.data.coco import load_coco
from difffeat_tune.data.tinyimagenet import load_tiny_imagenet
from difffeat_tune.data.vg import load_vg500
from difffeat_tune.data.voc import load_voc2007


def _coco_variant(enhanced: bool) -> Callable[..., Dataset]:
    def load(root: str | Path, **options: object) -> Dataset:
        if "enhanced" in options:
            raise DataError(f"data set {'coco-enhanced' if enhanced else 'coco-plain'} fixes enhanced={enhanced}",
                            "use the name 'coco' to choose enhanced yourself")
        return load_coco(root, enhanced=enhanced, **options)  # type: ignore[arg-type]

    load.__name__ = f"load_coco_{'enhanced' if enhanced else 'plain'}"
    load.__module__ = load_coco.__module__
    load.__doc__ = f"``load_coco(root, enhanced={enhanced}, ...)``."
    load.__signature__ = inspect.signature(load_coco).replace(  # type: ignore[attr-defined]
        parameters=[p for p in inspect.signature(load_coco).parameters.values() if p.name != "enhanced"])
    return load


#: Data-set name -> loader (``root`` first, then keyword options).
LOADERS: Mapping[str, Callable[..., Dataset]] = {
    "coco": load_coco,
    "coco-enhanced": _coco_variant(True),
    "coco-plain": _coco_variant(False),
    "vg500": load_vg500,
    "voc2007": load_voc2007,
    "cifar100": load_cifar100,
    "tiny-imagenet": load_tiny_imagenet,
    "ag-news": load_ag_news,
}


def load_named(name: str, root: str | Path, **options: object) -> Dataset:
    """Load the data set ``name`` from the folder ``root``.

    Args:
        name: a key of :data:`LOADERS`.
        root: the data folder (layouts are described in each loader's module).
        **options: the loader's keyword options.

    Raises:
        DataError: for an unknown name (listing the known ones), a missing ``root``, an option the
            loader does not take (listing those it does), or any problem of the files.
    """
    loader = LOADERS.get(name)
    if loader is None:
        raise DataError(f"unknown data set {name!r}", f"known data sets: {', '.join(LOADERS)}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data set {name!r}: data folder {path} does not exist",
                        f"pass the folder that holds the {name} files; see help(difffeat_tune.data."
                        f"{loader.__module__.rsplit('.', 1)[-1]})")
    if not path.is_dir():
        raise DataError(f"data set {name!r}: {path} is a file, not a folder", "pass the data folder")
    signature = inspect.signature(loader)
    try:
        signature.bind(path, **options)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p != "root"]
        raise DataError(f"data set {name!r}: bad options {sorted(options)} ({exc})",
                        f"options of {name}: {', '.join(accepted) or 'none'}") from None
    return loader(path, **options)
