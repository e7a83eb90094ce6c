"""Where the package caches what it generates (embedded data, tiny models), and local folder options."""

from __future__ import annotations

import os
import re
from pathlib import Path

from difffeat_tune._errors import ConfigError

#: Environment variable that moves the cache (tests point it at a temporary folder).
CACHE_ENV = "DIFFFEAT_TUNE_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$DIFFFEAT_TUNE_CACHE`` (default ``~/.cache/difffeat-tune``) joined with ``parts``, created."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "difffeat-tune")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


#: ``scheme://`` at the start of a location; also its collapsed form ``scheme:/``, which is what
#: ``Path("s3://bucket/x")`` keeps. Two letters at least: ``C:/`` is a Windows drive.
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/")


def local_folder(value: str | os.PathLike[str], option: str) -> Path:
    """``value`` as a local (or shared-filesystem) folder path; a URI the package cannot serve is refused.

    ``file://`` URIs are accepted and become paths. Anything else with a scheme (``s3://``,
    ``gs://``, ``hdfs://``...) would otherwise turn into a local folder named after the scheme.

    Args:
        value: a path, or a ``file://`` URI.
        option: how the user gave it (``--features``, ``StoreSettings.features``), for the error.

    Raises:
        ConfigError: ``value`` is a URI with another scheme.

    Example:
        >>> local_folder("file:///data/features", "--features")
        PosixPath('/data/features')
    """
    text = os.fspath(value)
    match = _URI.match(text)
    if match is None:
        return Path(text)
    if match["scheme"].lower() == "file":
        return Path(re.sub(r"^file:/+", "/", text, flags=re.IGNORECASE))
    shown = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", text)  # Path() collapsed the "//"
    shown = re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", shown)  # never print a secret in the URI
    raise ConfigError(f"{option} {shown}: {match['scheme']}:// locations are not supported; this needs a local "
                      "or shared-filesystem folder",
                      f"give {option} a folder path (a file:// URI is fine); copy the store to or from object "
                      "storage with your storage tool")
