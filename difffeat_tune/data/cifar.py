"""CIFAR-100 (single-label, 100 fine classes), image-only, held in memory.

Expected folder layout (``cifar-100-python.tar.gz`` extracted)::

    root/cifar-100-python/
        train    pickle: {b"data": uint8 [50000, 3072] (R, G, B planes of 32 x 32), b"fine_labels": [...]}
        test     pickle: the same with 10,000 rows
        meta     pickle: {b"fine_label_names": [b"apple", ...], ...}

``root`` may also be the ``cifar-100-python`` folder itself. Splits "train" and "test"; row ids
are ``"train-00000"`` ... (position in the file: the pickles hold no image id). Labels are one-hot
int8 ``[N, 100]``; images are served from memory as 32 x 32 RGB.

The pickles are read with a restricted unpickler that only accepts the numpy array
reconstruction functions such files need, so a tampered file cannot run code.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import ArrayImages, Dataset, Split
from difffeat_tune.data._files import require_file, require_root

logger = logging.getLogger(__name__)

DATASET = "CIFAR-100"
FOLDER = "cifar-100-python"
SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_SIDE = 32
CHANNELS = 3
ROW_LENGTH = CHANNELS * IMAGE_SIDE * IMAGE_SIDE
#: The only globals a CIFAR pickle may reference: numpy's array reconstruction, and the bytes
#: decoding that Python 3 writes into protocol-2 pickles (a re-pickled copy).
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
})
_HINT = "download cifar-100-python.tar.gz from the CIFAR site and extract it into the data folder"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            if module == "numpy.core.multiarray":  # numpy 2 renamed numpy.core to numpy._core
                try:
                    import numpy._core.multiarray  # noqa: F401

                    module = "numpy._core.multiarray"
                except ImportError:
                    pass
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR pickle")


def _unpickle(path: Path) -> Mapping[bytes, object]:
    require_file(path, DATASET, _HINT)
    try:
        with path.open("rb") as f:
            data = _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, OSError) as exc:
        raise DataError(f"{DATASET}: cannot read {path} as a CIFAR-100 pickle ({exc})",
                        "the file is corrupt or not from cifar-100-python.tar.gz: re-download it") from exc
    if not isinstance(data, dict):
        raise DataError(f"{DATASET}: {path} does not hold a dictionary", _HINT)
    return data


def _field(data: Mapping[bytes, object], key: bytes, path: Path) -> object:
    if key not in data:
        raise DataError(f"{DATASET}: {path} has no {key!r} entry", "it is not a CIFAR-100 python pickle: " + _HINT)
    return data[key]


def load_cifar100(root: str | Path) -> Dataset:
    """Load CIFAR-100 (fine labels) from the python pickles (layout in the module docstring).

    Args:
        root: the folder holding ``cifar-100-python/`` (or that folder itself).

    Returns:
        An image-only single-label :class:`Dataset` named "cifar100" with splits "train" and "test".

    Raises:
        DataError: naming the file for a missing, unreadable or malformed pickle, or a label outside
            the class list (with its row).
    """
    base = require_root(root, DATASET)
    folder = base / FOLDER if (base / FOLDER).is_dir() else base
    meta_path = folder / "meta"
    raw_names = _field(_unpickle(meta_path), b"fine_label_names", meta_path)
    if not isinstance(raw_names, list) or not raw_names:
        raise DataError(f"{DATASET}: {meta_path}: fine_label_names is not a non-empty list", _HINT)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw_names)
    splits: dict[str, Split] = {}
    for split in SPLITS:
        path = folder / split
        data = _unpickle(path)
        pixels = np.asarray(_field(data, b"data", path))
        fine = np.asarray(_field(data, b"fine_labels", path))
        if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != ROW_LENGTH:
            raise DataError(f"{DATASET}: {path}: data is {pixels.dtype} {pixels.shape}, "
                            f"expected uint8 [N, {ROW_LENGTH}]", _HINT)
        if fine.ndim != 1 or len(fine) != len(pixels) or not np.issubdtype(fine.dtype, np.integer):
            raise DataError(f"{DATASET}: {path}: fine_labels has shape {fine.shape} for {len(pixels)} images", _HINT)
        bad = np.flatnonzero((fine < 0) | (fine >= len(names)))
        if len(bad):
            raise DataError(f"{DATASET}: {path}: row {int(bad[0])} has fine label {int(fine[bad[0]])}, "
                            f"outside 0..{len(names) - 1} ({len(bad)} such rows)", _HINT)
        labels = np.zeros((len(fine), len(names)), dtype=np.int8)
        labels[np.arange(len(fine)), fine] = 1
        images = np.ascontiguousarray(pixels.reshape(-1, CHANNELS, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1))
        width = max(5, len(str(len(fine) - 1)))
        splits[split] = Split(name=split, ids=tuple(f"{split}-{i:0{width}d}" for i in range(len(fine))),
                              labels=labels, captions=None, images=ArrayImages(images))
        logger.info("%s %s: %d images", DATASET, split, len(fine))
    return Dataset(name="cifar100", label_names=names, task="singlelabel", splits=splits)
