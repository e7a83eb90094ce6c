"""Where the package caches what it generates (embedded data, tiny models), local folder options, the store's location."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from difffeat_tune._errors import ConfigError

if TYPE_CHECKING:  # pyarrow is imported only when a bucket is named (``--help`` stays light)
    from difffeat_tune._store_fs import ObjectPath

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
                      f"give {option} a folder path (a file:// URI is fine); only the feature store (--features) "
                      "can be in object storage", field=option)


def store_location(value: str | os.PathLike[str], option: str) -> Path | ObjectPath:
    """The feature store's location: a local folder (as :func:`local_folder`) or an object-store URI.

    Any URI that :meth:`pyarrow.fs.FileSystem.from_uri` opens is accepted (``s3://bucket/prefix``,
    ``gs://...``, ``s3://bucket/prefix?endpoint_override=host:port&scheme=http``); it is parsed
    here and opened on first use. A ``//`` that :class:`~pathlib.Path` collapsed is restored.

    Args:
        value: a path, a ``file://`` URI, an object-store URI, or a location already parsed.
        option: how the user gave it (``--features``), for errors.

    Example:
        >>> str(store_location("s3:/bucket/features", "--features"))
        's3://bucket/features'
    """
    if not isinstance(value, (str, os.PathLike)):
        return value  # an ObjectPath, parsed before
    text = os.fspath(value)
    match = _URI.match(text)
    if match is None or match["scheme"].lower() == "file":
        return local_folder(text, option)
    from difffeat_tune._store_fs import ObjectPath

    return ObjectPath.parse(re.sub(r"([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", text))
