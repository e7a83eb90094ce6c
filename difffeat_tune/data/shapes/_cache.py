"""The cache of generated "shapes" data: one ``.npz`` file per seed, sizes and configuration.

Captions and the cache key are stored inside the file as UTF-8 JSON, so one atomic rename
publishes everything; a file that cannot be read, or whose key or shapes do not match, is
regenerated, not trusted.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from difffeat_tune._io import atomic_write
from difffeat_tune.data.shapes._config import GENERATOR_VERSION, SPLITS, ShapesConfig
from difffeat_tune.data.shapes._scene import _RawSplit

logger = logging.getLogger(__name__)

def _write_cache(path: Path, key: str, raw: Mapping[str, _RawSplit]) -> None:
    meta = {"key": key, "version": GENERATOR_VERSION,
            "captions": {name: list(split.captions) for name, split in raw.items()}}
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for name, split in raw.items():
        arrays[f"{name}_pixels"] = split.pixels
        arrays[f"{name}_labels"] = split.labels
    try:
        atomic_write(path, lambda tmp: _savez(tmp, arrays))
    except OSError as exc:
        logger.warning("could not write the shapes cache %s (%s); continuing without it", path, exc)


def _savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to a bare name
        np.savez(handle, **arrays)


def _read_cache(path: Path, key: str, sizes: Mapping[str, int], cfg: ShapesConfig) -> dict[str, _RawSplit] | None:
    """The cached data, or ``None`` if the file is missing, unreadable or does not match ``key``."""
    if not path.exists():
        return None
    size = cfg.image_size
    n_cat = len(cfg.categories)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            if meta.get("key") != key:
                raise ValueError(f"key {meta.get('key')!r} != {key!r}")
            raw = {}
            for name in SPLITS:
                n = sizes[name]
                pixels, labels = npz[f"{name}_pixels"], npz[f"{name}_labels"]
                captions = meta["captions"][name]
                if (pixels.shape != (n, size, size, 3) or pixels.dtype != np.uint8
                        or labels.shape != (n, n_cat) or labels.dtype != np.int8
                        or not np.isin(labels, (0, 1)).all()
                        or len(captions) != n or not all(isinstance(c, str) and c for c in captions)):
                    raise ValueError(f"split {name!r} has unexpected shapes or types")
                raw[name] = _RawSplit(pixels=pixels, labels=labels, captions=tuple(captions))
            return raw
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        logger.warning("shapes cache %s is unreadable or stale (%s): regenerating it", path, exc)
        return None
