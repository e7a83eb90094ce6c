"""Where the package caches what it generates (embedded data, tiny models)."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the cache (tests point it at a temporary folder).
CACHE_ENV = "DIFFFEAT_TUNE_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$DIFFFEAT_TUNE_CACHE`` (default ``~/.cache/difffeat-tune``) joined with ``parts``, created."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "difffeat-tune")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
